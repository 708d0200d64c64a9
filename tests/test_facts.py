"""The facts cookiecutter.json computes (hooks/facts.py) follow the checkout on disk.

`cruft update` renders the old and then the new commit of one clone in one process,
with the extension imported once: the new render must see the new commit's rules
and version all the same (cruft/cruft#253).
"""

import importlib.util

from jinja2 import Environment
from template_repo import TemplateRepo, git


def facts_of(repo: TemplateRepo) -> dict:
    env = Environment(extensions=[extension_class(repo)], autoescape=False)  # noqa: S701
    return {
        name: env.from_string(f"{{{{ {call} }}}}").render()
        for name, call in {
            "broker": "task_broker('celery')",
            "version": "template_version()",
            "date": "template_date()",
        }.items()
    }


EXTENSIONS = {}


def extension_class(repo: TemplateRepo):
    """FactsExtension of the repository, imported once, as cruft's process does."""
    if repo.path not in EXTENSIONS:
        spec = importlib.util.spec_from_file_location(
            "facts_under_test", repo.path / "hooks" / "facts.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        EXTENSIONS[repo.path] = module.FactsExtension
    return EXTENSIONS[repo.path]


def test_facts_follow_the_checkout_not_the_first_import(tmp_path):
    repo = TemplateRepo.of_working_tree(tmp_path / "template")
    first = repo.head()
    before = facts_of(repo)
    assert before == {
        "broker": "redis",
        "version": first[:12],
        "date": repo.describe()[1],
    }

    repo.edit("hooks/options.py", '"celery": "redis",', '"celery": "database",')
    assert facts_of(repo)["version"] == f"{first[:12]}-dirty"
    second = repo.commit("Celery's broker moves to the database")
    git("tag", "v2.0.0", cwd=repo.path)

    after = facts_of(repo)
    assert after["broker"] == "database"
    assert after["version"] == "v2.0.0"
    assert second != first


def test_outside_git_the_version_is_unknown(tmp_path):
    repo = TemplateRepo.of_working_tree(tmp_path / "template")
    (repo.path / ".git").rename(tmp_path / "moved-away")
    facts = facts_of(repo)
    assert facts["version"] == "unknown"
    assert facts["date"] == "unknown"
