"""Finish a generated service: local secrets, unused files, stack components, lock file.

Runs inside the new service's directory. Each step is one function.
"""

import fnmatch
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from cookiecutter.environment import StrictEnvironment

CONTEXT = json.loads({{cookiecutter | jsonify | tojson}})
TEMPLATE_DIR = Path({{template_dir | tojson}})
SERVICE_DIR = Path.cwd()
# The template's own Jinja extensions (cookiecutter.json "_extensions") load from it.
sys.path.insert(0, str(TEMPLATE_DIR))

# The template's stack components, rendered into deploy/<name>/ of every service.
COMPONENTS = ("nginx", "helm", "ansible", "prometheus", "grafana")

# Files that exist only for some values of an option, or of a fact derived from
# the options (cookiecutter.json's __ variables). A file under several keys is
# kept only where each of them holds.
FILES_OF_CHOICE = {
    ("websockets", ("yes",)): [
        "items/consumers.py",
        "items/routing.py",
        "tests/test_websocket.py",
        "config/uvicorn_ws.py",
        "core/dispatch.py",
        "core/websocket_sessions.py",
    ],
    ("server", ("gunicorn-uvicorn",)): [
        "config/gunicorn_worker_class.py",
        "tests/test_gunicorn_worker.py",
    ],
    ("server", ("uvicorn", "gunicorn-uvicorn")): [
        "config/uvicorn_http.py",
        "config/uvicorn_ws.py",
    ],
    ("server", ("granian",)): ["deploy/grafana/dashboards/granian.json"],
    # A worker killed mid-task, for the libraries whose redelivery needs a worker
    # of the test's own (Celery's is immediate: its tests are in test_tasks.py).
    ("tasks", ("django", "dramatiq", "arq", "django-q2")): [
        "tests/test_tasks_killed.py"
    ],
    # arq's worker losing Redis mid-task, through a relay the test cuts.
    ("tasks", ("arq",)): ["tests/test_tasks_redis_lost.py"],
    # SQLite is one pod's file: no autoscaling example.
    ("database", ("postgresql", "mysql")): [
        "deploy/grafana/dashboards/database.json",
        "deploy/helm/ci/autoscaling-values.yaml",
        "tests/database_server.py",
        "tests/test_migrations.py",
    ],
    ("database", ("postgresql",)): [
        "tests/test_migrate_locked_postgresql.py",
        "tests/test_postgresql.py",
    ],
    ("database", ("mysql",)): [
        "tests/test_migrate_locked_mysql.py",
        "tests/test_mysql.py",
    ],
    # SQLite is a file of the service's own: it backs it up (PostgreSQL: pg_dump).
    ("database", ("sqlite",)): [
        "core/backups.py",
        "core/management/commands/backup_database.py",
        "core/management/commands/restore_database.py",
        "tests/test_backups.py",
    ],
    # Any task queue: every one of them has a broker.
    ("__task_broker", ("redis", "database")): [
        "bin/worker",
        "core/migrations/0002_pendingtask.py",
        "core/migrations/0003_taskdelivery.py",
        "core/migrations/0004_pendingtask_trace.py",
        "core/management/commands/dead_letters.py",
        "core/outbox.py",
        "core/queueing.py",
        "core/tasks.py",
        "core/task_worker.py",
        "deploy/grafana/dashboards/tasks.json",
        "items/migrations/0002_report_itemchange.py",
        "items/migrations/0003_itemchange_change_id.py",
        "items/reports.py",
        "items/signals.py",
        "items/tasks.py",
        "tests/test_tasks.py",
        "tests/test_tasks_tracing.py",
    ],
}


