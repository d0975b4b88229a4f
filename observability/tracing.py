"""OpenTelemetry traces: one trace per execution, across every process it touches.

- The **execution span** is one span, although an execution crosses processes and may last
  days. Its ids are fixed when the execution starts (:func:`execution_trace`): the trace is the
  caller's (the ``traceparent`` on the start message) or a new one derived from the execution
  id, and the span id is derived from the execution id. They are stored in the snapshot
  (``Snapshot.trace``), so every later message names the span as parent before it exists; the
  host that closes the execution exports it with ``start_time`` = the start.
- A **producer span** per publish of an invocation (``invoke <chunk>``) or an emit
  (``emit <event>``), and a **consumer span** per chunk attempt (``process <chunk>``); retries
  and redeliveries are separate spans with the same parent.
- A join that fans in (batch, ``when`` and, collect, for_each's end) puts **links** to every
  arrival on the invocations it releases.

Names and attributes follow the OpenTelemetry messaging conventions (``messaging.system`` is
``nats``) plus ``triggerbus.*`` attributes. Export is configured by the standard ``OTEL_*``
variables (see :func:`tracing_from_env`).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import importlib
import importlib.metadata
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from triggerbus.errors import ConfigurationError
from triggerbus.observability._records import LinkRecord
from triggerbus.observability._spans import RecordedSpan, SpanRecorder

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CALLER_SPAN = "caller_span_id"
"""Keys of ``Snapshot.trace``; join arrivals are kept under ``join:<key>``."""
JOIN_PREFIX = "join:"
HANDLED_PARENT: contextvars.ContextVar[Parent | None] = contextvars.ContextVar(
    "triggerbus_handled_parent", default=None
)
"""The parent of the mailbox message an execution host is handling, for log lines' trace ids."""
MAX_JOIN_LINKS = 128

def _digest(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "big")
    return value or 1


def execution_span_id(execution_id: str) -> int:
    """The execution span's id: fixed by the execution id, so any host can name it."""
    return _digest(f"span:{execution_id}", 8)


