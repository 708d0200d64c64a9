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
from options import load_choices, refusals  # noqa: E402

CHOICES = load_choices(TEMPLATE_DIR)
# Free-text options keep their defaults in every combination.
DEFAULT_TEXT = {
    "project_name": "My Service",
    "project": "my-service",
    "description": "An async Django service.",
    "author": "Platform Team",
    "domain": "my-service.example.com",
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


def covering_combinations() -> list[dict]:
    """Supported combinations in which every pair of choices appears at least once."""
    keys = list(CHOICES)

    def partial_row_is_supported(row: list) -> bool:
        # Only complete rows can be judged; refusals need every option.
        return len(row) < len(keys) or supported(dict(zip(keys, row, strict=True)))

    return [
        dict(zip(keys, row, strict=True))
        for row in AllPairs(
            list(CHOICES.values()), filter_func=partial_row_is_supported
        )
    ]


def default_combination() -> dict:
    """Every option at its first choice: what `cookiecutter --no-input` makes."""
    return {option: choices[0] for option, choices in CHOICES.items()}


def each_server() -> list[dict]:
    """The default combination, once with each server choice."""
    return [{**default_combination(), "server": s} for s in CHOICES["server"]]


def name(combination: dict) -> str:
    return "-".join(str(value) for value in combination.values())


def params(combinations: list[dict]) -> list:
    """Test parameters, one xdist group per combination: the worker that generated
    a service also runs its suite, reusing the service and its virtualenv."""
    return [
        pytest.param(c, id=name(c), marks=pytest.mark.xdist_group(name(c)))
        for c in combinations
    ]
