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
# Writes need a bearer token: a key of the demo's own database.
key=$(uv run python manage.py issue_api_key demo)
echo "Serving on http://127.0.0.1:8000 (try /healthz, /api/items, /api/items/events); Ctrl-C stops."
echo "Writes need the API key: curl -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' -d '{\"name\": \"a\", \"category\": \"b\", \"price\": \"1\"}' http://127.0.0.1:8000/api/items"
# One worker: the in-memory channel layer does not reach across processes. A local
# run: the generated .env (its secret key, DEBUG), which bin/serve reads only if told.
HOST=127.0.0.1 PORT=8000 WEB_CONCURRENCY=1 DJANGO_READ_DOT_ENV=true exec uv run bin/serve
