"""Django's ASGI handler without the thread round trips it makes on every request.

Stock Django leaves the event loop twice per request even when the request runs
no synchronous code at all: it sends request_started through sync_to_async and
closes the response (which sends request_finished) through sync_to_async. Its
per-request ThreadSensitiveContext starts a new thread for the first of these
hops, and a second thread to join the first when the request ends. On a light
request those two threads and two hops cost more CPU than everything else.

The synchronous receivers Django itself connects there are these:
  - request_started: close_old_connections and reset_queries act on the database
    connections of the request's thread, where the async ORM runs its queries.
    That thread is new for every request, so they have nothing to act on: the
    stock handler pays a thread to run two loops over nothing.
  - request_finished: close_old_connections closes (or returns to the pool) the
    connections the request's thread opened, and must run in that thread;
    close_caches and reset_urlconf only touch per-context state and do no I/O.

So each request still gets a thread of its own for its sync code, but one lent
from a pool of kept threads, and only once sync code first runs (the async ORM,
sync_to_async); request_started's receivers run there just before. A process
starts at most REQUEST_THREADS of them: beyond, a request's sync code waits for
one that another request gives back. A streaming response (an event stream, an
export) gives its thread back, with the connections it opened, before its body
is sent: a stream lasts up to an hour, and REQUEST_THREADS authenticated streams
on SQLite would otherwise hold every thread. What the body runs later takes a
thread again, as the request's first sync code did. The response is closed in
the request's thread only if it holds one then; otherwise in the loop, where
request_finished finds no connection to close. Any other synchronous
receiver (a project's or a package's) makes the handler fall back to Django's
behaviour for that signal, and core.checks reports it (core.W005).

A stream also holds no more than it needs to send its body: Django keeps the
request (its META, headers and resolver match), the response's headers and
their encoded copy until the response ends, 6.5 KiB of each idle event stream's
28 (tracemalloc, tests/bench of the platform template). The handler lets go of
the request once it has the response, and sends a streaming response's headers
without keeping either.

The handle() method follows Django 6.1's ASGIHandler.handle line for line but
for those places and one more: once the response is sent, Django ends the task
group that listens for the client's disconnect by raising an exception in it;
this handler cancels the listener instead. Where asyncio's TaskGroup keeps the
exception group it raises in a reference cycle (Python 3.13.0, CPython
gh-124958, fixed in later releases), that exception's traceback holds every
frame of the request, and with them its request, response and context, until
the garbage collector finds them: about 55 objects per light request, whose
collection took a fifth of a tiny JSON request's CPU.

Django also answers any exception, and logs any answer of 400 or more, in a
thread of its pool: a 404 that the service's own JSON handler answers is
answered in the event loop (_get_response_async), and log_response, which finds
every answer logged already by the access line, is called there
(get_response_async). Measured in one process: 620-700 µs of CPU for a
404 with its two thread hops (and 136 objects left for the garbage collector),
200-250 µs without them, about what /healthz takes.

The Django version is pinned in pyproject.toml, and the tests
(tests/test_handler.py) count threads, hops and the garbage a request leaves,
so that an upgrade that changes the handler shows up there.
"""

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import aclosing, closing, suppress
from functools import partial

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers import asgi
from django.core.handlers.base import reset_urlconf
from django.core.handlers.exception import response_for_exception
from django.db import close_old_connections, connections, reset_queries
from django.http import Http404, HttpRequest
from django.http.response import ResponseHeaders
from django.urls import get_resolver, get_urlconf, set_script_prefix, set_urlconf
from django.utils.log import log_response

from core import metrics, tracing

# Django's own receivers that act on the request's thread (see above).
STARTED_IN_REQUEST_THREAD = frozenset({close_old_connections, reset_queries})
# Django's own receivers that may run in whichever thread closes the response.
FINISHED_ANYWHERE = frozenset({close_old_connections, close_caches, reset_urlconf})


def receivers(signal, sender) -> tuple[list, list]:
    """The live (sync, async) receivers, as Signal.send and asend find them."""
    return signal._live_receivers(sender)


def _request_started_in_thread() -> None:
    # What request_started's receivers would have done in this thread before the
    # request's first query: connections an earlier request left open
    # (CONN_MAX_AGE > 0) are checked, or closed when too old or broken.
    reset_queries()
    close_old_connections()


class Worker(ThreadPoolExecutor):
    """One kept thread: it runs the sync code of one request at a time."""

    def __init__(self):
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.served = False  # by an earlier request
        _WORKERS.add(self)


# Every Worker of the process, for close_connections().
_WORKERS: "weakref.WeakSet[Worker]" = weakref.WeakSet()
# How long close_connections() waits for a thread still busy with a request.
CLOSE_TIMEOUT = 10.0


