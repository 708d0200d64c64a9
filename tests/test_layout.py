"""The template's layout, and how its stack components reach a generated service."""

import sys

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
    # The choices whose service keeps every component file: the others drop the
    # Granian dashboard, the chart's autoscaling example (SQLite) or the task
    # queue's monitoring.
    project = generate_service(
        {
            "project_name": "Shop Api",
            "server": "granian",
            "database": "postgresql",
            "tasks": "arq",
        },
        tmp_path,
    )
    for component in COMPONENTS:
        sources = sorted(
            p.relative_to(TEMPLATE_DIR)
            for p in (TEMPLATE_DIR / component).rglob("*")
            if p.is_file() or p.is_symlink()
        )
        assert sources, f"{component}/ is empty"
        for source in sources:
            rendered = project / "deploy" / source
            if (TEMPLATE_DIR / source).is_symlink():
                # A link in the template is the same link in the service.
                assert rendered.readlink() == (TEMPLATE_DIR / source).readlink()
            else:
                assert rendered.is_file(), rendered
        readme = (project / "deploy" / component / "README.md").read_text()
        assert "shop-api" in readme
        assert "cookiecutter.project" not in readme


def test_generation_from_a_relative_template_path(tmp_path):
    # The hooks must find the template when it is given as "." or "../x".
    for cwd, template in [(TEMPLATE_DIR, "."), (TEMPLATE_DIR / "hooks", "..")]:
        output = tmp_path / cwd.name
        run(
            [
                sys.executable,
                "-m",
                "cookiecutter",
                "--no-input",
                "--default-config",
                template,
                "--output-dir",
                output,
            ],
            cwd,
        )
        assert (output / "my-service" / "deploy" / "nginx" / "nginx.conf").is_file()
