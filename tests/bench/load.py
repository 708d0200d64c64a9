"""Load generators, all aimed at 127.0.0.1 and bounded in time: wrk for HTTP,
asyncio clients for WebSockets and Server-Sent Events."""

import asyncio
import json
import multiprocessing
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import closing, suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import websockets

from bench.deploy import cpu_by_process

# The Origin the WebSocket clients show (the bench's service allows 127.0.0.1).
ORIGIN = "http://127.0.0.1"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class Measurement:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_cores: float  # CPU time of the server's processes per second of load
    # The two busiest processes' share (cores): a worker that holds most of the
    # keep-alive connections shows here.
    busiest: list = field(default_factory=list)
    by_process: dict = field(default_factory=dict)  # pid: cores
    extra: dict = field(default_factory=dict)

    @property
    def cpu_us_per_request(self) -> float | None:
        if not self.requests:
            return None
        return self.cpu_cores * 1e6 / self.requests_per_second


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit(
            "bench: wrk not found: apt-get install wrk (tests/bench.sh does)"
        )
    return wrk


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * UNITS[unit]


def parse_wrk(output: str) -> dict:
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.M))
    socket_errors = re.search(
        r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not (rate and requests and latency):
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    errors = sum(map(int, socket_errors.groups())) if socket_errors else 0
    return {
        "requests_per_second": float(rate.group(1)),
        "requests": int(requests.group(1)),
        "p50_ms": _milliseconds(latency["50"]),
        "p99_ms": _milliseconds(latency["99"]),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


# The tiny JSON (bench_urls.tiny): what /healthz answers, on a path Nginx serves.
TINY = "/bench/tiny"


def settle(base_url: str, seconds: float = 60) -> None:
    """Until the server answers a fresh request: a server that queues connections
    (Gunicorn's sync workers) first serves those the warm-up left behind."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}{TINY}", timeout=seconds):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# wrk sends a GET of the URL unless a script says otherwise: this one sends
# `method` with each body in turn, as JSON. Each wrk thread runs its own copy.
BODY_SCRIPT = """local bodies = {{{bodies}}}
local sent = 0
wrk.headers["Content-Type"] = "application/json"
function request()
  sent = sent % #bodies + 1
  return wrk.format("{method}", nil, nil, bodies[sent])
end
"""


def _lua_string(text: str) -> str:
    """`text` as a Lua long string, which takes it verbatim."""
    assert "]==]" not in text
    return f"[==[{text}]==]"


def wrk(
    base_url: str,
    path: str,
    connections: int,
    seconds: float,
    warmup: float,
    pids,
    method: str = "GET",
    bodies: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
):
    """A warm-up run, then the measured one; CPU is counted over the measured run.
    With `bodies`, each request sends the next of them (JSON) with `method`; every
    request carries `headers`."""
    command = [require_wrk(), "--threads", "2", "--timeout", "10s", "--latency"]
    for name, value in (headers or {}).items():
        # wrk.format() in the body script sends these too (wrk.headers).
        command += ["--header", f"{name}: {value}"]
    if method != "GET" and not bodies:
        raise ValueError(f"{method} needs bodies")
    url = base_url + path
    # The script is written for this cell and deleted with it.
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-") as script:
        if bodies:
            lua_bodies = ", ".join(map(_lua_string, bodies))
            script.write(BODY_SCRIPT.format(method=method, bodies=lua_bodies))
            script.flush()
            command += ["--script", script.name]
        if warmup:
            subprocess.run(
                [*command, f"-c{connections}", f"-d{warmup}s", url],
                check=True,
                capture_output=True,
                timeout=warmup + 60,
            )
            settle(base_url)
        before, started = cpu_by_process(pids()), time.monotonic()
        result = subprocess.run(
            [*command, f"-c{connections}", f"-d{seconds}s", url],
            check=True,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        elapsed = time.monotonic() - started
        after = cpu_by_process(pids())
    by_process = {pid: (after[pid] - before.get(pid, 0.0)) / elapsed for pid in after}
    used = sorted(by_process.values(), reverse=True)
    return Measurement(
        cpu_cores=sum(used),
        busiest=used[:2],
        by_process=by_process,
        **parse_wrk(result.stdout),
    )


async def _open_many(open_one, count: int, errors: tuple, concurrency: int = 200):
    """Awaits `open_one()` `count` times, `concurrency` at once; returns what it
    opened, and how many failed with one of `errors` by reason."""
    semaphore = asyncio.Semaphore(concurrency)
    failed = Counter()

    async def guarded():
        async with semaphore:
            try:
                return await open_one()
            except errors as exc:
                failed[f"{type(exc).__name__}: {exc}"[:120]] += 1
                return None

    opened = await asyncio.gather(*(guarded() for _ in range(count)))
    return [c for c in opened if c is not None], dict(failed)


# The event the broadcast scenario publishes (POST /api/items), by the id of the
# item it carries.
CREATED = "item.created"


class WebSocket:
    """A subscriber on a WebSocket (/ws/items): when each item.created came.
    It sends no pings, as browsers do not; the server pings it."""

    def __init__(self, connection):
        self.connection = connection
        self.got: dict[int, float] = {}
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str):
        connection = await websockets.connect(
            url, origin=ORIGIN, compression=None, open_timeout=30, ping_interval=None
        )
        await asyncio.wait_for(connection.recv(), 30)  # its welcome
        return cls(connection)

    async def _read(self) -> None:
        with suppress(websockets.ConnectionClosed):
            async for text in self.connection:
                now = time.time()
                message = json.loads(text)
                if message.get("type") == "event" and message.get("event") == CREATED:
                    self.got.setdefault(message["data"]["id"], now)

    @property
    def open(self) -> bool:
        return not self.reader.done()

    async def close(self) -> None:
        await self.connection.close()


class Stream:
    """A subscriber on an event stream (GET /api/items/events) on a raw socket,
    what a browser's EventSource holds: when each item.created came. Open once
    its first chunk (`retry:`) came."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.writer = writer
        self.got: dict[int, float] = {}
        self.reader = asyncio.ensure_future(self._read(reader))

    @classmethod
    async def connect(cls, url: str):
        port = urlsplit(url).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/items/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"retry:"), 30)
        return cls(reader, writer)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        # A stream that ended closes its socket: it is no longer open, nor held
        # by the worker.
        with suppress(OSError), closing(self.writer):
            while chunk := await reader.read(65536):
                now = time.time()
                # Events end with a blank line; the chunked encoding's size lines
                # between them have no "name: value" field, and are skipped.
                *events, buffer = (buffer + chunk).split(b"\n\n")
                for event in events:
                    fields = dict(
                        line.split(b": ", 1)
                        for line in event.split(b"\n")
                        if b": " in line
                    )
                    if fields.get(b"event") == CREATED.encode():
                        self.got.setdefault(json.loads(fields[b"data"])["id"], now)
                if buffer.endswith(b"\r\n0\r\n\r\n"):
                    # The response's last chunk: the stream ended (the service
                    # ends it when its channel layer fails).
                    return

    @property
    def open(self) -> bool:
        return not self.reader.done()

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError):
            await self.writer.wait_closed()


