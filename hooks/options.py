"""What makes a set of cookiecutter options valid.

One module for the pre-generation hook and for the template tests, so that the
generation matrix is built from the same rules that refuse bad input.
"""

import json
import re
from pathlib import Path

SLUG = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
# Kubernetes object names are at most 63 characters; the chart appends suffixes
# such as "-nginx-exporter" to the slug.
SLUG_MAX = 40
HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"^(?=.{{1,253}}$){HOST_LABEL}(?:\.{HOST_LABEL})+$")
# Where the alerts' dashboard links point: Grafana's root, without a query, a
# fragment or a final slash (the links add /d/<uid>?var-...).
GRAFANA_URL = re.compile(
    rf"^https?://(?=[^:/]{{1,253}}(?::|/|$)){HOST_LABEL}(?:\.{HOST_LABEL})*"
    r"(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~-]+)*$"
)
# Free text lands in TOML, Python and YAML strings: refuse what would need escaping.
UNSAFE_TEXT = re.compile(r'["\\\x00-\x1f\x7f`$]')
TEXT_MAX = {"project_name": 60, "description": 200, "author": 100}
# Where each task queue keeps its messages: the Redis of REDIS_URL or the database.
# Every component reads this one table, as cookiecutter.json's __task_broker (the
# FactsExtension gives it to Jinja) or by importing it.
TASK_BROKER = {
    "none": "none",
    "django": "database",
    "celery": "redis",
    "dramatiq": "redis",
    "arq": "redis",
    "django-q2": "database",
}


def load_choices(template_dir: Path) -> dict[str, list[str]]:
    """The choice options of cookiecutter.json, first choice first."""
    options = json.loads((template_dir / "cookiecutter.json").read_text())
    return {
        key: value
        for key, value in options.items()
        if isinstance(value, list) and not key.startswith("_")
    }


def refusals(context: dict, choices: dict[str, list[str]]) -> list[str]:
    """Every reason this context cannot be generated; empty when it can."""
    problems = []
    for key, allowed in choices.items():
        if context.get(key) not in allowed:
            problems.append(
                f"{key}={context.get(key)!r} is not one of: {', '.join(allowed)}"
            )
    for key, limit in TEXT_MAX.items():
        value = str(context.get(key, ""))
        if not value.strip():
            problems.append(f"{key} must not be empty")
        elif len(value) > limit:
            problems.append(f"{key} is longer than {limit} characters")
        elif UNSAFE_TEXT.search(value):
            problems.append(
                f"{key}={value!r} contains a quote, backslash, backtick, "
                "dollar sign or control character"
            )
    slug = str(context.get("project", ""))
    if not SLUG.match(slug) or len(slug) > SLUG_MAX:
        problems.append(
            f"project={slug!r} must be at most {SLUG_MAX} lowercase letters, "
            "digits and single hyphens, starting with a letter "
            "(it names the directory, the distribution, the chart and the units)"
        )
    tasks = context.get("tasks")
    if TASK_BROKER.get(tasks, "none") != "none" and context.get("database") == "sqlite":
        problems.append(
            f"tasks={tasks!r} needs a database server (database='postgresql' or "
            "'mysql'): the task worker runs in "
            "processes, pods and hosts of its own, and a SQLite database is a file "
            "that only the web process's host can open"
        )
    # django-tasks-db keeps the queue's name, the slug by default, in 32 characters.
    if tasks == "django" and len(str(context.get("project", ""))) > 32:
        problems.append(
            "tasks='django' needs a project slug of at most 32 characters: "
            "django-tasks-db's queue name column holds no more"
        )
    domain = str(context.get("domain", ""))
    if not DOMAIN.match(domain):
        problems.append(
            f"domain={domain!r} is not a lowercase host name with at least one dot"
        )
    grafana_url = str(context.get("grafana_url", ""))
    if not GRAFANA_URL.match(grafana_url):
        problems.append(
            f"grafana_url={grafana_url!r} is not an http(s) URL of a lowercase host, "
            "with an optional port and path, and no query or final slash"
        )
    return problems