class Parent(msgspec.Struct, frozen=True, gc=False):
    """A span named as the parent of the next: the W3C trace context a message carries, or
    one of our own spans.

    Plain ints and the ``tracestate`` header rather than OpenTelemetry's ``SpanContext``:
    every message a host takes names one, and building the SDK's object for each (a
    validated tuple subclass, tracked by the garbage collector, plus a ``TraceState``) was a
    measured part of what tracing costs. ``span_context()`` builds it where OpenTelemetry
    needs one (a link, a sampler's question, a user's current span).
    """

    trace_id: int
    span_id: int
    flags: int
    state: str = ""
    """The ``tracestate`` header, or empty."""
    remote: bool = True

    @classmethod
    def of(cls, context: SpanContext) -> Parent:
        state = context.trace_state.to_header() if context.trace_state else ""
        return cls(context.trace_id, context.span_id, int(context.trace_flags), state,
                   context.is_remote)  # fmt: skip

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def span_context(self) -> SpanContext:
        return SpanContext(
            self.trace_id,
            self.span_id,
            is_remote=self.remote,
            trace_flags=_TRACE_FLAGS[self.flags & 0xFF],
            trace_state=TraceState.from_header([self.state]) if self.state else None,
        )

    def traceparent(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.flags)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The W3C ``traceparent`` header (version 00), as every propagator writes it."""
    # Bytes to hex, not format specs: a third of the cost, at every traced publish.
    trace_part = trace_id.to_bytes(16, "big").hex()
    span_part = span_id.to_bytes(8, "big").hex()
    return f"00-{trace_part}-{span_part}{_FLAGS_HEX[flags & 0xFF]}"


_FLAGS_HEX = [f"-{value:02x}" for value in range(256)]


def trace_hex(trace_id: int) -> str:
    """A trace id as 32 hex digits (``to_bytes().hex()``: half the cost of ``:032x``)."""
    return trace_id.to_bytes(16, "big").hex()


def span_hex(span_id: int) -> str:
    """A span id as 16 hex digits."""
    return span_id.to_bytes(8, "big").hex()


def parent_of(carrier: Mapping[str, str]) -> Parent | None:
    """The remote parent in message headers (``traceparent``), or None."""
    header = carrier.get(TRACEPARENT)
    if not header:
        return None
    if w3c_only():
        # What the W3C propagator would extract, without going through it.
        return _parse_traceparent(header, carrier.get(TRACESTATE))
    context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return Parent.of(context) if context.is_valid else None


# The W3C trace-context propagator's own rules (opentelemetry.trace.propagation.tracecontext).
_TRACEPARENT_FORMAT = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
_COMMON_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_MAX = 512
_TRACESTATE_MAX = 512
_W3C_FIELDS = frozenset({TRACEPARENT, TRACESTATE, "baggage"})
_w3c_checked: list[Any] = [None, False]
"""The global propagator last asked about, and the answer (asked at every traced message)."""


def w3c_only() -> bool:
    """Whether the configured propagators are the W3C ones (the default: trace context and
    baggage), so that headers can be read and written without going through them."""
    textmap = propagate.get_global_textmap()
    checked = _w3c_checked
    if checked[0] is not textmap:
        fields = set(textmap.fields)
        checked[:] = [textmap, TRACEPARENT in fields and fields <= _W3C_FIELDS]
    return checked[1]  # type: ignore[no-any-return]


_HEX_DIGITS = "0123456789abcdef"
_TRACE_FLAGS = [TraceFlags(value) for value in range(256)]


def _parse_traceparent(header: str, state: str | None) -> Parent | None:
    common = _COMMON_TRACEPARENT.fullmatch(header)
    if common is not None:
        # The form every W3C tracer writes (version 00, lowercase hex, nothing around it).
        trace_hex, span_hex, flags = common.groups()
    else:
        if len(header) > _TRACEPARENT_MAX:
            return None
        match = _TRACEPARENT_FORMAT.match(header)
        if match is None:
            return None
        version, trace_hex, span_hex, flags, rest = match.groups()
        if version == "ff" or (version == "00" and rest):
            return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, int(flags, 16), _trace_state(state) if state else "")


@functools.lru_cache(maxsize=256)
def _trace_state(header: str) -> str:
    """``header`` as the SDK's ``TraceState`` parses and writes it back (invalid: empty)."""
    if len(header) > _TRACESTATE_MAX:
        return ""
    return TraceState.from_header([header]).to_header()


def execution_trace(
    headers: Mapping[str, str],
    execution_id: str,
    sampled: Callable[[int], bool] | None = None,
) -> dict[str, str]:
    """The execution's trace context, decided once at its start and kept in the snapshot.

    The caller's span (``traceparent`` on the start message) becomes the execution span's
    parent; without one, the trace id is derived from the execution id, so every host that
    starts the same execution agrees on it, and ``sampled(trace_id)`` (the configured sampler)
    decides, once for the whole execution, whether it is recorded.
    """
    caller = parent_of(headers)
    span_id = execution_span_id(execution_id)
    if caller is not None:
        trace_id, flags = caller.trace_id, caller.flags
    else:
        trace_id = _digest(f"trace:{execution_id}", 16)
        keep = sampled(trace_id) if sampled is not None else True
        flags = int(TraceFlags.SAMPLED) if keep else int(TraceFlags.DEFAULT)
    stored = {TRACEPARENT: format_traceparent(trace_id, span_id, flags)}
    if caller is not None:
        stored[CALLER_SPAN] = f"{caller.span_id:016x}"
        if caller.state:
            stored[TRACESTATE] = caller.state
    return stored