KINDS = {"websockets": WebSocket, "streams": Stream}
OPEN_ERRORS = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    websockets.WebSocketException,
)


def subscriber_process(kind: str, url: str, pipe) -> None:
    """The body of a Subscribers process: holds subscribers of `kind` (KINDS) to
    `url`, as `pipe` asks, until the pipe closes."""
    asyncio.run(_subscribe(KINDS[kind], url, pipe))


async def _subscribe(kind, url: str, pipe) -> None:
    loop = asyncio.get_running_loop()
    held = []
    while True:
        try:
            command, argument = await loop.run_in_executor(None, pipe.recv)
        except EOFError:
            return
        if command == "open":
            opened, failed = await _open_many(
                lambda: kind.connect(url), argument, OPEN_ERRORS
            )
            held += opened
            pipe.send(failed)
        elif command == "count":
            # Those closed since they opened are dropped: they would wait for
            # events in vain.
            held = [subscriber for subscriber in held if subscriber.open]
            pipe.send(len(held))
        elif command == "collect":
            pipe.send(await _arrivals(held, *argument))
        elif command == "close":
            await asyncio.gather(*(s.close() for s in held), return_exceptions=True)
            held = []
            pipe.send(None)


async def _arrivals(held: list, ids: list[int], seconds: float) -> dict:
    """When each subscriber got each of the events `ids`, once all have them all
    or after `seconds`: {id: [time, ...]}, the time of each subscriber that got it."""
    wanted = len(held) * len(ids)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sum(len(s.got.keys() & ids) for s in held) >= wanted:
            break
        await asyncio.sleep(0.2)
    return {i: [s.got[i] for s in held if i in s.got] for i in ids}


