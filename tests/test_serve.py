"""bin/serve starts every server choice for real: lifespan, HTTP, graceful stop.

The deeper edge tests (Nginx in front, slow clients, restarts) build on this.
"""

import json

import pytest

from edge import App, request
from matrix import each_server, params


def get_json(app: App, method: str, path: str, body=None) -> tuple[int, dict]:
    response, content = request(app, method, path, body)
    return response.status, json.loads(content)


@pytest.mark.parametrize("combination", params(each_server()))
def test_entry_script_serves_and_stops_gracefully(combination, generated, tmp_path):
    app = App(generated(combination), tmp_path, "server", WEB_CONCURRENCY="2")
    app.migrate()
    app.start()
    try:
        assert get_json(app, "GET", "/readyz") == (
            200,
            {"status": "ready", "checks": {"database": "ok"}},
        )
        status, item = get_json(
            app, "POST", "/api/items", {"name": "a", "category": "b", "price": "2"}
        )
        assert status == 201
        assert get_json(app, "GET", f"/api/items/{item['id']}") == (200, item)
    finally:
        code = app.stop()
    # Every line, the server's own included, is one JSON object.
    lines = [json.loads(line) for line in app.output().splitlines()]
    messages = [(line["logger"], line["message"]) for line in lines]
    # Each of the two workers went through the ASGI lifespan both ways.
    assert messages.count(("core.lifespan", "started")) == 2, app.output()
    assert messages.count(("core.lifespan", "stopped")) == 2, app.output()
    assert code == 0, app.output()
