"""Real git repositories of the template, for the update and fleet tests.

`TemplateRepo.of_working_tree()` commits the template as it is checked out (tracked and
new files, never ignored ones such as .venv and .cache) as the first commit of a new
repository; `edit()` and `commit()` then move it on, as the template's maintainers
would. cruft clones such a repository like any other template repository.

cruft and cookiecutter run as processes of their own here, never in pytest's: Python
keeps the first import of the template's Jinja extensions, which would then render
every later template from the first one's directory.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from matrix import TEMPLATE_DIR

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Maintainer",
    "GIT_AUTHOR_EMAIL": "platform@example.com",
    "GIT_COMMITTER_NAME": "Template Maintainer",
    "GIT_COMMITTER_EMAIL": "platform@example.com",
}


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    """Runs git; a failure fails the test with git's output."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_IDENTITY, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, (
        f"git {' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout.strip()


@dataclass
class TemplateRepo:
    path: Path

    @classmethod
    def of_working_tree(cls, path: Path) -> "TemplateRepo":
        listed = git(
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
            cwd=TEMPLATE_DIR,
        )
        for relative in filter(None, listed.split("\0")):
            source = TEMPLATE_DIR / relative
            if not source.is_symlink() and not source.exists():
                continue  # deleted in the working tree, not yet committed
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
        git("init", "--quiet", "--initial-branch=main", cwd=path)
        repo = cls(path)
        repo.commit("The template as checked out")
        return repo

    def edit(self, relative: str, old: str, new: str) -> None:
        """Replaces `old`, which must occur exactly once, in a file of the template."""
        file = self.path / relative
        text = file.read_text()
        assert text.count(old) == 1, f"{relative} holds {old!r} {text.count(old)} times"
        file.write_text(text.replace(old, new))

    def commit(self, message: str) -> str:
        """Commits every change; returns the new commit."""
        git("add", "--all", cwd=self.path)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.path)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.path)

    def describe(self) -> tuple[str, str]:
        """The template version and date a service generated from the checkout now
        records: git's own answers, against which hooks/facts.py is checked."""
        version = git(
            "describe", "--tags", "--always", "--dirty", "--abbrev=12", cwd=self.path
        )
        date = git(
            "log",
            "-1",
            "--format=%cd",
            "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
            cwd=self.path,
            env={"TZ": "UTC"},
        )
        return version, date
