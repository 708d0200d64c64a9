"""An OTLP/HTTP trace receiver, the `receiver` fixture of conftest.py: for the
tests that check what the real processes export ({% if cookiecutter.tasks != "none" %}tests/test_tracing.py and
tests/test_tasks_tracing.py{% else %}tests/test_tracing.py{% endif %})."""

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Receiver(ThreadingHTTPServer):
    """What a collector's otlphttp receiver does with POST /v1/traces, keeping the
    spans with their resource attributes."""

    def __init__(self):
        self.spans: list[tuple[dict, Span]] = []
        self.content_types: list[str] = []
        super().__init__(("127.0.0.1", 0), ReceiverHandler)


class ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.content_types.append(self.headers["Content-Type"])
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {
                a.key: a.value.string_value for a in resource_spans.resource.attributes
            }
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend((resource, s) for s in scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):  # the test's output stays clean
        pass
