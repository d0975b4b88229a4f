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

if TYPE_CHECKING:
    from opentelemetry.trace import Link

    from triggerbus.observability._spans import RecordedSpan


class LinkRecord(msgspec.Struct, array_like=True, gc=False):
    trace_id: bytes
    span_id: bytes
    remote: bool
    attributes: dict[str, Any]
    dropped_attributes: int


class SpanRecord(msgspec.Struct, array_like=True, gc=False):
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


def child_record(
    name: str,
    kind: int,
    trace_id: int,
    span_id: int,
    trace_state: str,
    parent_id: int,
    parent_remote: bool,
    attributes: dict[str, Any],
    start_ns: int,
    end_ns: int,
    links: tuple[LinkRecord, ...] = (),
    dropped_links: int = 0,
) -> SpanRecord:
    """The record of a span that ended as it began: no events or status, nothing dropped
    but links past the limit (what a producer span is unless its publish fails)."""
    return SpanRecord(
        name, kind, trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"), trace_state,
        parent_id.to_bytes(8, "big"), parent_remote, attributes, 0, (), 0, links,
        dropped_links, 0, None, start_ns, end_ns,
    )  # fmt: skip


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
