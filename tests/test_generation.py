"""Every supported combination renders to a clean, consistent service."""

import ast
import fnmatch
import importlib.util
import json
import os
import re
import stat

import pytest
import yaml
from cookiecutter.environment import StrictEnvironment

from harness import check_steps, generate_service, run, service_env
from matrix import (
    CHOICES,
    DEFAULT_TEXT,
    TEMPLATE_DIR,
    covering_combinations,
    every_combination,
    params,
)

# Leftover template syntax: nothing in a generated service mentions cookiecutter,
# and its code and configuration have no Jinja blocks (Helm and Ansible templates,
# copied verbatim, use {{ }} of their own and are not scanned for it).
TEMPLATE_SYNTAX = re.compile(r"cookiecutter|\{%|\{\{")
SCANNED_FOR_JINJA = {".py", ".toml", ".cfg", ".txt", ".md", ".sh", ".json", ""}
# The steps of the service's bin/check (its CI jobs) cheap enough for every
# combination, whose input (the code, bin/) every option shapes: ruff and
# shellcheck, Django's checks and migrations.
EVERY_COMBINATION_STEPS = ("lint", "django")
# The cheap steps whose input only some options shape: the template files each step
# checks once rendered, and those options. They run on the pairwise covering set,
# which holds every supported pair of choices, so each rendering of these files
# (every value of one option, every pair of values of two) is checked at least once.
COVERED_STEPS = {
    # hadolint
    "dockerfile": (
        ("{{cookiecutter.project}}/Dockerfile",),
        ("python_version", "database"),
    ),
    # nginx -t and gixy
    "nginx": (("nginx/*",), ()),
    # actionlint
    "workflows": (
        ("{{cookiecutter.project}}/.github/workflows/*",),
        ("database", "tasks"),
    ),
}
COVERING = covering_combinations()
# The facts of cookiecutter.json that the template renders, and the options each
# follows from (the template's version and date are the same for every combination).
FACTS = {"__task_broker": ("tasks",), "__template_version": (), "__template_date": ()}
# Components land in deploy/; these of their files are copied without rendering.
VERBATIM = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())[
    "_copy_without_render"
]


def is_verbatim(relative) -> bool:
    return relative.parts[0] == "deploy" and any(
        fnmatch.fnmatch(str(relative.relative_to("deploy")), glob) for glob in VERBATIM
    )


def leftover_template_syntax(project):
    found = []
    for path in project.rglob("*"):
        relative = path.relative_to(project)
        if relative.parts[0] in {".venv", ".ruff_cache"} or not path.is_file():
            continue
        # The lock file names packages: cookiecutter among them, which cruft (the
        # template-update tool of the `checks` group) depends on.
        if str(relative) == "uv.lock":
            continue
        if "cookiecutter" in str(relative):
            found.append(f"{relative}: in the path")
            continue
        text = path.read_text(errors="replace")
        pattern = (
            TEMPLATE_SYNTAX
            if path.suffix in SCANNED_FOR_JINJA and not is_verbatim(relative)
            else re.compile("cookiecutter")
        )
        found += [f"{relative}: {m.group()}" for m in pattern.finditer(text)]
    return found


@pytest.mark.parametrize("combination", params(every_combination()))
def test_generated_service_passes_static_checks(combination, generated, request):
    """The service's own CI steps (bin/check), run for real: those that take seconds
    here. `lint` and `django` on every combination; `dockerfile`, `nginx` and
    `workflows` on the pairwise covering set's combinations, which give each of them
    every rendering of its input (COVERED_STEPS; test_covered_steps_get_every_input
    holds them to it). The others run where the template tests already test, render
    or build: `test` in test_suites, `helm` in test_helm, `ansible` in test_ansible,
    `prometheus` in test_prometheus, `image` and `cruft` in test_service_ci."""
    project = generated(combination)
    assert leftover_template_syntax(project) == []
    covered = tuple(COVERED_STEPS) if combination in COVERING else ()
    env = service_env()
    if combination["database"] == "mysql":
        # Django's checks of a MySQL service ask the server its version.
        env["DATABASE_URL"] = request.getfixturevalue("mysql_checks_url")
    check_steps(project, *EVERY_COMBINATION_STEPS, *covered, env=env)
    assert (project / "uv.lock").is_file()
    assert (project / ".python-version").read_text().strip() == combination[
        "python_version"
    ]
    python = project / ".venv" / "bin" / "python"
    version = run([python, "--version"], project).stdout
    assert version.startswith(f"Python {combination['python_version']}.")


def options_read(template_file) -> set[str]:
    """The choice options whose values the rendering of a template file depends on."""
    read = set()
    for variable in re.findall(r"cookiecutter\.(\w+)", template_file.read_text()):
        if variable in FACTS:
            read.update(FACTS[variable])
        else:
            assert variable in CHOICES or variable in DEFAULT_TEXT, (
                f"{template_file} renders {variable}: add it to FACTS"
            )
            read.add(variable)
    return read & set(CHOICES)


def values(combinations: list[dict], options: tuple) -> set[tuple]:
    return {tuple(c[option] for option in options) for c in combinations}


