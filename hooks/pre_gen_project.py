"""Refuse bad options before cookiecutter writes anything.

The rules live in hooks/options.py, which the template tests use too.
"""

import json
import sys
from pathlib import Path

CONTEXT = json.loads({{cookiecutter | jsonify | tojson}})
TEMPLATE_DIR = Path({{template_dir | tojson}})

sys.path.insert(0, str(TEMPLATE_DIR / "hooks"))
from options import load_choices, refusals  # noqa: E402


def main() -> int:
    problems = refusals(CONTEXT, load_choices(TEMPLATE_DIR))
    if not problems:
        return 0
    print("Cannot generate this service:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
