"""OTLP/protobuf wire encoding of the spans triggerbus records, without protobuf objects.

Why: the SDK's OTLP exporter builds a ``opentelemetry.proto`` message object per span,
attribute and value, then serialises them: ~70 µs per span of Python on the exporter thread,
which also takes the GIL from the event loop. The protobuf wire format is simple (tag, length,
bytes), our spans are a small fixed subset of OTLP, and most attribute pairs repeat (flow,
chunk, subject, ``messaging.*``), so their encoded bytes are cached. The output is the same
``ExportTraceServiceRequest`` the SDK's encoder produces for the same spans (field by field;
``tests/observability/test_otlp_encoding.py`` decodes both with ``opentelemetry-proto`` and
compares them).

Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto`` and
``common/v1/common.proto``; only what a span here can carry is encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry.trace import SpanKind

from triggerbus.observability._records import SpanRecord, producer_span

if TYPE_CHECKING:
    from triggerbus.observability._records import LinkRecord, Record

log = structlog.get_logger()

_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack

# Span.flags: the W3C "has is_remote" and "is_remote" bits (SpanFlags in trace.proto).
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200

_CACHE_LIMIT = 8192
_BYTE = [bytes((value,)) for value in range(0x80)]

# Span.kind (field 6): OTLP numbers the kinds from SPAN_KIND_INTERNAL = 1.
_KINDS = [b"\x30" + bytes((kind.value + 1,)) for kind in sorted(SpanKind, key=lambda k: k.value)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: key, length, payload."""
    size = len(payload)
    return key + (bytes((size,)) if size < 0x80 else _varint(size)) + payload


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message body, as the SDK's ``_encode_value`` chooses the kind."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        values = b"".join(_field(b"\x0a", _any_value(v)) for v in value)
        return _field(b"\x2a", values)
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _field(b"\x32", pairs)
    raise TypeError(f"attribute value {value!r} of type {type(value).__name__} cannot be encoded")


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


def _as_span(record: Record) -> SpanRecord:
    return record if record.__class__ is SpanRecord else producer_span(record)  # type: ignore[arg-type]


class SpanEncoder:
    """Encodes batches of :class:`SpanRecord` for one resource and instrumentation scope.

    Not thread-safe: one per exporting thread (its attribute cache is plain dicts).
    """

    def __init__(
        self,
        resource_attributes: Mapping[str, Any],
        scope_name: str,
        scope_version: str | None,
        *,
        resource_schema_url: str = "",
        scope_schema_url: str = "",
    ) -> None:
        self._pairs: dict[tuple[bytes, str, type, Any], bytes] = {}
        self._key_fields: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        resource = b"".join(self._attributes(resource_attributes.items(), b"\x0a"))
        scope = _field(b"\x0a", scope_name.encode())
        if scope_version:
            scope += _field(b"\x12", scope_version.encode())
        self._resource = _field(b"\x0a", resource)  # ResourceSpans.resource
        self._resource_tail = _field(b"\x1a", resource_schema_url.encode()) if (
            resource_schema_url
        ) else b""  # fmt: skip
        self._scope = _field(b"\x0a", scope)  # ScopeSpans.scope
        self._scope_tail = _field(b"\x1a", scope_schema_url.encode()) if scope_schema_url else b""

    def encode(self, spans: Iterable[Record]) -> bytes:
        """One ``ExportTraceServiceRequest`` holding ``spans``."""
        body = b"".join([_field(b"\x12", self.span(_as_span(span))) for span in spans])
        scope_spans = self._scope + body + self._scope_tail
        resource_spans = self._resource + _field(b"\x12", scope_spans) + self._resource_tail
        return _field(b"\x0a", resource_spans)

    def span(self, span: SpanRecord) -> bytes:
        """One ``Span`` message body."""
        name = self._names.get(span.name)
        if name is None:
            if len(self._names) > _CACHE_LIMIT:
                self._names.clear()
            name = self._names[span.name] = _field(b"\x2a", span.name.encode("utf-8"))
        parts = [b"\x0a\x10", span.trace_id, b"\x12\x08", span.span_id]
        if span.trace_state:
            parts.append(_field(b"\x1a", span.trace_state.encode("utf-8")))
        if span.parent_id:
            parts.append(b"\x22\x08")
            parts.append(span.parent_id)
        parts.append(name)
        parts.append(_KINDS[span.kind])
        parts.append(b"\x39" + _pack_fixed64(span.start_ns))
        parts.append(b"\x41" + _pack_fixed64(span.end_ns))
        parts.extend(self._attributes(span.attributes.items(), b"\x4a"))
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        if span.events:
            for event in span.events:
                parts.append(_field(b"\x5a", self._event(*event)))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        if span.links:
            for link in span.links:
                parts.append(_field(b"\x6a", self._link(link)))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = b""
        if span.status_message:
            status += _field(b"\x12", span.status_message.encode("utf-8"))
        if span.status_code:
            status += b"\x18" + _varint(span.status_code)
        parts.append(_field(b"\x7a", status))
        flags = FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if span.parent_remote else 0)
        parts.append(b"\x85\x01" + _pack_fixed32(flags))
        return b"".join(parts)

    def _attributes(self, items: Iterable[tuple[str, Any]], tag: bytes) -> list[bytes]:
        """Each attribute as a ``KeyValue`` field with ``tag``, cached by pair (an execution's
        spans repeat most of theirs); a value that cannot be encoded is left out, as the SDK's
        encoder does."""
        cache = self._pairs
        out = []
        for name, value in items:
            cache_key: tuple[bytes, str, type, Any] | None = (tag, name, value.__class__, value)
            try:
                encoded = cache.get(cache_key)  # type: ignore[arg-type]
            except TypeError:  # unhashable: a list or dict value
                cache_key = encoded = None
            if encoded is None:
                encoded = self._pair(tag, name, value)
                if encoded is None:
                    continue
                if cache_key is not None:
                    if len(cache) > _CACHE_LIMIT:
                        cache.clear()
                    cache[cache_key] = encoded
            out.append(encoded)
        return out

    def _pair(self, tag: bytes, name: str, value: Any) -> bytes | None:
        """One ``KeyValue`` field; a short string value (the usual attribute) by arithmetic."""
        if value.__class__ is str:
            key = self._key_fields.get(name)
            if key is None:
                key = self._key_fields[name] = _field(b"\x0a", name.encode("utf-8"))
            data = value.encode("utf-8")
            size = len(data)
            if size < 126:
                body = key + b"\x12" + _BYTE[size + 2] + b"\x0a" + _BYTE[size] + data
                if len(body) < 0x80:
                    return tag + _BYTE[len(body)] + body
        try:
            return _field(tag, _key_value(name, value))
        except TypeError as exc:
            log.warning("span_attribute_not_encoded", key=name, error=str(exc))
            return None

    def _event(self, name: str, timestamp: int, attributes: Mapping[str, Any]) -> bytes:
        return (
            b"\x09" + _pack_fixed64(timestamp)
            + _field(b"\x12", name.encode("utf-8"))
            + b"".join(self._attributes(attributes.items(), b"\x1a"))
        )  # fmt: skip

    def _link(self, link: LinkRecord) -> bytes:
        out = b"\x0a\x10" + link.trace_id + b"\x12\x08" + link.span_id
        if link.attributes:
            out += b"".join(self._attributes(link.attributes.items(), b"\x22"))
        if link.dropped_attributes:
            out += b"\x28" + _varint(link.dropped_attributes)
        flags = FLAG_HAS_IS_REMOTE | (FLAG_IS_REMOTE if link.remote else 0)
        return out + b"\x35" + _pack_fixed32(flags)
