"""Spans recorded as plain objects on the event loop, batched and exported on one thread.

Why not the SDK's ``Tracer.start_span``: per span it builds a ``Context``, asks the sampler,
validates every attribute into ``BoundedAttributes``, takes locks and wraps the span for the
batch processor (~38 µs on the event-loop thread), and its OTLP exporter then builds a
protobuf object tree per span (~70 µs on the exporter thread, holding the GIL the loop
wants). triggerbus's own spans have few, known-good attributes, so :class:`RecordedSpan`
keeps them as a dict and ids as ints; the export thread encodes them straight to OTLP
protobuf bytes (:mod:`._otlp`) and hands those to the SDK exporter's HTTP client (its
endpoint, headers, compression, timeout and retries, read from ``OTEL_*`` as before). Other
exporters (console, gRPC) get SDK ``ReadableSpan`` copies built on the export thread.

A :class:`RecordedSpan` is an ``opentelemetry.trace.Span``: made current, a user's own spans
nest under it, and ``set_attribute``/``add_event``/``record_exception`` on it are recorded
(with the SDK's validation and ``OTEL_*`` span limits, which only such calls need).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from triggerbus.observability._otlp import SpanEncoder
from triggerbus.observability._records import to_record

if TYPE_CHECKING:
    from triggerbus.observability._span_export import ExportProcess

log = structlog.get_logger()
T = TypeVar("T")


class RecordedSpan(trace.Span):
    """One span: ids as ints, attributes as the dict it was started with.

    Not recording (``sink`` is None) when the sampler dropped it: it still has ids, so the
    context propagates, as the SDK's non-recording spans do.
    """

    __slots__ = (
        "_context", "_sink", "attributes", "dropped_attributes", "dropped_events",
        "dropped_links", "end_ns", "events", "flags", "kind", "links", "name", "parent_id",
        "parent_remote", "span_id", "start_ns", "status_code", "status_message", "trace_id",
        "trace_state",
    )  # fmt: skip

    def __init__(
        self,
        sink: SpanRecorder | None,
        name: str,
        kind: SpanKind,
        trace_id: int,
        span_id: int,
        flags: int,
        trace_state: str,
        parent_id: int,
        parent_remote: bool,
        attributes: dict[str, Any],
        links: Sequence[Link],
        start_ns: int,
    ) -> None:
        self._sink = sink
        self._context: SpanContext | None = None
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.trace_state = trace_state
        self.parent_id = parent_id
        self.parent_remote = parent_remote
        self.attributes = attributes
        self.dropped_attributes = 0
        self.links = links
        self.dropped_links = 0
        if links and sink is not None:
            self.links, self.dropped_links = newest(links, sink.limits.max_links)
        self.events: list[tuple[str, int, Mapping[str, Any]]] | None = None
        self.dropped_events = 0
        self.status_code = 0
        self.status_message: str | None = None
        self.start_ns = start_ns
        self.end_ns = 0

    # --- the opentelemetry.trace.Span API ------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            state = self.trace_state
            context = self._context = SpanContext(
                self.trace_id,
                self.span_id,
                is_remote=False,
                trace_flags=TraceFlags(self.flags),
                trace_state=TraceState.from_header([state]) if state else None,
            )
        return context

    def is_recording(self) -> bool:
        return self._sink is not None and not self.end_ns

    def end(self, end_time: int | None = None) -> None:
        if self.end_ns:
            return
        self.end_ns = end_time if end_time is not None else time.time_ns()
        if self._sink is not None:
            self._sink.append(self)

    def set_attribute(self, key: str, value: Any) -> None:
        sink = self._sink
        if sink is None or self.end_ns:
            return
        # The SDK's validation (it warns about and drops an invalid value).
        cleaned = BoundedAttributes(
            None, {key: value}, max_value_len=sink.limits.max_attribute_length
        ).get(key)
        if cleaned is None:
            return
        attributes = self.attributes
        if key not in attributes and len(attributes) >= _limit(sink.limits.max_span_attributes):
            self.dropped_attributes += 1
            return
        attributes[key] = cleaned

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        sink = self._sink
        if sink is None or self.end_ns:
            return
        cleaned = BoundedAttributes(
            sink.limits.max_event_attributes,
            attributes,
            max_value_len=sink.limits.max_attribute_length,
        )
        events = self.events
        if events is None:
            events = self.events = []
        events.append((name, timestamp if timestamp is not None else time.time_ns(), cleaned))
        if len(events) > _limit(sink.limits.max_events):
            events.pop(0)
            self.dropped_events += 1

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self._sink is None or self.end_ns or not context.is_valid:
            return
        self.links = [*self.links, Link(context, attributes)]

    def update_name(self, name: str) -> None:
        if self._sink is not None and not self.end_ns:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._sink is None or self.end_ns or self.status_code == StatusCode.OK.value:
            return  # as the SDK: OK is final
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is StatusCode.UNSET:
            return
        self.status_code = status.status_code.value
        self.status_message = status.description

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """An ``exception`` event with the attributes the SDK gives it."""
        if self._sink is None:
            return
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        fields: dict[str, Any] = {
            "exception.type": (
                f"{module}.{qualname}" if module and module != "builtins" else qualname
            ),
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            fields.update(attributes)
        self.add_event("exception", fields, timestamp)

    # --- for exporters other than OTLP/HTTP ----------------------------------------------------

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        """The SDK's view of this span, for an SDK exporter."""
        parent = (
            SpanContext(self.trace_id, self.parent_id, is_remote=self.parent_remote)
            if self.parent_id
            else None
        )
        # Bounded containers carry the dropped counts the SDK's exporters read.
        attributes = BoundedAttributes(None, self.attributes, immutable=False)
        attributes.dropped = self.dropped_attributes
        events = BoundedList.from_seq(None, [Event(n, a, t) for n, t, a in self.events or ()])
        events.dropped = self.dropped_events
        links = BoundedList.from_seq(None, self.links)
        links.dropped = self.dropped_links
        return ReadableSpan(
            name=self.name,
            context=self.get_span_context(),
            parent=parent,
            resource=resource,
            attributes=attributes,
            events=events,
            links=links,
            kind=self.kind,
            status=Status(StatusCode(self.status_code), self.status_message),
            start_time=self.start_ns,
            end_time=self.end_ns,
            instrumentation_scope=scope,
        )


