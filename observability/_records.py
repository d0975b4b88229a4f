"""A finished span as a plain record: what the OTLP encoder reads and what crosses the pipe
to the export process.

Ids are bytes, as OTLP carries them (and because msgpack integers stop at 64 bits). The
records are not tracked by the garbage collector (``gc=False``: they hold no cycles), and
their sequences are tuples (an empty list is a tracked object; the empty tuple is not), so a
batch of them waiting for export does not make collections slower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from opentelemetry.trace import Link

    from triggerbus.observability._spans import RecordedSpan


class LinkRecord(msgspec.Struct, array_like=True, gc=False):
    trace_id: bytes
    span_id: bytes
    remote: bool
    attributes: dict[str, Any]
    dropped_attributes: int


class SpanRecord(msgspec.Struct, array_like=True, gc=False, tag="s"):
    name: str
    kind: int
    """``SpanKind`` value (INTERNAL is 0)."""
    trace_id: bytes
    span_id: bytes
    trace_state: str
    """The W3C ``tracestate`` header form, or empty."""
    parent_id: bytes
    """Empty for a root span."""
    parent_remote: bool
    attributes: dict[str, Any]
    dropped_attributes: int
    events: tuple[tuple[str, int, dict[str, Any]], ...]
    dropped_events: int
    links: tuple[LinkRecord, ...]
    dropped_links: int
    status_code: int
    status_message: str | None
    start_ns: int
    end_ns: int


def to_record(span: RecordedSpan) -> SpanRecord:
    return SpanRecord(
        span.name,
        span.kind._value_,  # the member's value without the enum's descriptor
        span.trace_id.to_bytes(16, "big"),
        span.span_id.to_bytes(8, "big"),
        span.trace_state,
        span.parent_id.to_bytes(8, "big") if span.parent_id else b"",
        span.parent_remote,
        span.attributes,
        span.dropped_attributes,
        tuple([(name, at, dict(attributes)) for name, at, attributes in span.events])
        if span.events
        else (),
        span.dropped_events,
        tuple([_link_record(link) for link in span.links]) if span.links else (),
        span.dropped_links,
        span.status_code,
        span.status_message,
        span.start_ns,
        span.end_ns,
    )


class ProducerRecord(msgspec.Struct, array_like=True, gc=False, tag="p"):
    """A producer span as a traced process records it: the fields of the message it sent.

    Why not a :class:`SpanRecord`: a process sends a producer span per invocation and emit,
    and building its name and attribute dict, then encoding the attribute names through the
    pipe, was a counted part of what tracing costs the traced process. The export side
    builds them (:func:`producer_span`)."""

    operation: str
    """``invoke`` or ``emit``."""
    target: str
    """The chunk invoked, or the event emitted."""
    subject: str
    message_id: str
    flow: str
    execution_id: str
    step: int | None
    trace_id: bytes
    span_id: bytes
    trace_state: str
    parent_id: bytes
    parent_remote: bool
    start_ns: int
    end_ns: int
    links: tuple[LinkRecord, ...] = ()
    dropped_links: int = 0


Record = SpanRecord | ProducerRecord


def producer_name(operation: str, target: str) -> str:
    return f"{operation} {target}"


def producer_attributes(
    operation: str,
    target: str,
    subject: str,
    message_id: str,
    flow: str,
    execution_id: str,
    step: int | None,
) -> dict[str, Any]:
    """A producer span's attributes (OpenTelemetry's messaging conventions, and ours)."""
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.destination.name": subject,
        "messaging.message.id": message_id,
        "triggerbus.flow": flow,
        "triggerbus.execution_id": execution_id,
        "messaging.operation.name": operation,
        "triggerbus.chunk" if operation == "invoke" else "triggerbus.event": target,
    }
    if step is not None:
        attributes["triggerbus.step"] = step
    return attributes


def producer_span(record: ProducerRecord) -> SpanRecord:
    """The span a :class:`ProducerRecord` stands for."""
    r = record
    return SpanRecord(
        producer_name(r.operation, r.target), _PRODUCER, r.trace_id, r.span_id, r.trace_state,
        r.parent_id, r.parent_remote,
        producer_attributes(r.operation, r.target, r.subject, r.message_id, r.flow,
                            r.execution_id, r.step),
        0, (), 0, r.links, r.dropped_links, 0, None, r.start_ns, r.end_ns,
    )  # fmt: skip


_PRODUCER = SpanKind.PRODUCER.value


def _link_record(link: Link) -> LinkRecord:
    context = link.context
    attributes = link.attributes
    return LinkRecord(
        context.trace_id.to_bytes(16, "big"),
        context.span_id.to_bytes(8, "big"),
        context.is_remote,
        dict(attributes) if attributes else {},
        link.dropped_attributes,
    )
