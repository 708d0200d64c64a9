"""The generation matrix itself: complete, and the covering set covers every pair."""

import itertools

from matrix import CHOICES, covering_combinations, every_combination


def test_every_choice_of_every_option_is_in_the_matrix():
    combinations = every_combination()
    for option, choices in CHOICES.items():
        assert {c[option] for c in combinations} == set(choices), option


def test_covering_set_contains_every_supported_pair():
    covered = {
        frozenset([(a, c[a]), (b, c[b])])
        for c in covering_combinations()
        for a, b in itertools.combinations(CHOICES, 2)
    }
    wanted = {
        frozenset([(a, c[a]), (b, c[b])])
        for c in every_combination()
        for a, b in itertools.combinations(CHOICES, 2)
    }
    assert covered == wanted


def test_covering_set_is_smaller_than_the_matrix():
    assert len(covering_combinations()) < len(every_combination())