def execution_context(stored: Mapping[str, str]) -> Parent | None:
    """The execution span, from the snapshot's trace fields.

    Those are triggerbus's own record, always in the W3C form (:func:`execution_trace` writes
    them), not a carrier: they are read as such whatever propagators the process configured.
    Read at every transition of the execution, from the same string: parsed once (a bounded
    cache; a ``Parent`` is not tracked by the garbage collector)."""
    header = stored.get(TRACEPARENT)
    if not header:
        return None
    state = stored.get(TRACESTATE)
    if state:
        return _parse_traceparent(header, state)
    parent = _EXECUTION_SPANS.get(header)
    if parent is None:
        parent = _parse_traceparent(header, None)
        if parent is not None:
            if len(_EXECUTION_SPANS) >= _EXECUTION_SPANS_MAX:
                _EXECUTION_SPANS.clear()
            _EXECUTION_SPANS[header] = parent
    return parent


_EXECUTION_SPANS: dict[str, Parent] = {}
_EXECUTION_SPANS_MAX = 4096


def remote_context(span_context: SpanContext) -> Context:
    """An OpenTelemetry ``Context`` whose current span is ``span_context`` (a remote parent)."""
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def inject(span_context: SpanContext | None, headers: dict[str, str]) -> dict[str, str]:
    """Write ``span_context`` into ``headers`` with the configured propagators."""
    if span_context is None or not span_context.is_valid:
        return headers
    if w3c_only() and not baggage.get_all():
        return inject_parent(Parent.of(span_context), headers)
    propagate.inject(headers, context=remote_context(span_context))
    return headers


def inject_parent(
    parent: Parent, headers: dict[str, str], *, user_context: bool = True
) -> dict[str, str]:
    """:func:`inject` for a :class:`Parent`: exactly what the W3C propagators write when
    there is no baggage, without building a ``SpanContext``.

    ``user_context=False`` says the current context is an execution host's, which no user
    code runs in and so holds no baggage: the check for it is skipped."""
    if w3c_only() and (not user_context or not baggage.get_all()):
        headers[TRACEPARENT] = parent.traceparent()
        if parent.state:
            headers[TRACESTATE] = parent.state
        return headers
    return inject(parent.span_context(), headers)


def inject_span(span: RecordedSpan, headers: dict[str, str]) -> dict[str, str]:
    """:func:`inject` for a span of ours, without building its ``SpanContext``."""
    if w3c_only() and not baggage.get_all():
        headers[TRACEPARENT] = format_traceparent(span.trace_id, span.span_id, span.flags)
        if span.trace_state:
            headers[TRACESTATE] = span.trace_state
        return headers
    return inject(span.get_span_context(), headers)


def join_links(stored: Mapping[str, str], key: str, own: Parent) -> list[LinkRecord]:
    """Links to every recorded arrival of the join ``key``, as the records export reads;
    arrivals are spans of the execution's trace (``own``), kept as span ids (whole
    ``traceparent``s, which snapshots written by earlier versions hold, are read too)."""
    links = []
    trace_id = own.trace_id.to_bytes(16, "big")
    for value in stored.get(JOIN_PREFIX + key, "").split(","):
        if len(value) == 16 and not value.strip(_HEX_DIGITS) and value != _ZERO_SPAN:
            links.append(LinkRecord(trace_id, bytes.fromhex(value), True, _JOIN_ARRIVAL, 0))
            continue
        parent = _parse_traceparent(value, None) if value else None
        if parent is not None:
            links.append(link_record(parent, _JOIN_ARRIVAL))
    return links


def link_record(parent: Parent, attributes: dict[str, Any]) -> LinkRecord:
    """A link to ``parent``; ``attributes`` is shared, never changed (records are only read)."""
    return LinkRecord(parent.trace_id.to_bytes(16, "big"), parent.span_id.to_bytes(8, "big"),
                      parent.remote, attributes, 0)  # fmt: skip


