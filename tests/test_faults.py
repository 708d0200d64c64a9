"""Dependencies that fail under a steady client load, on the real processes: a
restart of the database server (PostgreSQL, MariaDB), a Redis restart, the task
broker's restart, an instance lost with its host. Each test states what the
clients see during the fault, how long the service takes to recover by itself,
and that no acknowledged write is lost or duplicated.

The stacks are the production configuration: a database server and Redis, two
workers, Nginx in front. Pairwise across servers is enough: the behaviour under
test is the service's (core.api, core.database, core.reads, core.cache,
core.followups, core.outbox, core.sse, items.consumers), the same on every
server. The numbers go to the test's output (pytest -s).
"""

import itertools
import json
import os
import signal
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from load import Load, acknowledged_writes_kept_once, failures
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from edge import (
    ORIGIN,
    App,
    EventStream,
    Nginx,
    Worker,
    receive_until_closed,
    request,
    serve,
    serve_instances,
)
from matrix import each_queue, params, production
from services import MariaDB, PostgreSQL, Redis, create_database, rows

WORKERS = 2
# The service's pool timeout, shortened so that the outage is short too: a
# request waits this long for a connection before its 503.
POOL_TIMEOUT = 2
# How long each dependency stays down.
OUTAGE = 4
# Recovery, once the dependency is back, must take less than this (measured:
# see the note in each test).
RECOVERY_BOUND = 10
# How long the test waits for a client it runs in a thread: longer than the
# client's own deadlines, which say what was missing.
WATCH_TIMEOUT = RECOVERY_BOUND * 6
# systemd's RestartSec of the task worker's unit (the Ansible role).
RESTART_SECONDS = 2
# What a write waits for the broker before its task goes to the outbox
# (core.outbox.ENQUEUE_TIMEOUT_SECONDS).
ENQUEUE_TIMEOUT = 5


def workers_started(app: App) -> int:
    lines = [json.loads(line) for line in app.output().splitlines() if line[:1] == "{"]
    return sum(
        (line["logger"], line["message"]) == ("core.lifespan", "started")
        for line in lines
    )


def recovered_after(load: Load, since: float) -> float:
    """Seconds from `since` to the first request of each kind answered 2xx, for
    the slowest kind; waits for them."""
    deadline = since + RECOVERY_BOUND * 3
    while time.monotonic() < deadline:
        later = load.between(since, float("inf"))
        firsts = [
            min((a.started for a in later if a.method == method and a.ok), default=None)
            for method in ("GET", "POST")
        ]
        if None not in firsts:
            return max(firsts) - since
        time.sleep(0.2)
    pytest.fail(f"no success of each kind within {RECOVERY_BOUND * 3} s")


# Each database server's restart: its class in services.py, and the production
# combination it runs under (on another server each, pairwise), with a task queue
# whose broker is the database itself: its worker and the outbox's relay lose
# their database too.
DATABASE_SERVERS = {
    "postgresql": (PostgreSQL, {**production("gunicorn-uvicorn"), "tasks": "django"}),
    "mysql": (
        MariaDB,
        {**production("granian"), "database": "mysql", "tasks": "django-q2"},
    ),
}


