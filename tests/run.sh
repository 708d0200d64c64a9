#!/usr/bin/env bash
# The whole test suite of the template: the README's test command, run by CI (.ci/run).
# Extra arguments go to pytest (e.g. -k options, -x).
set -euo pipefail
# shellcheck source=tests/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"
exec pytest -n "${TEST_WORKERS:-2}" "$@"