def otel_links(records: Sequence[LinkRecord], own: Parent) -> list[Link]:
    """OpenTelemetry's ``Link``s for link records, where a span object or a sampler needs
    them; ``own`` (the linking span's parent) gives the trace flags and state."""
    flags = _TRACE_FLAGS[own.flags & 0xFF]
    state = TraceState.from_header([own.state]) if own.state else None
    links = []
    for record in records:
        trace_id = int.from_bytes(record.trace_id, "big")
        span_id = int.from_bytes(record.span_id, "big")
        context = SpanContext(trace_id, span_id, record.remote, flags, state)
        links.append(Link(context, dict(record.attributes)))
    return links


_ZERO_SPAN = "0" * 16
_JOIN_ARRIVAL = {"triggerbus.link": "join_arrival"}


def record_arrival(stored: dict[str, str], key: str, parent: Parent) -> None:
    """Remember ``parent`` (a span of the execution's trace) as one more arrival at the join
    ``key``: its span id appended, the oldest dropped past ``MAX_JOIN_LINKS``."""
    field = JOIN_PREFIX + key
    previous = stored.get(field, "")
    span_id = span_hex(parent.span_id)
    if not previous:
        stored[field] = span_id
    elif previous.count(",") < MAX_JOIN_LINKS - 1:
        stored[field] = f"{previous},{span_id}"
    else:
        kept = previous.split(",")[-(MAX_JOIN_LINKS - 1) :]
        kept.append(span_id)
        stored[field] = ",".join(kept)


def ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class Tracing:
    """triggerbus's own tracer, exporting where ``OTEL_*`` says.

    Spans are :class:`~triggerbus.observability._spans.RecordedSpan` objects handed to a
    :class:`~triggerbus.observability._spans.SpanRecorder` (see ``_spans.py`` for why not the
    SDK's tracer). Nothing is installed as the global provider: an application keeps its own;
    its current span is still the parent of what it starts (context is shared, providers are
    not). The sampler is the SDK's (``OTEL_TRACES_SAMPLER``); with the default
    ``parentbased_always_on`` a span with a parent follows the parent's sampled flag, which
    is what that sampler answers, without asking it.
    """

    def __init__(self, recorder: SpanRecorder, sampler: Sampler) -> None:
        self.recorder = recorder
        self.sampler = sampler
        self._follow_parent = _follows_parent(sampler)

    def record_sink(self) -> SpanRecorder | None:
        """The recorder, when a child span can skip the span object: it takes records and
        the sampler follows the parent (the default; it reads neither links nor attributes),
        so nothing reads the span but the recorder."""
        if not self._follow_parent or not self.recorder.takes_records:
            return None
        return self.recorder

    def child_span(
        self, name: str, parent: Parent | None, kind: SpanKind, attributes: dict[str, Any]
    ) -> RecordedSpan:
        """:meth:`start_span` for a span with no links, started now: with the default sampler,
        straight from the parent (one for every chunk attempt)."""
        if parent is None or not self._follow_parent:
            return self.start_span(name, parent=parent, kind=kind, attributes=attributes)
        flags = parent.flags
        return RecordedSpan(
            self.recorder if flags & 1 else None, name, kind, parent.trace_id, _random_id(64),
            flags & CHILD_FLAGS, parent.state, parent.span_id, parent.remote, attributes, (),
            time.time_ns(),
        )  # fmt: skip

    def sampled(self, trace_id: int) -> bool:
        """The configured sampler's decision for a new root (an execution nobody traced)."""
        result = self.sampler.should_sample(None, trace_id, "execution")
        return result.decision.is_sampled()

    def start_span(
        self,
        name: str,
        *,
        parent: Parent | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link] = (),
        start_ns: int | None = None,
        ids: tuple[int, int] | None = None,
        sampled: bool | None = None,
    ) -> RecordedSpan:
        """A started span; ``attributes`` is taken over, not copied (callers build it fresh).

        ``ids`` (trace id, span id) fixes the span's ids and ``sampled`` the decision: the
        execution span's were fixed at its start.
        """
        if sampled is not None:
            trace_id = ids[0] if ids is not None else parent.trace_id if parent else 0
            state = parent.state if parent is not None else ""
            flags = int(sampled) | (parent.flags & _RANDOM_TRACE_ID if parent else 0)
        elif parent is not None:
            trace_id = parent.trace_id
            if self._follow_parent:
                sampled, state = bool(parent.flags & 1), parent.state
            else:
                sampled, state, attributes = self._ask(parent, trace_id, name, kind,
                                                       attributes, links)  # fmt: skip
            flags = (parent.flags & _RANDOM_TRACE_ID) | sampled
        else:
            trace_id = ids[0] if ids is not None else _random_id(128)
            sampled, state, attributes = self._ask(None, trace_id, name, kind, attributes, links)
            flags = (_RANDOM_TRACE_ID if ids is None else 0) | sampled
        return RecordedSpan(
            self.recorder if sampled else None,
            name,
            kind,
            trace_id,
            ids[1] if ids is not None else _random_id(64),
            flags,
            state,
            parent.span_id if parent is not None else 0,
            parent.remote if parent is not None else False,
            attributes,
            links,
            start_ns if start_ns is not None else time.time_ns(),
        )

    def _ask(
        self,
        parent: Parent | None,
        trace_id: int,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link],
    ) -> tuple[bool, str, dict[str, Any]]:
        context = remote_context(parent.span_context()) if parent is not None else None
        result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        state = result.trace_state.to_header() if result.trace_state else ""
        return result.decision.is_sampled(), state, dict(result.attributes)

    def export_execution_span(
        self,
        stored: Mapping[str, str],
        *,
        name: str,
        attributes: dict[str, Any],
        started_at: float,
        closed_at: float,
        error: str | None,
    ) -> None:
        """Export the execution span with the ids fixed at its start."""
        own = execution_context(stored)
        if own is None or not own.sampled:
            return  # not sampled: decided at the start, for the whole execution
        caller_id = stored.get(CALLER_SPAN)
        parent = None
        if caller_id:
            parent = Parent(own.trace_id, int(caller_id, 16), own.flags, own.state)
        span = self.start_span(
            name,
            parent=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_ns=ns(started_at),
            ids=(own.trace_id, own.span_id),
            sampled=True,
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=ns(max(closed_at, started_at)))

    def force_flush(self, timeout_millis: int = 5_000) -> bool:
        return self.recorder.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.recorder.shutdown()


_RANDOM_TRACE_ID = 0x02
"""W3C trace-flags bit the SDK sets on a root whose trace id is random."""
CHILD_FLAGS = 0x03
"""The trace flags a child keeps from its parent: sampled, and the random-trace-id bit."""


def random_span_id() -> int:
    return _random_id(64)


def _random_id(bits: int) -> int:
    value = random.getrandbits(bits)
    while not value:
        value = random.getrandbits(bits)
    return value


def _follows_parent(sampler: Sampler) -> bool:
    """Whether ``sampler`` answers a span with a parent by the parent's sampled flag alone:
    ``ParentBased`` with its default delegates (``parentbased_*`` in ``OTEL_TRACES_SAMPLER``)."""
    if not isinstance(sampler, ParentBased):
        return False
    delegates = (
        getattr(sampler, "_remote_parent_sampled", None),
        getattr(sampler, "_remote_parent_not_sampled", None),
        getattr(sampler, "_local_parent_sampled", None),
        getattr(sampler, "_local_parent_not_sampled", None),
    )
    return delegates == (ALWAYS_ON, ALWAYS_OFF, ALWAYS_ON, ALWAYS_OFF)


@contextmanager
def current(span: trace.Span) -> Iterator[None]:
    """Make ``span`` current, so logs and the user's own spans inside it nest under it."""
    token = attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        detach(token)