@pytest.mark.parametrize(
    "combination", params([combination for _, combination in DATABASE_SERVERS.values()])
)
def test_database_server_restart_answers_503_and_recovers_by_itself(
    combination, generated, redis_database, tmp_path
):
    server = DATABASE_SERVERS[combination["database"]][0]
    with ExitStack() as cleanup:
        # Not under pytest's temporary directory: that one is private to root.
        workdir = cleanup.enter_context(
            tempfile.TemporaryDirectory(prefix="template-tests-faults-")
        )
        database = server(Path(workdir), durable=True)
        database.start()
        cleanup.callback(database.stop, "immediate")
        database_url = create_database(database.url, "faults")
        app, nginx = serve(
            cleanup,
            generated(combination),
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=redis_database(),
            WEB_CONCURRENCY=str(WORKERS),
            DATABASE_POOL_TIMEOUT=str(POOL_TIMEOUT),
        )
        supervisor = supervised_worker(cleanup, app, tmp_path)
        with Load(nginx.port, token=nginx.token) as load:
            time.sleep(3)
            down = time.monotonic()
            database.stop("fast")
            time.sleep(OUTAGE)
            database.start()
            up = time.monotonic()
            recovery = recovered_after(load, up)
            time.sleep(3)
        created = [a.name for a in load.answers if a.method == "POST" and a.ok]
        recorded = eventually_recorded(database_url, created)
        # A request still running when the server stops (a read with an API key
        # is two queries in a row) waits for the pool like those sent during it.
        before, during = load.ended_before(down), load.between(down, up)
        after = load.between(up + recovery, float("inf"))
        print(
            f"\n{combination['database']} down {up - down:.1f} s: "
            f"{len(failures(during))} of "
            f"{len(during)} answers 503; recovered {recovery:.1f} s after its return; "
            f"{len(load.answers)} requests in all; every task of {len(created)} "
            f"writes ({combination['tasks']}) recorded {recorded - up:.1f} s after "
            f"its return; the worker ended {len(supervisor.exits)} time(s) "
            f"{supervisor.exits}"
        )
        assert failures(before) == []
        assert failures(after) == []
        # While it is down, and until the pools have reconnected: 503 with
        # Retry-After, never a 500, a 502 or a hang.
        unexpected = [
            a
            for a in failures(load.answers)
            if (a.status, a.retry_after) != (503, "1")
            or not isinstance(a.body, dict)
            or a.body.get("error") != "database_unavailable"
        ]
        assert unexpected == []
        assert failures(during), "the outage was not seen: nothing was tested"
        assert max(a.seconds for a in load.answers) < POOL_TIMEOUT + 3
        assert recovery < RECOVERY_BOUND
        acknowledged_writes_kept_once(load, database_url)
        # No worker was restarted: the pools recovered in place.
        assert workers_started(app) == WORKERS, app.output()
        # The task worker kept running, or failed and was started again.
        assert 0 not in supervisor.exits


@pytest.mark.parametrize("combination", params([production("granian")]))
def test_redis_restart_is_cache_misses_and_no_error(
    combination, generated, postgres_url, tmp_path
):
    """Redis is the cache and the channel layer. While it is down every request
    succeeds; an open event stream and an open WebSocket are told (an
    "unavailable" event, a close with 1013) rather than left deaf; once it is
    back, a client that reconnects gets the events of new writes, the layer's
    connections having recovered without a restart."""
    # The default combination: WebSockets on, which half of the test needs.
    assert combination["websockets"] == "yes"
    redis = Redis()
    redis.start()
    with ExitStack() as cleanup:
        cleanup.callback(redis.stop)
        database_url = create_database(postgres_url, "faults_redis")
        app, nginx = serve(
            cleanup,
            generated(combination),
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=f"{redis.url}/0",
            WEB_CONCURRENCY=str(WORKERS),
        )
        # Shut down after the clients' connections are closed (cleanup: last in,
        # first out), which ends whatever its threads still read.
        clients = cleanup.enter_context(ThreadPoolExecutor(max_workers=2))
        with Load(nginx.port, token=nginx.token) as load:
            time.sleep(3)
            # Opened before the outage, and read all along: the load's writes
            # publish events to them.
            events = EventStream(nginx, timeout=RECOVERY_BOUND * 2)
            cleanup.callback(events.close)
            assert events.next() == {"retry": "3000"}
            # An item's event shows it subscribed; its id is the reconnection's
            # Last-Event-ID.
            while events.last_id is None:
                assert events.next() is not None
            stream = clients.submit(timed, read_until_told, events)
            websocket = clients.submit(
                timed,
                receive_until_closed,
                open_websocket(cleanup, nginx),
                RECOVERY_BOUND * 2,
            )
            down = time.monotonic()
            redis.stop()
            time.sleep(OUTAGE / 2)
            readiness = read_json(f"http://127.0.0.1:{app.port}/readyz")
            time.sleep(OUTAGE / 2)
            redis.start()
            up = time.monotonic()
            stream_told, stream_ended = stream.result(timeout=WATCH_TIMEOUT)
            (_, websocket_code), websocket_ended = websocket.result(
                timeout=WATCH_TIMEOUT
            )
            # Both at once, each timed by itself.
            new_stream = clients.submit(
                timed,
                stream_reconnects_until_it_gets_a_write,
                cleanup,
                nginx,
                events.last_id,
            )
            new_websocket = clients.submit(
                timed, websocket_reconnects_until_it_gets_a_write, cleanup, nginx
            )
            stream_attempts, new_stream_ended = new_stream.result(WATCH_TIMEOUT)
            websocket_attempts, new_websocket_ended = new_websocket.result(
                WATCH_TIMEOUT
            )
            time.sleep(3)
        during = load.between(down, up)
        print(
            f"\nRedis down {up - down:.1f} s: {len(failures(during))} of "
            f"{len(during)} answers failed; {len(load.answers)} requests in all; "
            f"the event stream was told {stream_ended - down:.2f} s after it "
            f"stopped ({stream_told}), the WebSocket closed with {websocket_code} "
            f"after {websocket_ended - down:.2f} s; after its return, a reconnected "
            f"stream got a write's event in {new_stream_ended - up:.2f} s "
            f"({stream_attempts} attempt(s)), a reconnected WebSocket in "
            f"{new_websocket_ended - up:.2f} s ({websocket_attempts} attempt(s))"
        )
        # The cache is a miss and the events are lost; every request succeeds.
        assert failures(load.answers) == []
        assert readiness == {
            "status": "degraded",
            "checks": {"database": "ok", "redis": "unavailable"},
        }
        metrics = read_text(f"http://127.0.0.1:{app.port}/metrics")
        # Counted: the gets that missed for it, the events that were not published.
        assert sample(metrics, "django_cache_errors_total", 'operation="get"') > 0
        assert sample(metrics, "django_followups_failed_total", 'step="publish"') > 0
        acknowledged_writes_kept_once(load, database_url)
        assert workers_started(app) == WORKERS, app.output()
        # Told once Redis stopped, not before, and not left waiting: a stream
        # still open would miss every event (the restarted Redis has no groups).
        assert stream_told == "unavailable"
        assert down < stream_ended < down + RECOVERY_BOUND
        assert websocket_code == 1013
        assert down < websocket_ended < down + RECOVERY_BOUND
        # Once Redis is back, the first reconnection works: no connection that the
        # restart left stale fails a client.
        assert (stream_attempts, websocket_attempts) == (1, 1)
        assert new_stream_ended - up < RECOVERY_BOUND
        assert new_websocket_ended - up < RECOVERY_BOUND


