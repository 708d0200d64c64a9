"""The template's own code meets the bar it sets for generated services."""

import shutil

from harness import run
from matrix import TEMPLATE_DIR


def test_hooks_and_tests_pass_ruff():
    ruff = shutil.which("ruff")
    run([ruff, "check", "hooks", "tests"], TEMPLATE_DIR)
    run([ruff, "format", "--check", "hooks", "tests"], TEMPLATE_DIR)


def test_shell_scripts_pass_shellcheck():
    scripts = [
        *sorted((TEMPLATE_DIR / "tests").glob("*.sh")),
        *sorted((TEMPLATE_DIR / "tests" / "bin").iterdir()),
        TEMPLATE_DIR / ".ci" / "run",
    ]
    run(["shellcheck", "--external-sources", *scripts], TEMPLATE_DIR)