# --- configuration from OTEL_* ---------------------------------------------------------------


def enabled_by(environ: Mapping[str, str], signal: str) -> bool:
    """Whether ``OTEL_*`` asks for ``signal`` (``traces`` or ``metrics``) to be exported.

    Off when ``OTEL_SDK_DISABLED=true``, when ``OTEL_<SIGNAL>_EXPORTER=none``, and when nothing
    names an exporter or an OTLP endpoint: telemetry is opt-in and costs nothing when off.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def otlp_protocol(environ: Mapping[str, str], signal: str) -> str:
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in ("http/protobuf", "grpc"):
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported; use http/protobuf or grpc"
        )
    return protocol


def otlp_endpoint(environ: Mapping[str, str], signal: str, protocol: str) -> str | None:
    """The endpoint the spec's rules give: per-signal as is, the base one plus ``/v1/<signal>``."""
    specific = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    if protocol == "grpc":
        return base
    return base.rstrip("/") + f"/v1/{signal}"


def resource_from(environ: Mapping[str, str]) -> Resource:
    attributes: dict[str, Any] = {}
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    attributes["service.name"] = environ.get("OTEL_SERVICE_NAME") or attributes.get(
        "service.name", "triggerbus"
    )
    # Replicas of one service (compose --scale) stay apart: the host (a container's id) and pid.
    attributes.setdefault("service.instance.id", f"{socket.gethostname()}:{os.getpid()}")
    return Resource.create(attributes)


def exporter_names(environ: Mapping[str, str], variable: str) -> list[str]:
    """The exporter names ``variable`` lists (``otlp`` when it is unset), lower case."""
    return [n.strip().lower() for n in (environ.get(variable) or "otlp").split(",") if n.strip()]


def exporters_from_env(
    environ: Mapping[str, str],
    *,
    signal: str,
    variable: str,
    console: Callable[[], Any],
    otlp_module: str,
    otlp_class: str,
) -> list[Any]:
    """The exporters ``variable`` (``OTEL_TRACES_EXPORTER``/``OTEL_METRICS_EXPORTER``) names.

    ``otlp_module`` is the exporter's module below ``opentelemetry.exporter.otlp.proto.<p>.``
    (``trace_exporter`` or ``metric_exporter``), ``p`` being ``grpc`` or ``http`` as
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` says; gRPC needs its own package, named in the error.
    """
    names = exporter_names(environ, variable)
    exporters: list[Any] = []
    for name in names:
        if name == "console":
            exporters.append(console())
        elif name == "otlp":
            protocol = otlp_protocol(environ, signal)
            endpoint = otlp_endpoint(environ, signal, protocol)
            package = "grpc" if protocol == "grpc" else "http"
            try:
                module = importlib.import_module(
                    f"opentelemetry.exporter.otlp.proto.{package}.{otlp_module}"
                )
            except ImportError as exc:
                raise ConfigurationError(
                    f"OTLP over {package} needs "
                    f"`pip install opentelemetry-exporter-otlp-proto-{package}`"
                    + (
                        ", or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
                        if package == "grpc"
                        else ""
                    )
                ) from exc
            exporters.append(getattr(module, otlp_class)(endpoint=endpoint))
        elif name != "none":
            raise ConfigurationError(
                f"{variable} {name!r} is not supported; use otlp, console or none"
            )
    return exporters


def _span_exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    return exporters_from_env(
        environ,
        signal="traces",
        variable="OTEL_TRACES_EXPORTER",
        console=ConsoleSpanExporter,
        otlp_module="trace_exporter",
        otlp_class="OTLPSpanExporter",
    )


