"""Every migration keeps the release before it working.

A deploy migrates first and then replaces the running code (the Helm Job, the
Ansible play), so for a while the previous release serves on the new schema. A
migration that drops, renames or tightens a column the previous release still
uses breaks it during that window. django-migration-linter reads the SQL each
migration runs on the service's database server ({{ cookiecutter.database }},
DATABASE_URL) and refuses those operations; the README's "Migrations: expand,
then contract" says how to make such a change in two releases instead.

Not on SQLite, where the suite runs without DATABASE_URL: Django alters a
SQLite table by rebuilding it, and the linter's SQLite analysis refuses every
rebuild (items' 0003, which adds a nullable column, among them), compatible or
not.
"""

import shutil
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django_migration_linter import MigrationLinter

from core import reads

pytestmark = pytest.mark.skipif(
    not reads.native("default"),
    reason="needs the database server (DATABASE_URL): the linter cannot judge "
    "SQLite's table rebuilds",
)

# Contract steps (README, "Migrations: expand, then contract"): migrations that
# drop what an earlier release already stopped using, by name, each with a
# comment naming that release. The linter then lets them through.
CONTRACTS: list[str] = []

DROPPING = """
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("items", "{last}")]
    operations = [migrations.RemoveField("item", "quantity")]
"""


def own_apps() -> list[str]:
    """The service's apps: the packages at the top of its directory (the task
    libraries' apps are not the service's to change)."""
    return [
        app.label
        for app in apps.get_app_configs()
        if Path(app.path).parent == settings.BASE_DIR
    ]


def lint(contracts: list[str] = CONTRACTS) -> MigrationLinter:
    linter = MigrationLinter(
        str(settings.BASE_DIR),
        include_apps=own_apps(),
        ignore_name=contracts,
        no_cache=True,
    )
    linter.lint_all_migrations()
    return linter


def test_every_migration_keeps_the_previous_release_working(db, capsys):
    linter = lint()
    output = capsys.readouterr().out
    assert linter.nb_total >= 2, output
    assert not linter.has_errors, output


@pytest.fixture
def dropping_migration(settings, tmp_path, monkeypatch) -> str:
    """The items app's migrations and, after the last, one that drops a column
    in one step; returns its name."""
    package = tmp_path / "items_migrations_dropping"
    shutil.copytree(settings.BASE_DIR / "items" / "migrations", package)
    last = max(path.stem for path in package.glob("0*.py"))
    (package / "9999_drop_quantity.py").write_text(DROPPING.format(last=last))
    monkeypatch.syspath_prepend(tmp_path)
    settings.MIGRATION_MODULES = {"items": package.name}
    return "9999_drop_quantity"


def test_a_migration_that_drops_a_column_in_one_step_is_refused(
    db, capsys, dropping_migration
):
    linter = lint()
    output = capsys.readouterr().out
    assert linter.has_errors, output
    assert f"(items, {dropping_migration})... ERR" in output, output
    assert "DROPPING columns (table: items_item, column: quantity)" in output, output


def test_a_contract_step_named_in_contracts_passes(db, capsys, dropping_migration):
    linter = lint(contracts=[*CONTRACTS, dropping_migration])
    output = capsys.readouterr().out
    assert not linter.has_errors, output
    assert f"(items, {dropping_migration})... IGNORE" in output, output