class Subscribers:
    """Subscribers of one kind (KINDS) spread over `processes` client processes of
    their own: one process cannot hold 20,000 sockets (the file-descriptor limit),
    nor read 10,000 events fast enough alone. Each process's clock is the same
    time.time()."""

    def __init__(self, kind: str, url: str, processes: int):
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=subscriber_process, args=(kind, url, theirs), daemon=True
            )
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)

    def _ask(self, commands: list) -> list:
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)
        return [pipe.recv() for pipe in self.pipes]

    def open(self, count: int) -> dict[str, int]:
        """Opens `count` more, shared among the processes; returns how many failed,
        by reason."""
        shares = [count // len(self.pipes)] * len(self.pipes)
        shares[0] += count - sum(shares)
        failed = Counter()
        for part in self._ask([("open", share) for share in shares]):
            failed.update(part)
        return dict(failed)

    def count(self) -> int:
        """How many are open; forgets those closed."""
        return sum(self._ask([("count", None)] * len(self.pipes)))

    def collect(self, ids: list[int], seconds: float) -> dict:
        """When each subscriber got each event (_arrivals), over all processes."""
        arrivals = {i: [] for i in ids}
        for part in self._ask([("collect", (ids, seconds))] * len(self.pipes)):
            for i, times in part.items():
                arrivals[i] += times
        return arrivals

    def close(self) -> None:
        self._ask([("close", None)] * len(self.pipes))

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for pipe in self.pipes:
            pipe.close()
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()


async def _read_events(port: int, client: int, ready: asyncio.Event, stop, seen: list):
    """One SSE client on a raw socket: records each bench event's delivery delay.
    Through Nginx it passes for a client of its own (X-Forwarded-For, which the
    bench's Nginx trusts from 127.0.0.1), as the per-client limits expect."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        "GET /api/items/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Forwarded-For: 10.0.{client // 250}.{client % 250 + 1}\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    buffer = b""
    try:
        while not stop.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            if b"retry:" in buffer:
                ready.set()
            *events, buffer = buffer.split(b"\n\n")
            now = time.time()
            for event in events:
                if b"event: bench" in event:
                    data = event.rsplit(b"data: ", 1)[-1]
                    seen.append(now - json.loads(data)["sent"])
    finally:
        writer.close()


async def sse_fan_out(port: int, clients: int, seconds: float, batch: int = 20):
    """`clients` event streams open at once; a publisher asks the service for
    `batch` events at a time for `seconds`. Returns delivered events per second,
    delivery delay percentiles, and events lost (published x clients - delivered)."""
    stop = asyncio.Event()
    seen: list[float] = []
    readies = [asyncio.Event() for _ in range(clients)]
    readers = [
        asyncio.ensure_future(_read_events(port, client, ready, stop, seen))
        for client, ready in enumerate(readies)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    publish = f"GET /bench/publish?count={batch} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    publish = publish.encode()
    published, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        writer.write(publish)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        await reader.readexactly(length)
        published += batch
    elapsed = time.monotonic() - started
    writer.close()
    await asyncio.sleep(1.0)  # the last events are still on their way
    stop.set()
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    delays = sorted(seen) or [0.0]
    return {
        "events_per_second": len(seen) / elapsed,
        "published": published,
        "delivered": len(seen),
        "lost": published * clients - len(seen),
        "p50_ms": statistics.median(delays) * 1e3,
        "p99_ms": delays[int(len(delays) * 0.99) - 1 if len(delays) > 1 else 0] * 1e3,
    }
