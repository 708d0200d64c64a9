"""The generation matrix itself: complete, and the covering set covers every pair."""

import itertools

from matrix import (
    CHOICES,
    SUITE_IGNORES,
    covering_combinations,
    every_combination,
    suite_combinations,
)


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


def test_suite_set_covers_every_pair_but_the_servers_and_each_server():
    def pairs(combinations: list[dict]) -> set:
        keys = [key for key in CHOICES if key != SUITE_IGNORES]
        return {
            frozenset([(a, c[a]), (b, c[b])])
            for c in combinations
            for a, b in itertools.combinations(keys, 2)
        }

    suites = suite_combinations()
    assert all(c in covering_combinations() for c in suites)
    assert pairs(suites) == pairs(every_combination())
    assert {c[SUITE_IGNORES] for c in suites} == set(CHOICES[SUITE_IGNORES])
    assert len(suites) < len(covering_combinations())
