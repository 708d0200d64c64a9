"""bin/serve starts every server choice for real: lifespan, HTTP, graceful stop.

The deeper edge tests (Nginx in front, slow clients, restarts) build on this.
"""

import json
import signal
import subprocess
import urllib.request

import pytest

from harness import run, service_env
from matrix import each_server, params
from services import free_port, wait_for_port


def request(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status, json.load(response)


@pytest.mark.parametrize("combination", params(each_server()))
def test_entry_script_serves_and_stops_gracefully(combination, generated, tmp_path):
    project = generated(combination)
    database = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    env = service_env(DATABASE_URL=database)
    run([project / ".venv" / "bin" / "python", "manage.py", "migrate"], project, env)
    port = free_port()
    env.update(
        PATH=f"{project / '.venv' / 'bin'}:{env['PATH']}",
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="2",
    )
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["bin/serve"], cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(port)
            base = f"http://127.0.0.1:{port}"
            assert request(f"{base}/readyz") == (
                200,
                {"status": "ready", "checks": {"database": "ok"}},
            )
            status, item = request(
                f"{base}/api/items", {"name": "a", "category": "b", "price": "2"}
            )
            assert status == 201
            assert request(f"{base}/api/items/{item['id']}") == (200, item)
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
    # Every line, the server's own included, is one JSON object.
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    messages = [(line["logger"], line["message"]) for line in lines]
    # Each of the two workers went through the ASGI lifespan both ways.
    assert messages.count(("core.lifespan", "started")) == 2, log.read_text()
    assert messages.count(("core.lifespan", "stopped")) == 2, log.read_text()
    assert code == 0, log.read_text()