def tracing_from_env(environ: Mapping[str, str], *, version: str = "") -> Tracing | None:
    """A :class:`Tracing` exporting as ``OTEL_*`` says, or None when tracing is off."""
    if not enabled_by(environ, "traces"):
        return None
    exporters: list[SpanExporter] | Callable[[], list[SpanExporter]]
    if span_export_mode(environ) == "process" and _otlp_http_records(environ):
        # Built only if this process has to export itself (see SpanRecorder).
        exporters = functools.partial(_span_exporters, environ)
    else:
        exporters = _span_exporters(environ)
        if not exporters:
            return None
    settings = bsp_settings(environ)
    # A provider only for the SDK's reading of OTEL_TRACES_SAMPLER(_ARG); it records nothing.
    sampler = TracerProvider(shutdown_on_exit=False).sampler
    recorder = SpanRecorder(
        exporters,
        resource=resource_from(environ),
        scope=InstrumentationScope("triggerbus", version or None),
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        delay=settings.delay,
        shutdown_budget=settings.export_timeout,
        environ=environ if span_export_mode(environ) == "process" else None,
    )
    return Tracing(recorder, sampler)


def _otlp_http_records(environ: Mapping[str, str]) -> bool:
    """Whether every configured span exporter is OTLP/HTTP from a release whose HTTP client
    the export process posts records through (1.45 and later), decided without importing it."""
    names = [n for n in exporter_names(environ, "OTEL_TRACES_EXPORTER") if n != "none"]
    if not names or any(n != "otlp" for n in names):
        return False
    if otlp_protocol(environ, "traces") != "http/protobuf":
        return False
    try:
        version = importlib.metadata.version("opentelemetry-exporter-otlp-proto-http")
    except importlib.metadata.PackageNotFoundError:
        return False
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) >= (1, 45)


SPAN_EXPORT = "TRIGGERBUS_SPAN_EXPORT"


def span_export_mode(environ: Mapping[str, str]) -> str:
    """Where OTLP/HTTP span export runs: ``process`` (a child process, the default) or
    ``thread`` (a thread of this process, which shares its GIL with the event loop)."""
    mode = (environ.get(SPAN_EXPORT) or os.environ.get(SPAN_EXPORT) or "process").strip()
    if mode not in ("process", "thread"):
        raise ConfigurationError(f"{SPAN_EXPORT} must be process or thread, not {mode!r}")
    return mode


class BatchSettings(msgspec.Struct, frozen=True):
    """The batch span processor's ``OTEL_BSP_*`` settings, in seconds where they are times."""

    max_queue: int
    max_batch: int
    delay: float
    export_timeout: float
    """How long a shutdown may spend exporting what is queued; past it, the rest is dropped
    and counted (a collector that is down must not hold a process's exit)."""


def bsp_settings(environ: Mapping[str, str]) -> BatchSettings:
    queue = _int_from(environ, "OTEL_BSP_MAX_QUEUE_SIZE", BSP_MAX_QUEUE_SIZE)
    batch = _int_from(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BSP_MAX_BATCH_SIZE)
    delay = _int_from(environ, "OTEL_BSP_SCHEDULE_DELAY", BSP_SCHEDULE_DELAY_MS)
    export_timeout = _int_from(environ, "OTEL_BSP_EXPORT_TIMEOUT", BSP_EXPORT_TIMEOUT_MS)
    return BatchSettings(queue, min(queue, batch), delay / 1000, export_timeout / 1000)


BSP_MAX_QUEUE_SIZE = 8192
"""Spans the batch processor holds before it drops (the SDK's default is 2048: 1.5 s of a
busy host's spans at ~7 per execution, so a slow collector would lose spans early)."""
BSP_MAX_BATCH_SIZE = 512
"""Spans per export request (the SDK's default)."""
BSP_SCHEDULE_DELAY_MS = 5000
"""Milliseconds between exports of a batch that is not full (the SDK's default)."""
BSP_EXPORT_TIMEOUT_MS = 30000
"""Milliseconds a shutdown may spend exporting (the specification's default)."""


def _int_from(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a whole number, not {raw!r}") from exc
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, not {value}")
    return value
