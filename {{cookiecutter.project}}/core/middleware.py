"""The request path: native async middleware only (see core.checks).

Django's stock security, clickjacking and common middleware are reused as they
are, except that their hooks run in the event loop: under ASGI, MiddlewareMixin
sends each hook through sync_to_async, a thread round trip per hook per request,
although these hooks only read settings and headers.
"""

import logging
import time

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security

from core import metrics, tracing
from core.context import REQUEST_ID, request_id_from

access_logger = logging.getLogger("core.access")


class AsyncMiddleware:
    """A middleware Django calls in the event loop, with no thread in between."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)


class RequestContextMiddleware(AsyncMiddleware):
    """Outermost: one request id per request, echoed back, and one access log line."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_from(request.headers.get("X-Request-ID"))
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        try:
            response = await self.get_response(request)
            response["X-Request-ID"] = request_id
            match = request.resolver_match
            if tracing.ENABLED:
                tracing.name_request(request.method, match.route if match else None)
            # For streaming responses this is the time until the headers are sent.
            access_logger.log(
                logging.ERROR if response.status_code >= 500 else logging.INFO,
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": match.route if match else None,
                    "status": response.status_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": request.META.get("REMOTE_ADDR"),
                },
            )
            # Django would log every 4xx/5xx response again, without the request
            # id, after the middleware returns (and in a thread): this line is that log.
            response._has_been_logged = True
            return response
        finally:
            REQUEST_ID.reset(token)


class MetricsMiddleware(AsyncMiddleware):
    """Counts and times every request by URL pattern, method and status, and counts
    the exceptions views raise; just inside RequestContextMiddleware, so that it
    sees the final status of every response."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        metrics.HTTP_IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            response = await self.get_response(request)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
        match = request.resolver_match
        route = match.route if match else metrics.UNMATCHED_ROUTE
        method = metrics.method_label(request.method)
        status = response.status_code
        metrics.request_counter(route, method, str(status)).inc()
        metrics.request_timer(route, method, f"{status // 100}xx").observe(
            time.perf_counter() - started
        )
        return response

    async def process_exception(self, request: HttpRequest, exception: Exception):
        # Django calls this for exceptions raised by the view; it still answers 500.
        metrics.HTTP_EXCEPTIONS.labels(type(exception).__name__).inc()


class InlineHooksMixin:
    """Run a MiddlewareMixin's process_request/process_response in the event loop.

    Only for hooks that do no I/O and do not block.
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    """Django's CSRF protection, for any view that a cookie authenticates (a
    session login a team adds). The API's views are exempt: only a bearer token
    authenticates them (core.api.ApiView)."""

    async def process_view(self, request, callback, callback_args, callback_kwargs):
        # Reads the request's cookie and headers only (CSRF_USE_SESSIONS is off).
        return super().process_view(request, callback, callback_args, callback_kwargs)