def close_connections() -> None:
    """Closes the database connections the kept request threads hold, each in
    its own thread (SQLite's stay open between requests: DATABASE_CONN_MAX_AGE).
    Lifespan shutdown calls it, so that the last connection checkpoints SQLite's
    WAL; it blocks until each thread has done so."""
    for worker in list(_WORKERS):
        # A request still running at shutdown keeps its thread: the process ends
        # anyway, and SQLite recovers from the WAL on the next open.
        with suppress(TimeoutError):
            worker.submit(connections.close_all).result(timeout=CLOSE_TIMEOUT)


class RequestThread(Executor):
    """One request's thread: the executor of its ThreadSensitiveContext. It takes
    a Worker when the request first runs sync code; when the process already has
    its most, that code waits (in the loop, holding nothing) for a Worker another
    request gives back."""

    def __init__(self, threads: "RequestThreads"):
        self.threads = threads
        self.worker: Worker | None = None
        self.waiting: list[tuple[Future, Callable, tuple, dict]] = []

    @property
    def used(self) -> bool:
        return self.worker is not None

    def submit(self, fn, /, *args, **kwargs) -> Future:
        # Already queued (a second sync call of the same request, gathered with
        # the first): it waits for the same Worker.
        if self.worker is None and (self.waiting or not self.threads.take(self)):
            future = Future()
            self.waiting.append((future, fn, args, kwargs))
            return future
        return self.worker.submit(fn, *args, **kwargs)

    def start(self, worker: Worker) -> None:
        """Runs the request's sync code on `worker`, from its first call on."""
        self.worker = worker
        if worker.served:
            worker.submit(_request_started_in_thread)
        worker.served = True
        for future, fn, args, kwargs in self.waiting:
            # False: cancelled while it waited (the request was).
            if future.set_running_or_notify_cancel():
                _copy_outcome(worker.submit(fn, *args, **kwargs), future)
        self.waiting = []


def _copy_outcome(source: Future, target: Future) -> None:
    # concurrent.futures has no public way to chain two futures (asyncio's
    # _chain_future is private), and this is all that is needed of one.
    def copy(done: Future) -> None:
        if done.exception() is not None:
            target.set_exception(done.exception())
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


class RequestThreads:
    """Lends each request a thread of its own, at most `limit` at once in the
    process (REQUEST_THREADS), as a threaded WSGI server bounds its threads: a
    flood of requests that run sync code queues instead of starting a thread
    each. Threads are kept for later requests. All of it runs in the event loop,
    so plain lists and counts are exact."""

    def __init__(self, limit: int):
        self.limit = limit
        self.started = 0
        self.idle: list[Worker] = []
        self.queue: deque[RequestThread] = deque()

    def lend(self) -> RequestThread:
        return RequestThread(self)

    def take(self, thread: RequestThread) -> bool:
        """Starts `thread` on a Worker if one is free or may be started; else
        queues it and returns False."""
        if self.idle:
            thread.start(self.idle.pop())
        elif self.started < self.limit:
            self.started += 1
            thread.start(Worker())
        else:
            self.queue.append(thread)
            metrics.REQUEST_THREAD_WAITS.inc()
            return False
        return True

    async def give_back_early(self, thread: RequestThread) -> None:
        """Gives `thread`'s Worker back before its request ends, once what
        request_finished would do there is done: the connections its sync code
        opened are closed, or go back to their pool."""
        await asyncio.wrap_future(thread.worker.submit(close_old_connections))
        self.give_back(thread)

    def give_back(self, thread: RequestThread) -> None:
        if thread.worker is None:
            # A request that ended while it waited (cancelled): nothing to give.
            if thread in self.queue:
                self.queue.remove(thread)
            return
        worker, thread.worker = thread.worker, None
        if self.queue:
            self.queue.popleft().start(worker)
        else:
            self.idle.append(worker)


