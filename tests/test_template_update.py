"""Every service can follow its template: `cruft create`, `cruft update`, `cruft link`.

A real template repository (tests/template_repo.py) holds commit A, the template as
checked out, and commit B, which changes one thing in each kind of file a service
gets: an Nginx setting, an alert rule, a dashboard panel, a core module, a dependency
pin and the chart. Services generated at A, customised the way teams do and
committed, are updated to B: the team's changes stay, every other file becomes what
a fresh generation at B gives, `.env` is never touched, and what the service's
README says a team runs after an update (`uv lock`, `uv sync --locked`, the checks)
passes. cruft runs as a process of its own (template_repo.py says why).
"""

import json
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from template_repo import TemplateRepo, git

from harness import check_steps, run, service_env
from matrix import (
    TEMPLATE_DIR,
    context,
    covering_combinations,
    default_combination,
    name,
)

TOOLS = TEMPLATE_DIR / ".venv" / "bin"

# Commit B: (template file, old text, new text), and the service files they land in.
TEMPLATE_CHANGES = [
    ("nginx/nginx.conf", "    keepalive_timeout 65s;", "    keepalive_timeout 75s;"),
    (
        "prometheus/rules/alerts.yml",
        'up{service="{{ cookiecutter.project }}"} == 0\n        for: 5m',
        'up{service="{{ cookiecutter.project }}"} == 0\n        for: 10m',
    ),
    (
        "grafana/dashboards/service.json",
        '"title": "Requests",',
        '"title": "Requests per second",',
    ),
    (
        "{{cookiecutter.project}}/core/health.py",
        '"""Liveness and readiness endpoints for probes and load balancers."""',
        '"""Liveness and readiness endpoints, for probes and load balancers."""',
    ),
    (
        "{{cookiecutter.project}}/pyproject.toml",
        '"django-environ==0.14.0",',
        '"django-environ==0.13.0",',
    ),
    ("helm/Chart.yaml", "\nversion: 1.0.0\n", "\nversion: 1.1.0\n"),
]
CHANGED_BY_B = {
    ".cruft.json",
    # Any new commit: the template version the service records (hooks/facts.py).
    "config/template.py",
    "Dockerfile",
    "core/health.py",
    "deploy/grafana/dashboards/service.json",
    "deploy/helm/Chart.yaml",
    "deploy/nginx/nginx.conf",
    "deploy/prometheus/rules/alerts.yml",
    "pyproject.toml",
}

# What a team does to its service: (file, old text, new text), and new files.
TEAM_EDITS = [
    (
        "items/urls.py",
        "from items import views\n",
        "from items import version, views\n",
    ),
    (
        "items/urls.py",
        'name="categories"),\n]',
        'name="categories"),\n    path("version", version.version, name="version"),\n]',
    ),
    (
        "pyproject.toml",
        '    "python-json-logger==4.2.0",\n',
        '    "python-json-logger==4.2.0",\n    "humanize==4.17.0",\n',
    ),
    (
        "config/settings.py",
        'env.int("ITEM_CACHE_SECONDS", default=30)',
        'env.int("ITEM_CACHE_SECONDS", default=60)',
    ),
    (
        "deploy/prometheus/rules/alerts.yml",
        "> 0.8 * 4096",
        "> 0.9 * 4096",
    ),
]
TEAM_FILES = {
    "items/version.py": '''"""The running version, for the team's release checks."""

from django.conf import settings
from django.http import JsonResponse


async def version(request):
    return JsonResponse({"version": settings.SERVICE_VERSION})
''',
    "tests/test_version.py": '''"""The team's version endpoint."""


async def test_version_answers_the_service_version(async_client, settings):
    response = await async_client.get("/api/version")
    assert response.status_code == 200
    assert response.json() == {"version": settings.SERVICE_VERSION}
''',
}

# The chart's links to its sibling components (deploy/helm/files/). `cruft diff`
# shows each as a new link even when nothing changed: it copies only the service's
# regular files to compare them (cruft 2.16, cruft/_commands/diff.py).
CHART_LINKS = sorted(
    f"deploy/{path.relative_to(TEMPLATE_DIR)}"
    for path in (TEMPLATE_DIR / "helm").rglob("*")
    if path.is_symlink()
)

# Never compared: the local secret and the lock (cruft skips both), the virtualenv
# and what tools leave behind. .cruft.json is compared on its own.
NOT_COMPARED = {".git", ".venv", ".env", "uv.lock", "__pycache__", ".ruff_cache"}


@dataclass
class Template:
    repo: TemplateRepo
    a: str
    b: str


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Template:
    """The template repository, at A and then at B; services pick their commit."""
    repo = TemplateRepo.of_working_tree(tmp_path_factory.mktemp("template"))
    a = repo.head()
    for relative, old, new in TEMPLATE_CHANGES:
        repo.edit(relative, old, new)
    b = repo.commit("A component of each kind changes")
    return Template(repo, a, b)