@pytest.mark.parametrize("step", COVERED_STEPS)
def test_covered_steps_get_every_input(step):
    """A step that runs on the covering set only checks files that no other option
    than its own shapes, and the covering set has every supported value of its
    options together: it sees every rendering of its input that the matrix makes."""
    sources, options = COVERED_STEPS[step]
    files = [path for glob in sources for path in TEMPLATE_DIR.glob(glob)]
    assert files, f"{step}: no template file matches {sources}"
    for template_file in files:
        assert options_read(template_file) <= set(options), template_file
    assert values(COVERING, options) == values(every_combination(), options)


def test_each_service_gets_its_own_secret_key(tmp_path):
    first = generate_service({}, tmp_path / "a") / ".env"
    second = generate_service({}, tmp_path / "b") / ".env"
    keys = [
        line
        for f in (first, second)
        for line in f.read_text().splitlines()
        if line.startswith("DJANGO_SECRET_KEY=")
    ]
    assert len(keys) == 2
    assert keys[0] != keys[1]
    assert len(keys[0].split("=", 1)[1]) >= 50
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600


def test_the_local_env_file_is_private_from_its_creation(tmp_path, monkeypatch):
    """The hook creates .env 0600 rather than chmod'ing it once written: in
    between, its secret key would be readable by every local user (umask 022)."""
    source = (TEMPLATE_DIR / "hooks" / "post_gen_project.py").read_text()
    script = tmp_path / "post_gen_project.py"
    script.write_text(
        StrictEnvironment(context={"cookiecutter": {}})
        .from_string(source)
        .render(cookiecutter=DEFAULT_TEXT, template_dir=str(TEMPLATE_DIR))
    )
    spec = importlib.util.spec_from_file_location("post_gen_project", script)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    hook.SERVICE_DIR = tmp_path

    def chmod(*args, **kwargs):
        raise AssertionError(".env was chmod'ed after its creation")

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "fchmod", chmod)
    previous_umask = os.umask(0o022)
    try:
        hook.write_local_env_file()
    finally:
        os.umask(previous_umask)
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_the_chart_and_the_role_allow_the_algorithms_the_service_allows(tmp_path):
    """OIDC_ALGORITHMS may name only core.auth's asymmetric algorithms, and the
    chart's schema and the Ansible role refuse any other before a deploy: by the
    same list, each in its own component."""
    project = generate_service({}, tmp_path)
    [service] = [
        set(ast.literal_eval(node.value.args[0]))
        for node in ast.parse((project / "core" / "auth.py").read_text()).body
        if isinstance(node, ast.Assign)
        and node.targets[0].id == "ASYMMETRIC_ALGORITHMS"
    ]
    deploy = project / "deploy"
    schema = json.loads((deploy / "helm" / "values.schema.json").read_text())
    oidc = schema["properties"]["config"]["properties"]["oidc"]["properties"]
    role = yaml.safe_load(
        (deploy / "ansible" / "roles" / "service" / "vars" / "main.yml").read_text()
    )
    assert "RS256" in service
    assert "HS256" not in service
    assert set(oidc["algorithms"]["items"]["enum"]) == service
    assert set(role["service_oidc_asymmetric_algorithms"]) == service


def test_disabled_websockets_leave_no_websocket_code(tmp_path):
    project = generate_service({"websockets": "no"}, tmp_path)
    assert not (project / "items" / "consumers.py").exists()
    assert not (project / "tests" / "test_websocket.py").exists()
    assert not (project / "config" / "uvicorn_ws.py").exists()
    assert '"websocket"' not in (project / "config" / "asgi.py").read_text()
    settings = (project / "config" / "settings.py").read_text()
    assert "WEBSOCKET_MAX_MESSAGE_BYTES" not in settings
    assert "django.contrib.sessions" not in settings
    pyproject = (project / "pyproject.toml").read_text()
    assert "websockets==" not in pyproject
    assert "daphne" not in pyproject


def test_a_service_without_tasks_has_no_task_code(tmp_path):
    project = generate_service({}, tmp_path)
    for path in (
        "bin/worker",
        "config/task_queue.py",
        "config/task_queues",
        "core/queue.py",
        "core/queues",
        "core/queueing.py",
        "core/tasks.py",
        "core/task_worker.py",
        "items/reports.py",
        "items/tasks.py",
        "items/signals.py",
        "tests/test_tasks.py",
    ):
        assert not (project / path).exists(), path
    assert not list((project / "items" / "migrations").glob("0002_*"))
    assert "TASK_QUEUE" not in (project / "config" / "settings.py").read_text()
    assert "items.reports" not in (project / "config" / "urls.py").read_text()
    for module in ("changes.py", "store.py", "views.py"):
        assert "outbox" not in (project / "items" / module).read_text(), module
    assert "django_tasks" not in (project / "core" / "metrics.py").read_text()


@pytest.mark.parametrize("database", CHOICES["database"])
def test_each_database_server_has_its_own_driver_module_and_no_other(
    database, tmp_path
):
    """core/database_server.py is the chosen server's (core/database_servers/),
    named after the choice; SQLite, Django's alone, has none."""
    project = generate_service({"database": database}, tmp_path)
    assert not (project / "core" / "database_servers").exists()
    module = project / "core" / "database_server.py"
    source = TEMPLATE_DIR / "{{cookiecutter.project}}" / "core" / "database_servers"
    if database == "sqlite":
        assert not module.exists()
    else:
        assert module.read_text() == (source / f"{database}.py").read_text()
