#!/usr/bin/env bash
# The benchmark suite (tests/bench): generates a service per server (and per
# database for the database scenarios: PostgreSQL and MariaDB, each a throwaway
# server from tests/services.py), runs each scenario against it and the baselines
# on 127.0.0.1, and writes tests/bench/results/ (results.md, results.json, plots).
# Not part of tests/run.sh. Arguments go to it: --quick for short cells while
# developing, --only SCENARIO,..., --out DIR.
set -euo pipefail
# shellcheck source=tests/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
"$ROOT/tests/system-packages.sh" install wrk
# Each held WebSocket is a file descriptor in the client and in the server.
ulimit -n "$(ulimit -Hn)"
# The bench runs in tests/; a relative --out is the caller's.
export BENCH_CALLER_DIR="$PWD"
cd "$ROOT/tests"
exec "$ROOT/.venv/bin/python" -m bench "$@"
