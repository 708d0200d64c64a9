#!/usr/bin/env bash
# Generates a service with the default options (SQLite, in-memory channel layer,
# Uvicorn) into .cache/demo and serves it on http://127.0.0.1:8000.
set -euo pipefail
# shellcheck source=tests/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
demo="$ROOT/.cache/demo"
rm -rf "$demo"
cookiecutter --no-input "$ROOT" --output-dir "$demo"
cd "$demo"/*/
uv sync --locked --quiet
uv run python manage.py migrate
echo "Serving on http://127.0.0.1:8000 (try /healthz, /api/items, /api/items/events); Ctrl-C stops."
# One worker: the in-memory channel layer does not reach across processes.
HOST=127.0.0.1 PORT=8000 WEB_CONCURRENCY=1 exec uv run bin/serve
