#!/usr/bin/env bash
# The benchmark suite (tests/bench): generates a service per server, runs each
# scenario against it and the baselines on 127.0.0.1, and writes
# tests/bench/results/ (results.md, results.json, plots). Not part of tests/run.sh.
# Arguments go to it: --quick for short cells while developing, --out DIR.
set -euo pipefail
# shellcheck source=tests/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
"$ROOT/tests/system-packages.sh" install wrk
# Each held WebSocket is a file descriptor in the client and in the server.
ulimit -n "$(ulimit -Hn)"
cd "$ROOT/tests"
exec "$ROOT/.venv/bin/python" -m bench "$@"