def timed(function, *args):
    """function(*args), and when it returned (time.monotonic)."""
    return function(*args), time.monotonic()


def read_until_told(stream: EventStream) -> str:
    """Reads the stream until it ends; returns how: with the "unavailable" event
    the service sends, or "ended" without it."""
    while (event := stream.next()) is not None:
        if event.get("event") == "unavailable":
            # The service ends the stream after it: nothing else follows.
            assert stream.next() is None
            stream.close()
            return "unavailable"
    stream.close()
    return "ended"


def open_websocket(cleanup: ExitStack, nginx: Nginx) -> ClientConnection:
    """A WebSocket through Nginx, closed with `cleanup`, once it was welcomed."""
    websocket = cleanup.enter_context(
        connect(
            f"ws://127.0.0.1:{nginx.port}/ws/items",
            additional_headers=ORIGIN,
            open_timeout=10,
            # Unbounded: a client that holds the load's events unread still
            # reads the server's close frame (the load is bounded too).
            max_queue=None,
        )
    )
    assert json.loads(websocket.recv(timeout=10))["type"] == "welcome"
    return websocket


def create_item(nginx: Nginx) -> str:
    """Creates an item through Nginx; returns its name, which no other has."""
    name = f"after-redis-{time.monotonic_ns()}"
    response, content = request(
        nginx, "POST", "/api/items", {"name": name, "category": "c", "price": "1"}
    )
    assert response.status == 201, content
    return name


def stream_reconnects_until_it_gets_a_write(
    cleanup: ExitStack, nginx: Nginx, last_event_id: str
) -> int:
    """As a client does once Redis is back: reconnects the event stream with
    Last-Event-ID, and creates an item, until the stream gets that item's event
    rather than "unavailable"; returns the attempts it took."""
    deadline = time.monotonic() + RECOVERY_BOUND * 3
    for attempt in itertools.count(1):
        stream = EventStream(nginx, last_event_id, timeout=RECOVERY_BOUND * 2)
        cleanup.callback(stream.close)
        # 200 while Redis is down too: the stream itself says "unavailable".
        assert stream.response.status == 200, stream.response.status
        # Sent both ways, before "unavailable" when the layer is still down:
        # only the write's event tells that the stream is subscribed.
        assert stream.next() == {"retry": "3000"}
        name = create_item(nginx)
        # The load's events come too, and keep coming.
        while (event := stream.next()) is not None:
            if event.get("event") == "unavailable":
                break
            assert time.monotonic() < deadline, "the write's event did not come"
            created = event.get("event") == "item.created"
            if created and json.loads(event["data"])["name"] == name:
                return attempt
        stream.close()
        last_event_id = stream.last_id
        assert time.monotonic() < deadline, "no stream got an event after the return"
        time.sleep(0.5)


