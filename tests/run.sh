#!/usr/bin/env bash
# The whole test suite of the template: the README's test command, run by CI (.ci/run).
# Extra arguments go to pytest (e.g. -k options, -x).
set -euo pipefail
# shellcheck source=tests/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"
# Three workers on CI's two cores: a good part of the suite waits rather than
# computes (Ansible's podman execs, image builds, the WebSocket idle test, servers
# starting), and a third worker fills those waits.
exec pytest -n "${TEST_WORKERS:-3}" "$@"
