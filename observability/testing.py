"""An OTLP/HTTP receiver on loopback, for tests and benchmarks that check what was exported.

It decodes the real OTLP protobuf (``opentelemetry-proto``) that any process posts to
``http://127.0.0.1:<port>/v1/traces`` or ``/v1/metrics``, so a test can point worker processes
at it with ``OTEL_EXPORTER_OTLP_ENDPOINT`` and wait, with a bound, for the spans it expects.

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        ...
        async with asyncio.timeout(10):
            spans = await receiver.wait_for(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

__all__ = ["OtlpReceiver", "ReceivedSpan"]


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, with ids as hex and attributes as plain values."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]]
    status_code: int
    status_message: str
    service: str
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status_code != 2  # STATUS_CODE_ERROR


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class OtlpReceiver:
    """A threaded HTTP server taking OTLP protobuf posts; thread-safe, awaitable.

    ``grpc=True`` also serves OTLP over gRPC (``grpc_endpoint``, for
    ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``): the same requests, taken the same way.
    """

    def __init__(self, *, decode: bool = True, grpc: bool = False) -> None:
        """``decode=False`` only counts requests and bytes (a benchmark's cheap sink)."""
        self.decode = decode
        self._grpc: Any = _grpc_server(self) if grpc else None
        self.bytes_received = 0
        self.spans: list[ReceivedSpan] = []
        self.metric_names: set[str] = set()
        self.metric_points: list[tuple[str, dict[str, Any], float]] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with receiver._lock:
                    receiver.bytes_received += len(body)
                if not receiver.decode:
                    with receiver._lock:
                        receiver.requests += 1
                    reply: Any = trace_service_pb2.ExportTraceServiceResponse()
                elif self.path.endswith("/v1/traces"):
                    receiver._take_traces(body)
                    reply = trace_service_pb2.ExportTraceServiceResponse()
                elif self.path.endswith("/v1/metrics"):
                    receiver._take_metrics(body)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The base endpoint, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def grpc_endpoint(self) -> str:
        """The gRPC endpoint (``grpc=True`` only)."""
        if self._grpc is None:
            raise RuntimeError("this receiver was made without grpc=True")
        return f"http://127.0.0.1:{self._grpc[1]}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        if self._grpc is not None:
            self._grpc[0].start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc[0].stop(grace=None)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    async def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan]:
        """Wait until ``predicate(spans)`` holds; bound it with ``asyncio.timeout``."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        waiter = (loop, changed)
        with self._lock:
            self._waiters.append(waiter)
        try:
            while True:
                changed.clear()
                spans = self.snapshot()
                if predicate(spans):
                    return spans
                await changed.wait()
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, changed in waiters:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:
                pass  # that loop has closed

    def _take_traces(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=_attributes(span.attributes),
                            links=[
                                (
                                    link.trace_id.hex(),
                                    link.span_id.hex(),
                                    _attributes(link.attributes),
                                )
                                for link in span.links
                            ],
                            status_code=span.status.code,
                            status_message=span.status.message,
                            service=service,
                            events=[event.name for event in span.events],
                        )
                    )
        with self._lock:
            self.spans.extend(received)
            self.requests += 1
        self._notify()

    def _take_metrics(self, body: bytes) -> None:
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        request.ParseFromString(body)
        names: set[str] = set()
        points: list[tuple[str, dict[str, Any], float]] = []
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    names.add(metric.name)
                    data = metric.WhichOneof("data")
                    if data in ("sum", "gauge"):
                        for point in getattr(metric, data).data_points:
                            value = point.as_int if point.HasField("as_int") else point.as_double
                            points.append((metric.name, _attributes(point.attributes), value))
                    elif data == "histogram":
                        for point in metric.histogram.data_points:
                            points.append(
                                (metric.name, _attributes(point.attributes), float(point.count))
                            )
        with self._lock:
            self.metric_names |= names
            self.metric_points.extend(points)
            self.requests += 1
        self._notify()

    async def wait_for_metrics(self, *names: str) -> set[str]:
        """Wait until every metric in ``names`` has been received; bound it by the caller."""
        wanted = set(names)
        await self.wait_for(lambda _: wanted <= self.metric_names)
        return set(self.metric_names)


def _grpc_server(receiver: OtlpReceiver) -> tuple[Any, int]:
    """A gRPC server (not started) whose trace and metrics services hand each request's
    bytes to ``receiver``, and its port."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            receiver._take_traces(request.SerializeToString())
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            receiver._take_metrics(request.SerializeToString())
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    return server, port
