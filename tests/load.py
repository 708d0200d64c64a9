"""A steady, bounded client load through Nginx that records every answer: the
fault tests inject a fault under it and then read what the clients saw.

One client, one request at a time on a new connection, about 20 requests a second
(under Nginx's per-client limit of 50): it lists items, creates one with a name
no other request uses, and reads the last item it created by id. Like a service
that holds an API key, it shows its token on every request.
"""

import http.client
import json
import threading
import time
from dataclasses import dataclass

from edge import bearer
from services import rows

# Seconds a client waits for an answer: longer than any bound the service sets
# (pool timeout, follow-up timeout), so that a hang shows as one.
CLIENT_TIMEOUT = 15
PAUSE = 0.05
MAX_REQUESTS = 5000


@dataclass
class Answer:
    started: float  # time.monotonic()
    seconds: float
    method: str
    path: str
    status: int | None  # None: no HTTP answer at all
    retry_after: str | None
    body: dict | str
    name: str | None = None  # the name a POST created

    @property
    def ok(self) -> bool:
        return self.status in (200, 201)


class Load:
    def __init__(self, port: int, *, token: str | None):
        self.port = port
        self.headers = {"Content-Type": "application/json", **bearer(token)}
        self.answers: list[Answer] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=CLIENT_TIMEOUT + 5)

    def _send(self, method: str, path: str, body: dict | None = None) -> Answer:
        started = time.monotonic()
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=CLIENT_TIMEOUT
        )
        try:
            connection.request(
                method,
                path,
                body=None if body is None else json.dumps(body).encode(),
                headers=self.headers,
            )
            response = connection.getresponse()
            content = response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
            try:
                parsed = json.loads(content) if content else {}
            except ValueError:
                parsed = content.decode(errors="replace")[:200]
        except OSError as error:
            status, retry_after, parsed = None, None, repr(error)
        finally:
            connection.close()
        answer = Answer(
            started,
            time.monotonic() - started,
            method,
            path,
            status,
            retry_after,
            parsed,
        )
        self.answers.append(answer)
        return answer

    def _run(self) -> None:
        created = None
        number = 0
        while not self.stopping.is_set() and len(self.answers) < MAX_REQUESTS:
            self._send("GET", "/api/items?limit=1")
            name = f"load-{number}"
            number += 1
            answer = self._send(
                "POST", "/api/items", {"name": name, "category": "load", "price": "1"}
            )
            answer.name = name
            if answer.status == 201:
                created = answer.body["id"]
            if created is not None:
                self._send("GET", f"/api/items/{created}")
            time.sleep(PAUSE)

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.started < end]

    def ended_before(self, moment: float) -> list[Answer]:
        """The answers of the requests that were over by `moment`: one still
        running then met whatever happened at that moment."""
        return [a for a in self.answers if a.started + a.seconds < moment]


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if not a.ok]


def acknowledged_writes_kept_once(load: Load, database_url: str) -> None:
    """Each item whose creation was answered 201 is in the database, once."""
    kept = {
        name: int(count)
        for name, count in rows(
            database_url, "SELECT name, count(*) FROM items_item GROUP BY name"
        )
    }
    created = [a.name for a in load.answers if a.method == "POST" and a.status == 201]
    assert created, "no write was acknowledged"
    lost = [name for name in created if kept.get(name, 0) == 0]
    duplicated = [name for name in created if kept.get(name, 0) > 1]
    assert (lost, duplicated) == ([], [])
