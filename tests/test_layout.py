"""The template's layout, and how its stack components reach a generated service."""

from harness import generate_service, run
from matrix import TEMPLATE_DIR

COMPONENTS = ("nginx", "helm", "ansible", "prometheus", "grafana")


def test_top_level_is_exactly_the_documented_layout():
    tracked = run(["git", "ls-files"], TEMPLATE_DIR).stdout.split()
    top_level = {path.split("/")[0] for path in tracked}
    assert top_level == {
        "{{cookiecutter.project}}",
        *COMPONENTS,
        "tests",
        "hooks",
        ".ci",
        "cookiecutter.json",
        "README.md",
        "pyproject.toml",
        "uv.lock",
        ".gitignore",
    }


def test_every_component_is_rendered_into_the_service(tmp_path):
    project = generate_service({"project_name": "Shop Api"}, tmp_path)
    for component in COMPONENTS:
        sources = sorted(
            p.relative_to(TEMPLATE_DIR)
            for p in (TEMPLATE_DIR / component).rglob("*")
            if p.is_file()
        )
        assert sources, f"{component}/ is empty"
        for source in sources:
            rendered = project / "deploy" / source
            assert rendered.is_file(), rendered
        readme = (project / "deploy" / component / "README.md").read_text()
        assert "shop-api" in readme
        assert "cookiecutter.project" not in readme