def write_local_env_file() -> None:
    """A per-service secret key for local runs; production sets its own.

    Created readable by its owner only: a chmod after writing would leave the
    key readable by others in between."""
    descriptor = os.open(
        SERVICE_DIR / ".env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
    )
    with os.fdopen(descriptor, "w") as env_file:
        env_file.write(
            "# Local development only: never deployed, never committed (.gitignore).\n"
            "# Read unless DJANGO_READ_DOT_ENV=false, which bin/serve sets by default\n"
            "# (config/settings.py): `DJANGO_READ_DOT_ENV=true bin/serve` uses it.\n"
            f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"
            "DJANGO_DEBUG=true\n"
        )


def remove_files_of_other_choices() -> None:
    for (option, choices), paths in FILES_OF_CHOICE.items():
        if CONTEXT[option] not in choices:
            for path in paths:
                (SERVICE_DIR / path).unlink(missing_ok=True)


# Modules chosen by an option: (package, module) is the chosen one of
# package/<module>s/, named after the choice.
CHOSEN_MODULES = {
    # The task queue library's adapter and its settings.
    ("core", "queue"): "tasks",
    ("config", "task_queue"): "tasks",
    # The database server's asyncio driver and errors (SQLite has neither).
    ("core", "database_server"): "database",
}
# The choices that need no such module: no task queue; SQLite, Django's alone.
WITHOUT_MODULE = {"none", "sqlite"}


def install_chosen_modules() -> None:
    for (package, chosen_module), option in CHOSEN_MODULES.items():
        modules = SERVICE_DIR / package / f"{chosen_module}s"
        if CONTEXT[option] not in WITHOUT_MODULE:
            chosen = modules / f"{CONTEXT[option].replace('-', '_')}.py"
            chosen.rename(SERVICE_DIR / package / f"{chosen_module}.py")
        shutil.rmtree(modules)


def component_files(root: Path):
    """Every file and symbolic link under root; links are not followed."""
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(directory) / name
            if path.is_symlink() or path.is_file():
                yield path


def render_components() -> None:
    """Copy each stack component into deploy/, rendered with this service's values.

    Paths matching _copy_without_render (relative to the template root, as in
    cookiecutter itself) are copied as they are: they hold Helm or Ansible templates.
    Symbolic links stay links: the chart reaches the Nginx, Prometheus and Grafana
    components through them, so that their files exist once in the service too.
    """
    env = StrictEnvironment(
        context={"cookiecutter": CONTEXT}, keep_trailing_newline=True
    )
    verbatim = CONTEXT.get("_copy_without_render", [])
    for component in COMPONENTS:
        for source in component_files(TEMPLATE_DIR / component):
            relative = source.relative_to(TEMPLATE_DIR)
            target = SERVICE_DIR / "deploy" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            elif any(fnmatch.fnmatch(str(relative), glob) for glob in verbatim):
                shutil.copy2(source, target)
            else:
                text = env.from_string(source.read_text()).render(cookiecutter=CONTEXT)
                target.write_text(text)
                shutil.copymode(source, target)


def lock_dependencies() -> None:
    """Write uv.lock so that every build installs the same versions.

    cruft's temporary renders (update, diff) lock too, about a second each with a
    warm uv cache, and drop the result: services skip uv.lock ([tool.cruft] in
    their pyproject.toml) and re-lock after an update."""
    uv = shutil.which("uv")
    if uv is None:
        print(
            "warning: uv is not installed, so uv.lock was not written. "
            "Install uv (https://docs.astral.sh/uv/) and run `uv lock` "
            f"in {SERVICE_DIR} before building the image.",
            file=sys.stderr,
        )
        return
    result = subprocess.run([uv, "lock", "--quiet"], cwd=SERVICE_DIR, check=False)
    if result.returncode != 0:
        print(
            f"warning: `uv lock` failed; run it again in {SERVICE_DIR} "
            "before building the image.",
            file=sys.stderr,
        )


def main() -> None:
    write_local_env_file()
    render_components()
    remove_files_of_other_choices()
    install_chosen_modules()
    lock_dependencies()


if __name__ == "__main__":
    main()
