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
sync_to_async); request_started's receivers run there just before, and the
response is closed there only if the request used it; otherwise in the loop,
where request_finished finds no connection to close. Any other synchronous
receiver (a project's or a package's) makes the handler fall back to Django's
behaviour for that signal, and core.checks reports it (core.W005).

The handle() method follows Django 6.1's ASGIHandler.handle line for line but
for those two places (and its sentinel exception class, defined once here); the
version is pinned in pyproject.toml, and the tests (tests/test_handler.py) count
threads and hops so that an upgrade that changes the handler shows up there.
"""

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers import asgi
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, reset_queries
from django.urls import set_script_prefix

# Django's own receivers that act on the request's thread (see above).
STARTED_IN_REQUEST_THREAD = frozenset({close_old_connections, reset_queries})
# Django's own receivers that may run in whichever thread closes the response.
FINISHED_ANYWHERE = frozenset({close_old_connections, close_caches, reset_urlconf})


def receivers(signal, sender) -> tuple[list, list]:
    """The live (sync, async) receivers, as Signal.send and asend find them."""
    return signal._live_receivers(sender)


def _after_request_started(call, /, *args, **kwargs):
    # What request_started's receivers would have done in this thread before the
    # request's first query: connections an earlier request left open
    # (CONN_MAX_AGE > 0) are checked, or closed when too old or broken.
    reset_queries()
    close_old_connections()
    return call(*args, **kwargs)


class RequestProcessed(Exception):
    """Ends handle()'s task group once the response is sent. Django defines this
    class anew inside handle() on every request; once is enough."""


class RequestThread(ThreadPoolExecutor):
    """The thread of one request's sync code at a time, started when a request
    first uses it and kept for later ones, as a threaded WSGI server keeps its
    threads."""

    def __init__(self):
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.used = False  # by the request it is lent to
        self.served = False  # by any request

    def submit(self, fn, /, *args, **kwargs):
        if not self.used:
            self.used = True
            if self.served:
                fn = functools.partial(_after_request_started, fn)
            self.served = True
        return super().submit(fn, *args, **kwargs)


class RequestThreads:
    """Lends each request a thread of its own; keeps up to `keep` for later."""

    def __init__(self, keep: int):
        self.keep = keep
        self.idle: list[RequestThread] = []

    def lend(self) -> RequestThread:
        thread = self.idle.pop() if self.idle else RequestThread()
        thread.used = False
        return thread

    def give_back(self, thread: RequestThread) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(thread)
        else:
            # Not joined: nothing waits for it, and joining would block the loop.
            thread.shutdown(wait=False)


class ASGIHandler(asgi.ASGIHandler):
    # Threads kept beyond this many requests running sync code at once end.
    threads = RequestThreads(keep=64)

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
                        tg.create_task(self.listen_for_disconnect(receive))
                        response = await self.run_get_response(request)
                        await self.send_response(response, send)
                        raise RequestProcessed
                except* (RequestProcessed, RequestAborted):
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


def get_asgi_application() -> ASGIHandler:
    """django.core.asgi.get_asgi_application, with this handler."""
    django.setup(set_prefix=False)
    return ASGIHandler()
