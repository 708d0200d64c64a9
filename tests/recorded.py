"""What a script did when run against recording stubs: each stub command appends
its call (argv, and what else the test needs) as one JSON line to $STUB_LOG.

Used by the tests of the service's scripts that cannot run for real here
(bin/kind-smoke needs a cluster, bin/template-update GitHub).
"""

import json
from pathlib import Path


class Recorded:
    """One run of a script: its result and the stubs' calls, in order."""

    def __init__(self, result, log: Path):
        self.returncode = result.returncode
        self.output = result.stdout + result.stderr
        lines = log.read_text().splitlines() if log.exists() else []
        self.calls = [json.loads(line) for line in lines]
        self.argvs = [call["argv"] for call in self.calls]

    def index(self, *prefix: str) -> int:
        """Where the first call beginning with prefix is; fails if none is."""
        for position, argv in enumerate(self.argvs):
            if tuple(argv[: len(prefix)]) == prefix:
                return position
        raise AssertionError(f"no call {' '.join(prefix)} in:\n{self.describe()}")

    def find(self, *prefix: str) -> dict:
        return self.calls[self.index(*prefix)]

    def has(self, *prefix: str) -> bool:
        return any(tuple(argv[: len(prefix)]) == prefix for argv in self.argvs)

    def describe(self) -> str:
        calls = "\n".join(" ".join(argv) for argv in self.argvs)
        return f"{calls}\n--- output ---\n{self.output}"
