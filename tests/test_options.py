"""Bad options are refused before anything is written, with a message that says why."""

import subprocess
import sys

import pytest

from matrix import CHOICES, DEFAULT_TEXT, TEMPLATE_DIR, context, every_combination
from options import TASK_BROKER, refusals


def cookiecutter_cli(tmp_path, **options):
    output = tmp_path / "out"
    output.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "--default-config",
            str(TEMPLATE_DIR),
            "--output-dir",
            str(output),
            *(f"{key}={value}" for key, value in options.items()),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result, output


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"project": "My_Service"}, "project='My_Service' must be"),
        ({"project": "9lives"}, "project='9lives' must be"),
        ({"project": "double--hyphen"}, "project='double--hyphen' must be"),
        ({"project": "a" * 41}, "must be at most 40"),
        (
            {"project_name": 'Evil "Quote'},
            "project_name='Evil \"Quote' contains a quote",
        ),
        ({"description": "costs $HOME"}, "description='costs $HOME' contains"),
        ({"author": " "}, "author must not be empty"),
        ({"domain": "localhost"}, "domain='localhost' is not"),
        ({"domain": "Shop.Example.com"}, "domain='Shop.Example.com' is not"),
        ({"domain": "-bad.example.com"}, "domain='-bad.example.com' is not"),
        (
            {"grafana_url": "https://grafana.example.com/"},
            "grafana_url='https://grafana.example.com/' is not",
        ),
        ({"grafana_url": "grafana.example.com"}, "grafana_url='grafana.example.com'"),
        (
            {"grafana_url": "https://grafana.example.com/d?orgId=1"},
            "grafana_url='https://grafana.example.com/d?orgId=1' is not",
        ),
        (
            {"tasks": "celery", "database": "sqlite"},
            "tasks='celery' needs a database server",
        ),
        (
            {"tasks": "django", "database": "postgresql", "project": "a" * 33},
            "tasks='django' needs a project slug of at most 32 characters",
        ),
    ],
)
def test_bad_option_is_refused_and_nothing_is_written(tmp_path, options, reason):
    result, output = cookiecutter_cli(tmp_path, **options)
    assert result.returncode != 0
    assert "Cannot generate this service" in result.stderr
    assert reason in result.stderr
    assert list(output.iterdir()) == []


def test_every_problem_is_reported_at_once(tmp_path):
    result, output = cookiecutter_cli(tmp_path, project="Bad_Slug", domain="nodot")
    assert "project='Bad_Slug'" in result.stderr
    assert "domain='nodot'" in result.stderr
    assert list(output.iterdir()) == []


@pytest.mark.parametrize("option", list(CHOICES))
def test_unknown_choice_is_refused_and_nothing_is_written(tmp_path, option):
    result, output = cookiecutter_cli(tmp_path, **{option: "unknown"})
    assert result.returncode != 0
    assert f"unknown provided for choice variable {option}" in result.stderr
    assert list(output.iterdir()) == []


@pytest.mark.parametrize("option", list(CHOICES))
def test_hook_refuses_unknown_choices_cookiecutter_let_through(option):
    # E.g. a replayed context edited by hand skips cookiecutter's own validation.
    bad = {**context(every_combination()[0]), option: "unknown"}
    assert refusals(bad, CHOICES) == [
        f"{option}='unknown' is not one of: {', '.join(CHOICES[option])}"
    ]


def test_python_versions_offered_are_the_ones_django_6_supports():
    versions = [tuple(map(int, v.split("."))) for v in CHOICES["python_version"]]
    assert all(version >= (3, 12) for version in versions)


def test_defaults_are_accepted():
    defaults = {key: choices[0] for key, choices in CHOICES.items()}
    assert refusals({**DEFAULT_TEXT, **defaults}, CHOICES) == []


def test_every_task_queue_has_its_broker():
    """hooks/options.py's table is the one place each queue's broker is written."""
    assert set(TASK_BROKER) == set(CHOICES["tasks"])
    assert set(TASK_BROKER.values()) == {"none", "redis", "database"}
