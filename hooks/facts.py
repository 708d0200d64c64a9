"""A Jinja extension: cookiecutter.json's facts, those computed rather than asked.

Two kinds: facts derived from the options (the rules live in hooks/options.py), and
the template's own version, read from its git checkout. cookiecutter.json renders each
fact once into a private variable (`__task_broker`, `__template_version`,
`__template_date`), which every template and component reads.

`cruft update` renders the old and the new template in one Python process, from one
clone checked out at each commit in turn, and Python keeps a module's first import
(cruft/cruft#253). So the extension holds no facts of its own: each Jinja environment
loads this file and hooks/options.py afresh from the checkout on disk, and asks git
afresh, so that the new commit's rules and version are the ones rendered.
"""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from jinja2.ext import Extension

HOOKS_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = HOOKS_DIR.parent
UNKNOWN = "unknown"


def load_afresh(name: str):
    """The module hooks/<name>.py as it is on disk now, never sys.modules' copy."""
    spec = importlib.util.spec_from_file_location(
        f"template_hooks_{name}", HOOKS_DIR / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_broker(tasks: str) -> str:
    """redis, database or none; an unknown queue is left to the pre-generation hook."""
    return load_afresh("options").TASK_BROKER.get(tasks, UNKNOWN)


def _git(*args: str) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    result = subprocess.run(  # noqa: S603  (git, with arguments of this module)
        [git, "-C", str(TEMPLATE_DIR), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def template_version() -> str:
    """`git describe` of the template's checkout: the latest tag, the commits since and
    the commit (or the commit alone), `-dirty` for uncommitted changes; `unknown`
    outside git (an unpacked archive)."""
    return _git("describe", "--tags", "--always", "--dirty", "--abbrev=12") or UNKNOWN


def template_date() -> str:
    """The commit's time in UTC, ISO 8601: it sorts services by how current their
    template is, which a version string cannot; `unknown` outside git."""
    return (
        _git("log", "-1", "--format=%cd", "--date=format-local:%Y-%m-%dT%H:%M:%SZ")
        or UNKNOWN
    )


# Every fact cookiecutter.json may call, by the name it calls it.
FACTS = {
    "task_broker": task_broker,
    "template_version": template_version,
    "template_date": template_date,
}


class FactsExtension(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        environment.globals.update(load_afresh("facts").FACTS)
