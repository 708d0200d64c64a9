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

So each request gets its own thread as before, but it starts only when sync
code first runs (the async ORM, sync_to_async), and the response is closed in
that thread only when it exists; otherwise in the loop, where request_finished
finds no connection to close. Any other synchronous receiver (a project's or a
package's) makes the handler fall back to Django's behaviour for that signal,
and core.checks reports it (core.W005).

The handle() method follows Django 6.1's ASGIHandler.handle line for line but
for those two places; the version is pinned in pyproject.toml, and the tests
(tests/test_handler.py) count threads and hops so that an upgrade that changes
the handler shows up there.
"""

import asyncio
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


class RequestThread(ThreadPoolExecutor):
    """The one thread of a request's sync code, started only if it is used."""

    used = False

    def __init__(self):
        super().__init__(max_workers=1, thread_name_prefix="request")

    def submit(self, fn, /, *args, **kwargs):
        self.used = True
        return super().submit(fn, *args, **kwargs)


class ASGIHandler(asgi.ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(
                f"Django can only handle ASGI/HTTP connections, not {scope['type']}."
            )
        thread = RequestThread()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send, thread)
        finally:
            # Not joined: nothing waits for it, and joining would block the loop.
            thread.shutdown(wait=False)

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

            class RequestProcessed(Exception):
                pass

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
