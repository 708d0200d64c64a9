"""A release that changes the schema, rolled out under a steady client load as the
Helm chart and the Ansible role roll it out: its migrations run first, while the
previous release keeps serving on the new schema, then the instances restart on
the new code one after the other.

The release is the expand step of the README's "Migrations: expand, then
contract": a nullable column on items, with the migration the release's own
makemigrations writes (the service's tests lint every migration it ships for
this). The previous release names its columns in every query, so it neither
reads nor writes the new one: no request may fail, and no acknowledged write may
be lost or duplicated.
"""

import shutil
import signal
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from load import Load, acknowledged_writes_kept_once, failures

from edge import App, serve_instances
from matrix import params, production
from services import create_database, psql

# A graceful stop: gunicorn exits 0, a single Uvicorn re-raises SIGTERM.
STOPPED_GRACEFULLY = (0, -signal.SIGTERM)
NEW_FIELD = "    supplier = models.CharField(max_length=120, null=True, blank=True)\n"


def next_release(project: Path, root: Path) -> Path:
    """A copy of `project` whose Item has one more field, nullable, and the
    migration for it; it shares the project's virtualenv, as two releases of one
    lock file would have the same packages."""
    release = root / "release-2"
    shutil.copytree(
        project, release, ignore=shutil.ignore_patterns(".venv", "__pycache__")
    )
    (release / ".venv").symlink_to(project / ".venv")
    models = release / "items" / "models.py"
    anchor = "    updated_at = models.DateTimeField(auto_now=True)\n"
    assert anchor in models.read_text()
    models.write_text(models.read_text().replace(anchor, anchor + NEW_FIELD, 1))
    return release


def columns(database_url: str) -> set[str]:
    return set(
        psql(
            database_url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'items_item'",
        ).split()
    )


@pytest.mark.parametrize("combination", params([production("gunicorn-uvicorn")]))
def test_a_release_that_adds_a_column_rolls_out_under_load_failing_no_request(
    combination, generated, postgres_url, redis_database, tmp_path
):
    project = generated(combination)
    database_url = create_database(postgres_url, "releases")
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_database(),
        "WEB_CONCURRENCY": "1",
        "GRACEFUL_TIMEOUT": "10",
    }
    with ExitStack() as cleanup:
        apps, nginx = serve_instances(cleanup, project, tmp_path, 2, **env)
        release = next_release(
            project, Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        )
        deploy = App(release, tmp_path, "deploy", **env)
        made = deploy.manage("makemigrations", "items", "--name", "item_supplier")
        assert "Add field supplier to item" in made, made

        with Load(nginx.port, token=nginx.token) as load:
            time.sleep(3)
            # The deploy's migration step, while the previous release serves on.
            deploy.manage("migrate")
            expanded = time.monotonic()
            assert "supplier" in columns(database_url)
            time.sleep(5)
            restarting = time.monotonic()
            for app in apps:
                # As the Ansible rollout does (the chart's pods leave the
                # Service's endpoints likewise): no new request for the instance
                # that stops, and requests again once it is back.
                nginx.drain(app)
                assert app.stop() in STOPPED_GRACEFULLY, app.output()
                app.cwd = release
                app.start()
                nginx.drain()
            time.sleep(3)
        on_new_schema = load.between(expanded, restarting)
        print(
            f"\n{len(on_new_schema)} requests served by the previous release on the "
            f"new schema, {len(load.answers)} in all through the rollout"
        )
        # Nginx's log says why a request failed (its errors go to stderr).
        assert failures(load.answers) == [], nginx.output()[-5000:]
        assert len([a for a in on_new_schema if a.method == "POST"]) >= 5
        acknowledged_writes_kept_once(load, database_url)
        # Both instances run from the new release.
        for app in apps:
            cwd = Path(f"/proc/{app.process.pid}/cwd").resolve()
            assert cwd == release.resolve()