def websocket_reconnects_until_it_gets_a_write(cleanup: ExitStack, nginx: Nginx) -> int:
    """As a client does once Redis is back: connects, creates an item and waits
    for its event, and reconnects whenever the server closes with 1013 (try
    again later), before its welcome or after it; returns the attempts it took."""
    deadline = time.monotonic() + RECOVERY_BOUND * 3
    for attempt in itertools.count(1):
        try:
            websocket = open_websocket(cleanup, nginx)
            # Welcomed once in the group: every event published from now on
            # reaches it.
            name = create_item(nginx)
            while True:
                assert time.monotonic() < deadline, "the write's message did not come"
                message = json.loads(websocket.recv(timeout=RECOVERY_BOUND))
                created = message.get("event") == "item.created"
                if created and message["data"]["name"] == name:
                    return attempt
        except ConnectionClosed as closed:
            refused = closed.rcvd
        assert refused is not None
        assert refused.code == 1013, refused
        assert time.monotonic() < deadline, "no WebSocket got an event after the return"
        time.sleep(0.5)


@pytest.mark.parametrize("combination", params(each_queue(broker="redis")))
def test_broker_restart_fails_no_write_and_every_write_gets_its_task_once(
    combination, generated, postgres_url, tmp_path
):
    """The broker of Celery, Dramatiq and arq is Redis: while it is down, a write
    commits and is answered 201, its task kept in the database (core.outbox), and
    the worker's relay enqueues it once Redis is back. The tasks waiting in Redis
    when it stopped are still there when it returns: it persists them (the
    service's README, "Redis")."""
    with ExitStack() as cleanup:
        workdir = cleanup.enter_context(tempfile.TemporaryDirectory())
        redis = Redis(durable_in=Path(workdir))
        redis.start()
        cleanup.callback(redis.stop)
        queue = combination["tasks"]
        database_url = create_database(postgres_url, f"faults_broker_{queue}")
        app, nginx = serve(
            cleanup,
            generated(combination),
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=f"{redis.url}/0",
            WEB_CONCURRENCY=str(WORKERS),
        )
        supervisor = supervised_worker(cleanup, app, tmp_path)
        with Load(nginx.port, token=nginx.token) as load:
            time.sleep(3)
            down = time.monotonic()
            redis.stop()
            time.sleep(OUTAGE)
            redis.start()
            up = time.monotonic()
            time.sleep(3)
        created = [a.name for a in load.answers if a.method == "POST" and a.ok]
        recorded = eventually_recorded(database_url, created)
        during = load.between(down, up)
        slowest = max(a.seconds for a in load.answers)
        print(
            f"\n{queue}'s broker down {up - down:.1f} s: {len(failures(during))} of "
            f"{len(during)} answers failed, the slowest in {slowest:.1f} s; every "
            f"task of {len(created)} writes recorded {recorded - up:.1f} s after "
            f"its return; the worker ended {len(supervisor.exits)} time(s) "
            f"{supervisor.exits}"
        )
        assert failures(load.answers) == []
        # A write waits for the broker at most core.outbox's ENQUEUE_TIMEOUT_SECONDS.
        assert slowest < ENQUEUE_TIMEOUT + 3
        assert [a for a in during if a.method == "POST"], "no write during the outage"
        acknowledged_writes_kept_once(load, database_url)
        # A worker that ended had failed (Celery's can, when its broker's
        # connection breaks at the wrong moment), and was started again.
        assert 0 not in supervisor.exits