class ASGIHandler(asgi.ASGIHandler):
    def __init__(self):
        super().__init__()
        self.threads = RequestThreads(limit=settings.REQUEST_THREADS)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(
                f"Django can only handle ASGI/HTTP connections, not {scope['type']}."
            )
        thread = self.threads.lend()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send, thread)
        finally:
            self.threads.give_back(thread)

    async def get_response_async(self, request):
        # Django's, but log_response runs here, in the loop, where Django hops
        # to a thread of its pool for every answer of 400 or more (an unknown
        # path, a missing token, a rate limit: they come by the thousand). The
        # access line of core.middleware has logged it already, so it returns
        # at once; anything else it logs goes to stdout from the loop, as every
        # other line does (config/logging.json).
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        # Django's closer holds the request for the response's life; this one
        # only while something else does (handle() lets go of it once it has
        # the response; a stream's body may keep it).
        response._resource_closers.append(partial(_close, weakref.ref(request)))
        if response.status_code >= 400:
            log_response(
                "%s: %s",
                response.reason_phrase,
                request.path,
                response=response,
                request=request,
            )
        return response

    async def send_response(self, response, send):
        """Django's, for every response it sends (the ones it refuses a request
        with before its middleware included), with two changes: the request's
        trace header is added to the encoded headers (tracing.answered()), not
        to the response, whose validation and second encoding of it were a
        tenth of what tracing added to a request (tests/bench/notes.md); and a
        stream keeps neither list of headers once sent (nothing reads them after
        the middleware has run): 2.5 KiB of each idle event stream, for up to an
        hour."""
        headers = encoded_headers(response)
        if tracing.ENABLED and (header := tracing.answered(response.status_code)):
            headers.append(header)
        start = {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": headers,
        }
        if not response.streaming:
            await send(start)
            for chunk, last in self.chunk_bytes(response.content):
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": not last}
                )
            return
        response.headers = ResponseHeaders({})
        await send(start)
        del start, headers
        async with aclosing(aiter(response)) as content:
            async for part in content:
                for chunk, _ in self.chunk_bytes(part):
                    await send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
        await send({"type": "http.response.body"})

    async def _get_response_async(self, request):
        try:
            return await super()._get_response_async(request)
        except Http404 as exc:
            # Django turns every exception into its answer in a thread of its
            # pool, as a project's handler may render a template or query the
            # database; core.api's 404 does neither.
            if not _not_found_in_loop():
                raise
            return response_for_exception(request, exc)

    async def handle(self, scope, receive, send, thread: RequestThread):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return

        with closing(body_file):
            set_script_prefix(asgi.get_script_prefix(scope))
            await self.request_started(scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                body_file.close()
                await self.send_response(error_response, send)
                await self.close_response(error_response, thread)
                return

            response = None
            try:
                try:
                    async with asyncio.TaskGroup() as tg:
                        listener = tg.create_task(self.listen_for_disconnect(receive))
                        response = await self.run_get_response(request)
                        # Not held while the response is sent: a stream lasts up
                        # to an hour, and its request, with its headers and
                        # resolver match, is 4 KiB (its closer: get_response_async).
                        request = None
                        if response.streaming and thread.used:
                            await self.threads.give_back_early(thread)
                        await self.send_response(response, send)
                        # Where Django raises an exception to end the group
                        # (the module's docstring says why not).
                        listener.cancel()
                except* RequestAborted:
                    pass
            except BaseExceptionGroup as exception_group:
                if len(exception_group.exceptions) == 1:
                    raise exception_group.exceptions[0] from None
                raise

            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                await self.close_response(response, thread)

    async def request_started(self, scope) -> None:
        signal, sender = signals.request_started, self.__class__
        sync_receivers, async_receivers = receivers(signal, sender)
        if any(r not in STARTED_IN_REQUEST_THREAD for r in sync_receivers):
            await signal.asend(sender=sender, scope=scope)
        elif async_receivers:
            await asyncio.gather(
                *(
                    receiver(signal=signal, sender=sender, scope=scope)
                    for receiver in async_receivers
                )
            )

    async def close_response(self, response, thread: RequestThread) -> None:
        sync_receivers, async_receivers = receivers(
            signals.request_finished, self.__class__
        )
        if (
            thread.used
            or async_receivers
            or any(r not in FINISHED_ANYWHERE for r in sync_receivers)
        ):
            await sync_to_async(response.close)()
        else:
            response.close()


def _close(request_ref: "weakref.ref[HttpRequest]") -> None:
    request = request_ref()
    if request is not None:
        request.close()


def encoded_headers(response) -> list[tuple[bytes, bytes]]:
    """Django's send_response's headers (its header case kept), cookies included:
    an ASGI response start's. Also items.consumers' answer to a handshake."""
    headers = []
    for header, value in response.items():
        if isinstance(header, str):
            header = header.encode("ascii")
        if isinstance(value, str):
            value = value.encode("latin1")
        headers.append((bytes(header), bytes(value)))
    for cookie in response.cookies.values():
        headers.append((b"Set-Cookie", cookie.OutputString().encode("ascii")))
    return headers


def _not_found_in_loop() -> bool:
    """Whether a 404 is answered by core.api.not_found (JSON, no I/O), not by a
    handler404 of the project's own or DEBUG's technical page."""
    # Imported once Django is set up: core.api needs the apps.
    from core.api import not_found

    resolver = get_resolver(get_urlconf())
    return not settings.DEBUG and resolver.resolve_error_handler(404) is not_found


def get_asgi_application() -> ASGIHandler:
    """django.core.asgi.get_asgi_application, with this handler."""
    django.setup(set_prefix=False)
    return ASGIHandler()
