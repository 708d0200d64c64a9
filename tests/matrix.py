"""The option combinations the template supports, read from cookiecutter.json.

A new option or choice there grows every list here: nothing is listed by hand.
"""

import itertools
import sys
from pathlib import Path

import pytest
from allpairspy import AllPairs

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TEMPLATE_DIR / "hooks"))
from options import TASK_BROKER, load_choices, refusals  # noqa: E402

CHOICES = load_choices(TEMPLATE_DIR)
# Free-text options keep their defaults in every combination.
DEFAULT_TEXT = {
    "project_name": "My Service",
    "project": "my-service",
    "description": "An async Django service.",
    "author": "Platform Team",
    "domain": "my-service.example.com",
    "grafana_url": "https://grafana.example.com",
}


def context(combination: dict) -> dict:
    return {**DEFAULT_TEXT, **combination}


def supported(combination: dict) -> bool:
    return not refusals(context(combination), CHOICES)


def every_combination() -> list[dict]:
    """Every supported combination of choices: the generation matrix."""
    keys = list(CHOICES)
    return [
        combination
        for values in itertools.product(*CHOICES.values())
        if supported(combination := dict(zip(keys, values, strict=True)))
    ]


def _pairs(combination: dict) -> set[frozenset]:
    return {
        frozenset([(a, combination[a]), (b, combination[b])])
        for a, b in itertools.combinations(combination, 2)
    }


def covering_combinations() -> list[dict]:
    """Supported combinations in which every supported pair of choices appears."""
    # AllPairs does best with the options of most choices first.
    keys = sorted(CHOICES, key=lambda key: -len(CHOICES[key]))

    def partial_row_is_supported(row: list) -> bool:
        # Refusals judge complete rows: a partial one is fine if some completion is.
        rest = [CHOICES[key] for key in keys[len(row) :]]
        return any(
            supported(dict(zip(keys, [*row, *tail], strict=True)))
            for tail in itertools.product(*rest)
        )

    rows = [
        {key: row[keys.index(key)] for key in CHOICES}
        for row in AllPairs(
            [CHOICES[key] for key in keys], filter_func=partial_row_is_supported
        )
    ]
    # The filter can leave a pair stranded: each gets the first row that has it.
    every = every_combination()
    covered = set().union(*map(_pairs, rows))
    for pair in sorted(set().union(*map(_pairs, every)) - covered, key=sorted):
        if pair not in covered:
            row = next(c for c in every if pair in _pairs(c))
            rows.append(row)
            covered |= _pairs(row)
    return rows


# The one option a service's own test suite does not depend on: the suite meets the
# server only in the tests that start bin/serve, which run with whichever it has.
# The edge, image and deploy tests run each server behind Nginx.
SUITE_IGNORES = "server"


def suite_combinations() -> list[dict]:
    """The rows of the covering set whose own suites run: every supported pair of
    the options the suite depends on, and each server at least once. Greedy: the
    row that covers most of what is left, until nothing is."""
    keys = [key for key in CHOICES if key != SUITE_IGNORES]

    def wanted(combination: dict) -> set:
        return _pairs({key: combination[key] for key in keys}) | {
            (SUITE_IGNORES, combination[SUITE_IGNORES])
        }

    rows = covering_combinations()
    left = set().union(*map(wanted, every_combination()))
    chosen = []
    while left:
        row = max(rows, key=lambda row: len(wanted(row) & left))
        chosen.append(row)
        left -= wanted(row)
    return chosen


def default_combination() -> dict:
    """Every option at its first choice: what `cookiecutter --no-input` makes."""
    return {option: choices[0] for option, choices in CHOICES.items()}


def each_server() -> list[dict]:
    """The default combination, once with each server choice."""
    return [{**default_combination(), "server": s} for s in CHOICES["server"]]


def production(server: str) -> dict:
    """The default combination on `server`, with PostgreSQL: what the fault and
    release tests run, with Redis and two workers or instances."""
    return {**default_combination(), "server": server, "database": "postgresql"}


def each_queue(broker: str | None = None) -> list[dict]:
    """The default combination once with each task queue (of `broker`, if given),
    on PostgreSQL (tasks refuse SQLite), each on another server."""
    queues = [choice for choice in CHOICES["tasks"] if choice != "none"]
    servers = CHOICES["server"]
    return [
        {
            **default_combination(),
            "database": "postgresql",
            "tasks": queue,
            "server": servers[index % len(servers)],
        }
        for index, queue in enumerate(queues)
        if broker in (None, TASK_BROKER[queue])
    ]


def name(combination: dict) -> str:
    return "-".join(str(value) for value in combination.values())


def params(combinations: list[dict]) -> list:
    """Test parameters, one xdist group per combination: the worker that generated
    a service also runs its suite, reusing the service and its virtualenv."""
    return [
        pytest.param(c, id=name(c), marks=pytest.mark.xdist_group(name(c)))
        for c in combinations
    ]