def cruft(*args, cwd: Path):
    return run([TOOLS / "cruft", *args], cwd)


def cruft_may_fail(*args, cwd: Path) -> subprocess.CompletedProcess:
    """cruft, for the commands whose failure the test expects and reads."""
    return subprocess.run(
        [TOOLS / "cruft", *args],
        cwd=cwd,
        env=service_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def create(template: Template, output_dir: Path, answers: dict, checkout=None) -> Path:
    """`cruft create` of the answers, at `checkout` (the newest commit without)."""
    output_dir.mkdir(parents=True)
    at = ["--checkout", checkout] if checkout else []
    extra = ["--extra-context", json.dumps(answers)]
    cruft("create", "--no-input", *at, *extra, template.repo.path, cwd=output_dir)
    return output_dir / answers.get("project", "my-service")


def commit_all(service: Path, message: str) -> None:
    if not (service / ".git").exists():
        git("init", "--quiet", "--initial-branch=main", cwd=service)
    git("add", "--all", cwd=service)
    git("commit", "--quiet", "-m", message, cwd=service)


def changed_files(service: Path) -> set[str]:
    """Files changed since the last commit, staged or not, and new ones."""
    changed = git("diff", "--name-only", "HEAD", cwd=service)
    new = git("ls-files", "--others", "--exclude-standard", cwd=service)
    return set(changed.splitlines() + new.splitlines())


def tree(root: Path) -> dict[str, tuple]:
    """Every directory, file and link under root: mode and bytes, or link target."""
    entries = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in NOT_COMPARED]
        for entry in dirnames + filenames:
            path = Path(directory) / entry
            relative = str(path.relative_to(root))
            if entry in NOT_COMPARED:
                continue
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.is_symlink():
                entries[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[relative] = ("directory", mode)
            else:
                entries[relative] = ("file", mode, path.read_bytes())
    return entries


def replace_once(text: str, old: str, new: str, relative: str) -> str:
    assert text.count(old) == 1, f"{relative} holds {old!r} {text.count(old)} times"
    return text.replace(old, new)


def edit(service: Path, relative: str, old: str, new: str) -> None:
    file = service / relative
    file.write_text(replace_once(file.read_text(), old, new, relative))


def customise(service: Path) -> None:
    """The team's changes, as TEAM_EDITS and TEAM_FILES say, then its new lock."""
    for relative, old, new in TEAM_EDITS:
        edit(service, relative, old, new)
    for relative, text in TEAM_FILES.items():
        (service / relative).write_text(text)
    run(["uv", "lock", "--quiet"], service)


def with_team_changes(fresh: dict) -> dict:
    """A fresh service's tree as it would be with the team's changes made to it."""
    expected = dict(fresh)
    for relative, old, new in TEAM_EDITS:
        kind, mode, content = expected[relative]
        text = replace_once(content.decode(), old, new, relative)
        expected[relative] = (kind, mode, text.encode())
    for relative, text in TEAM_FILES.items():
        expected[relative] = ("file", 0o644, text.encode())
    return expected


def diff_entries(diff: str) -> dict[str, str]:
    """Each file of `cruft diff`'s output, with the line after its header ("new file
    mode 120000" for a new link, "index <old>..<new> <mode>" for a changed file)."""
    blocks = diff.split("diff --git upstream-template-old/")[1:]
    return {block.split(" ", 1)[0]: block.splitlines()[1] for block in blocks}


def after_update_steps(service: Path, suite: bool) -> None:
    """What the service's README says a team runs after `cruft update`."""
    run(["uv", "lock", "--quiet"], service)
    run(["uv", "sync", "--locked", "--quiet"], service)
    check_steps(service, "lint", "django", *(["test"] if suite else []))


def test_the_same_answers_render_the_same_service(template, tmp_path):
    """Two renders differ only in .env and uv.lock, which cruft skips: otherwise
    `cruft update` would bring differences no template change made, and `git apply
    -3` would not find the service's own copy of a file to merge with."""
    answers = context(default_combination())
    first = create(template, tmp_path / "first", answers, checkout=template.a)
    second = create(template, tmp_path / "second", answers, checkout=template.a)
    assert tree(first) == tree(second)


def test_a_customised_service_takes_the_new_template(template, tmp_path):
    """Generated at A, customised, updated to B: the team's changes stay, every other
    file is what a fresh generation at B gives, .env is the one it had."""
    answers = context(default_combination())
    service = create(template, tmp_path / "service", answers, checkout=template.a)
    state = json.loads((service / ".cruft.json").read_text())
    assert state["template"] == str(template.repo.path)
    assert state["commit"] == template.a
    recorded = state["context"]["cookiecutter"]
    assert {key: recorded[key] for key in answers} == answers
    assert recorded["__task_broker"] == "none"
    commit_all(service, "Generated at A")
    customise(service)
    commit_all(service, "The team's changes")
    env_file = (service / ".env").read_bytes()

    outdated = cruft_may_fail("check", cwd=service)
    assert outdated.returncode == 1, outdated.stdout + outdated.stderr
    assert "out of date" in outdated.stdout
    cruft("update", "--skip-apply-ask", cwd=service)

    fresh = create(template, tmp_path / "fresh", answers)
    assert tree(service) == with_team_changes(tree(fresh))
    assert (service / ".cruft.json").read_text() == (fresh / ".cruft.json").read_text()
    assert json.loads((service / ".cruft.json").read_text())["commit"] == template.b
    assert (service / ".env").read_bytes() == env_file
    assert changed_files(service) == CHANGED_BY_B
    cruft("check", cwd=service)

    after_update_steps(service, suite=True)
    assert (
        'name = "django-environ"\nversion = "0.13.0"'
        in (service / "uv.lock").read_text()
    )


def test_a_change_both_sides_made_is_shown_not_dropped(template, tmp_path):
    """The team and B both change Nginx's keep-alive: the update leaves a conflict
    that git and cruft's output name, with both lines in it."""
    answers = context(default_combination())
    service = create(template, tmp_path / "service", answers, checkout=template.a)
    commit_all(service, "Generated at A")
    nginx = "deploy/nginx/nginx.conf"
    edit(service, nginx, "keepalive_timeout 65s;", "keepalive_timeout 90s;")
    commit_all(service, "A longer keep-alive")

    update = cruft("update", "--skip-apply-ask", cwd=service)
    assert nginx in update.stdout + update.stderr
    conf = (service / nginx).read_text()
    assert "keepalive_timeout 90s;" in conf, "the team's line was dropped"
    assert "keepalive_timeout 75s;" in conf
    assert "<<<<<<<" in conf
    assert f"UU {nginx}" in git("status", "--porcelain", cwd=service).splitlines()


def test_a_service_generated_before_cruft_is_linked_then_updated(template, tmp_path):
    """Plain cookiecutter at A with other answers than the defaults, then `cruft
    link` to A: `cruft diff` finds nothing but the chart's links, and the update to
    B gives what a fresh generation at B gives."""
    answers = {"server": "granian", "database": "postgresql", "tasks": "celery"}
    template_at_a = tmp_path / "template-at-a"
    git("clone", "--quiet", str(template.repo.path), str(template_at_a), cwd=tmp_path)
    git("checkout", "--quiet", template.a, cwd=template_at_a)
    services = tmp_path / "services"
    services.mkdir()
    settings = [f"{key}={value}" for key, value in answers.items()]
    cookiecutter = [TOOLS / "cookiecutter", "--no-input", template_at_a, *settings]
    run([*cookiecutter, "--output-dir", services], tmp_path)
    service = services / "my-service"
    commit_all(service, "Generated at A, before cruft")

    link = ["--no-input", "--checkout", template.a, template.repo.path]
    cruft("link", "--extra-context", json.dumps(answers), *link, cwd=service)
    diff = cruft_may_fail("diff", "--exit-code", cwd=service)
    assert diff_entries(diff.stdout) == dict.fromkeys(
        CHART_LINKS, "new file mode 120000"
    )
    commit_all(service, "Linked to the template")

    cruft("update", "--skip-apply-ask", cwd=service)
    fresh = create(template, tmp_path / "fresh", answers)
    assert tree(service) == tree(fresh)
    assert changed_files(service) == CHANGED_BY_B
    after_update_steps(service, suite=False)


@pytest.mark.parametrize("combination", covering_combinations(), ids=name)
def test_each_service_of_the_fleet_takes_the_new_template(
    template, tmp_path, combination
):
    """Each service of the pairwise covering set, updated from A to B, gets B's
    changes and nothing else: it is what a fresh render at B is. Its dependencies
    lock again with B's pins. The static checks of each render are
    test_generation's; B's few edits get them in the customised service above."""
    answers = context(combination)
    service = create(template, tmp_path / "services", answers, template.a)
    commit_all(service, "Generated at A")
    cruft("update", "--skip-apply-ask", cwd=service)
    assert changed_files(service) == CHANGED_BY_B
    assert json.loads((service / ".cruft.json").read_text())["commit"] == template.b
    assert tree(service) == tree(create(template, tmp_path / "fresh", answers))
    run(["uv", "lock", "--quiet"], service)