def newest(items: Sequence[T], limit: int) -> tuple[list[T], int]:
    """The newest ``limit`` of ``items`` and how many were dropped, as the SDK's
    ``BoundedList`` keeps links (``OTEL_SPAN_LINK_COUNT_LIMIT``)."""
    dropped = max(0, len(items) - limit)
    return list(items)[dropped:], dropped


def _limit(value: int | None) -> float:
    return float("inf") if value is None else value


class SpanRecorder:
    """The batch span processor for :class:`RecordedSpan`: a queue and one export thread.

    The same ``OTEL_BSP_*`` semantics as the SDK's ``BatchSpanProcessor``: a span that finds
    the queue full is dropped; a full batch wakes the thread, otherwise it exports every
    ``delay`` seconds; ``force_flush`` and ``shutdown`` export what is queued.
    """

    def __init__(
        self,
        exporters: Sequence[SpanExporter] | Callable[[], Sequence[SpanExporter]],
        *,
        resource: Resource,
        scope: InstrumentationScope,
        max_queue: int,
        max_batch: int,
        delay: float,
        environ: Mapping[str, str] | None = None,
        shutdown_budget: float = 30.0,
    ) -> None:
        """``shutdown_budget`` (seconds, ``OTEL_BSP_EXPORT_TIMEOUT``) bounds what a shutdown
        spends exporting what is queued: past it the rest is dropped and counted.

        ``environ`` (the ``OTEL_*`` settings the exporters were built from), when given and
        every exporter is OTLP/HTTP, moves the export to a child process (``_span_export``).

        ``exporters`` may be a function that builds them, for OTLP/HTTP exporters only: then
        they are built only if this process has to export itself (no child). Why: the OTLP
        exporter imports requests, urllib3, protobuf and more, about 9,000 long-lived objects
        that every full garbage collection of the traced process then walks; measured with
        100 executions in flight, that was a third of a millisecond per fan-out execution.
        """
        self.limits = SpanLimits()
        self.resource = resource
        self.scope = scope
        self.dropped = 0
        self._build_exporters: Callable[[], Sequence[SpanExporter]] | None = None
        self._exporters: list[SpanExporter] = []
        self._clients: list[Any] = []
        if callable(exporters):
            self._build_exporters = exporters
        else:
            self._set_exporters(exporters)
        self._encoder = SpanEncoder(
            resource.attributes,
            scope.name,
            scope.version,
            resource_schema_url=resource.schema_url or "",
            scope_schema_url=scope.schema_url or "",
        )
        # With only OTLP/HTTP exporters, a span becomes its record as it ends, on the thread
        # that ends it: converting on the export thread took the GIL from the event loop at
        # each of its socket writes, and the loop then waited to get it back.
        self._as_records = self._build_exporters is not None or (
            bool(self._clients) and all(self._clients)
        )
        self._process: ExportProcess | None = None
        if environ is not None and self._as_records:
            self._process = _start_process(environ, resource, scope)
        if self._process is None:
            self._ensure_exporters()
        self._queue: deque[Any] = deque()
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._delay = delay
        self._shutdown_budget = shutdown_budget
        self._stop_exporters = ExportersShutdown(lambda: self._exporters)
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopping = False
        self._closed = False
        self._thread = self._start_thread()
        atexit.register(self.shutdown)
        recorder = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(recorder))

    def _set_exporters(self, exporters: Sequence[SpanExporter]) -> None:
        self._exporters = list(exporters)
        self._clients = [_otlp_http_client(exporter) for exporter in self._exporters]

    def _ensure_exporters(self) -> None:
        """Build the exporters put off until now (the export process is gone or never
        started)."""
        if self._build_exporters is not None:
            build, self._build_exporters = self._build_exporters, None
            self._set_exporters(build())
            if not all(self._clients):  # an OTLP/HTTP exporter without the client we post to
                log.warning("span_export_unsupported", hint="spans are recorded for an "
                            "OTLP/HTTP client this opentelemetry-exporter-otlp-proto-http "
                            "does not have; they cannot be exported")  # fmt: skip

    @property
    def export_pid(self) -> int | None:
        """The export process's pid, or None when spans are exported from this process."""
        return self._process.pid if self._process is not None else None

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="TriggerbusSpanExport", daemon=True)
        thread.start()
        return thread

    def _forked(self) -> None:
        """In a forked child: the export process and its pipe are the parent's (a write from
        here would interleave with the parent's frames), and so are the spans it had queued;
        the child exports its own spans from a thread of its own."""
        self._process = None
        self._ensure_exporters()
        self._queue = deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        if not self._closed:
            self._thread = self._start_thread()

    @property
    def takes_records(self) -> bool:
        """Whether :meth:`append_record` may be used (every exporter is OTLP/HTTP)."""
        return self._as_records

    def append(self, span: RecordedSpan) -> None:
        """Called by :meth:`RecordedSpan.end`, on any thread."""
        self.append_record(to_record(span) if self._as_records else span)

    def append_record(self, record: Any) -> None:
        """Queue a finished span (its record when :attr:`takes_records`), on any thread."""
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            if self.dropped == 1:  # once: a full queue under load would log per span
                log.warning("spans_dropped_queue_full", max_queue=self._max_queue,
                            hint="export cannot keep up; raise OTEL_BSP_MAX_QUEUE_SIZE or "
                            "check the collector; the total is logged at shutdown")  # fmt: skip
            return
        queue.append(record)
        if len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export everything queued now (the exporter's own timeout bounds each request)."""
        if self._closed:
            return False
        self._export_queued()
        with self._export_lock:
            process = self._process
            if process is not None and not process.flush(timeout_millis / 1000):
                log.warning("span_export_process_flush_timed_out", pid=process.pid,
                            waited_ms=timeout_millis)  # fmt: skip
                return False
        return True

    def shutdown(self) -> None:
        """Export what is queued, within the shutdown budget, and stop.

        Why a budget: with the collector down, every batch retries for the exporter's own
        timeout, so an exit could wait as many timeouts as there are batches queued (measured:
        two minutes after a run of 10,000 chain executions). The export process reads its pipe
        at once and holds the budget itself; exporting from this process, the exporters are
        shut down at the deadline, which ends a post's retries.
        """
        if self._closed:
            return
        deadline = time.monotonic() + self._shutdown_budget
        self._stopping = True
        self._wake.set()
        interrupt: threading.Timer | None = None
        if self._process is None:
            interrupt = threading.Timer(self._shutdown_budget, self._stop_exporters.stop)
            interrupt.daemon = True
            interrupt.start()
        self._thread.join(timeout=_remaining(deadline))
        self._export_queued(deadline=deadline)
        self._closed = True
        atexit.unregister(self.shutdown)
        if self.dropped:
            log.warning("spans_dropped_total", dropped=self.dropped)
        if self._process is not None:
            # The child gets the same budget from the moment its pipe closes, and a margin.
            self._process.close(timeout=self._shutdown_budget + _CHILD_EXIT_MARGIN)
            self._process = None
        if interrupt is not None:
            interrupt.cancel()
        self._stop_exporters.stop()


    def _run(self) -> None:
        due = time.monotonic() + self._delay
        while not self._stopping:
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stopping:
                return
            if time.monotonic() >= due:
                self._export_queued()
                due = time.monotonic() + self._delay
            else:
                # Woken by a full batch: export whole batches only. Exporting the remainder
                # too would post the few spans that arrived during the last post, then the
                # fewer that arrived during that one, a post every few milliseconds.
                self._export_queued(whole_batches_only=True)

    def _export_queued(
        self, *, whole_batches_only: bool = False, deadline: float | None = None
    ) -> None:
        """Export what is queued; with a ``deadline`` (a shutdown), what is still queued when
        it passes is dropped and counted, and so is everything if the export thread is still
        inside an export then."""
        lock = self._export_lock
        if not lock.acquire(timeout=-1 if deadline is None else _remaining(deadline)):
            self._drop_queued()
            return
        try:
            queue = self._queue
            batch = self._max_batch
            while len(queue) >= (batch if whole_batches_only else 1):
                if deadline is None and self._stopping:
                    return  # the shutdown exports the rest, within its budget
                if deadline is not None and time.monotonic() >= deadline:
                    self._drop_queued()
                    return
                self._export([queue.popleft() for _ in range(min(len(queue), batch))])
        finally:
            lock.release()

    def _drop_queued(self) -> None:
        self.dropped += len(self._queue)
        self._queue.clear()

    def _export(self, batch: list[Any]) -> None:
        """Export ``batch``: span records when every exporter is OTLP/HTTP, else spans."""
        process = self._process
        if process is not None:
            try:
                process.export(batch)
                return
            except OSError as exc:  # the child is gone: export from this process from now on
                log.warning("span_export_process_lost", pid=process.pid, error=str(exc))
                self._process = None
                self._ensure_exporters()
        payload: bytes | None = None
        for exporter, client in zip(self._exporters, self._clients, strict=True):
            try:
                if client is not None:
                    if payload is None:
                        payload = self._encoder.encode(batch)
                    client.export(payload)  # logs its own failures, as the SDK exporter does
                else:
                    exporter.export([span.readable(self.resource, self.scope) for span in batch])
            except Exception as exc:  # one lost batch is not worth the export thread
                log.warning("span_export_failed", exporter=type(exporter).__name__,
                            spans=len(batch), error=str(exc))  # fmt: skip


class ExportersShutdown:
    """Shuts the exporters down once, from whichever thread gets there first: a shutdown's
    deadline does it to interrupt a post's retries (the OTLP client's shutdown ends its
    backoff), and the shutdown's end does it again."""

    def __init__(self, exporters: Callable[[], Sequence[Any]]) -> None:
        self._exporters = exporters
        self._lock = threading.Lock()
        self._done = False

    def stop(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        for exporter in self._exporters():
            try:
                exporter.shutdown()
            except Exception as exc:  # nothing is left to lose at this point
                log.warning("span_exporter_shutdown_failed", error=str(exc))


_CHILD_EXIT_MARGIN = 5.0
"""Seconds the export process gets past its shutdown budget before it is killed."""


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _otlp_http_client(exporter: SpanExporter) -> Any:
    """The SDK OTLP/HTTP exporter's HTTP client, when it has one this module can post bytes
    through (``opentelemetry-exporter-otlp-proto-http`` 1.45 has one); otherwise None, and the
    exporter gets ``ReadableSpan`` objects and encodes them itself."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        return None
    if type(exporter) is not OTLPSpanExporter:
        return None
    client = getattr(exporter, "_client", None)
    return client if callable(getattr(client, "export", None)) else None


def _start_process(
    environ: Mapping[str, str], resource: Resource, scope: InstrumentationScope
) -> ExportProcess | None:
    """The export child, or None (then this process exports) when it cannot be started."""
    from triggerbus.observability._span_export import ExportProcess, hello_for

    hello = hello_for(
        environ,
        resource.attributes,
        resource.schema_url or "",
        scope.name,
        scope.version,
        scope.schema_url or "",
    )
    try:
        return ExportProcess(hello)
    except OSError as exc:
        log.warning("span_export_process_not_started", error=str(exc))
        return None


def _after_fork(recorder: weakref.ref[SpanRecorder]) -> None:
    alive = recorder()
    if alive is not None:
        alive._forked()