class RestartOnFailure:
    """Starts the worker again whenever it ends with a failure, as systemd does
    (Restart=on-failure; the kubelet restarts it whatever its status), and keeps
    each exit status. A worker that ends with 0 stays down, as on a VM."""

    def __init__(self, worker: Worker):
        self.worker, self.exits = worker, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopping.wait(0.5):
            status = self.worker.process.poll()
            if status is None:
                continue
            self.exits.append(status)
            if status == 0:
                return
            time.sleep(RESTART_SECONDS)
            self.worker.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def supervised_worker(cleanup: ExitStack, app: App, workdir: Path) -> RestartOnFailure:
    """The app's task worker, started, and started again whenever it fails; both
    stopped when cleanup closes."""
    worker = Worker(app, workdir, seconds=30)
    cleanup.callback(worker.stop)
    worker.start()
    supervisor = RestartOnFailure(worker)
    cleanup.callback(supervisor.stop)
    return supervisor


def eventually_recorded(database_url: str, names: list[str]) -> float:
    """Waits until record_change has recorded the creation of each item named
    (once: a change's row is unique) and the outbox is empty; returns when."""
    query = (
        "SELECT (SELECT count(*) FROM core_pendingtask), i.name, count(c.id) "
        "FROM items_item i LEFT JOIN items_itemchange c "
        "ON c.item_id = i.id AND c.event = 'item.created' GROUP BY i.name"
    )
    deadline = time.monotonic() + RECOVERY_BOUND * 3
    while True:
        found = rows(database_url, query)
        pending = {int(row[0]) for row in found}
        changes = {row[1]: int(row[2]) for row in found}
        if pending == {0} and all(changes.get(n) == 1 for n in names):
            return time.monotonic()
        assert time.monotonic() < deadline, (
            f"after {RECOVERY_BOUND * 3} s, {sum(changes.get(n) != 1 for n in names)} "
            f"writes had no task recorded, {pending} waiting in the outbox"
        )
        time.sleep(0.5)


def descendants(pid: int) -> list[int]:
    """The process's children, their children, and so on."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [n for child in map(int, children) for n in (child, *descendants(child))]


@pytest.mark.parametrize("combination", params([production("gunicorn-uvicorn")]))
def test_an_instance_lost_with_its_host_costs_at_most_its_request_in_flight(
    combination, generated, redis_database, postgres_url, tmp_path
):
    """Two instances behind Nginx, one of them SIGKILLed whole (its host is lost):
    Nginx sends every later request to the other; only a write the lost one held
    may fail (Nginx does not send a POST twice), never a read; once it is back,
    it serves again."""
    project = generated(combination)
    database_url = create_database(postgres_url, "faults_host")
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_database(),
        "WEB_CONCURRENCY": "1",
    }
    with ExitStack() as cleanup:
        (lost, _), nginx = serve_instances(cleanup, project, tmp_path, 2, **env)
        with Load(nginx.port, token=nginx.token) as load:
            time.sleep(3)
            down = time.monotonic()
            for pid in [*descendants(lost.process.pid), lost.process.pid]:
                os.kill(pid, signal.SIGKILL)
            lost.process.wait(timeout=10)
            time.sleep(OUTAGE)
            lost.start()
            up = time.monotonic()
            time.sleep(3)
        during = load.between(down, up)
        print(
            f"\nAn instance lost for {up - down:.1f} s: {len(failures(during))} of "
            f"{len(during)} answers failed; {len(load.answers)} requests in all"
        )
        # One client, one request at a time: at most one was in flight on it, a
        # write, which Nginx answers as a gateway error (502; 503 while it counts
        # both instances failed for an instant) rather than send it twice.
        failed = [(a.method, a.status) for a in failures(load.answers)]
        assert failed in ([], [("POST", 502)], [("POST", 503)]), failed
        assert [a for a in during if a.ok], "nothing was served during the loss"
        acknowledged_writes_kept_once(load, database_url)
        # Back, it serves its share again: its counts start from its restart.
        metrics = read_text(f"http://127.0.0.1:{lost.port}/metrics")
        assert sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("django_http_requests_total{") and 'status="201"' in line
        ), "the instance, back, was sent no write"


def read_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def read_json(url: str) -> dict:
    return json.loads(read_text(url))


def sample(metrics: str, name: str, labels: str) -> float:
    """The value of one sample of Prometheus's text format, 0 if absent."""
    prefix = f"{name}{{{labels}}} "
    found = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(found[0].removeprefix(prefix)) if found else 0.0
