"""Our OTLP/protobuf span encoder writes what the SDK's encoder writes, and recorded spans
behave like SDK spans where users can reach them (current span, nesting, sampling).

The encoder is compared with ``opentelemetry.exporter.otlp.proto.common``'s ``encode_spans``
over the same spans, both decoded with the ``opentelemetry-proto`` classes: any field ours
drops, renames or mis-encodes makes the messages differ.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import structlog.testing
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from triggerbus.contracts.messages import InvokeChunk
from triggerbus.observability import tracing
from triggerbus.observability._otlp import SpanEncoder
from triggerbus.observability._records import to_record
from triggerbus.observability._spans import RecordedSpan, SpanRecorder
from triggerbus.observability.telemetry import (
    AttemptInput,
    PublishInput,
    Telemetry,
    configure_telemetry,
    shutdown_telemetry,
)
from triggerbus.observability.testing import OtlpReceiver

RESOURCE = Resource.create({"service.name": "encoder-test", "deployment.environment": "ci"})
SCOPE = InstrumentationScope("triggerbus", "1.2.3")
TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
REMOTE = SpanContext(
    TRACE, 0x00F067AA0BA902B7, is_remote=True, trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "x1")]),
)  # fmt: skip


class _Collected:
    """A span sink without an export thread: the spans, as ended."""

    def __init__(self) -> None:
        self.limits = SpanLimits()
        self.spans: list[RecordedSpan] = []

    def append(self, span: RecordedSpan) -> None:
        self.spans.append(span)


def _span(sink: _Collected, name: str, **kw: Any) -> RecordedSpan:
    fields: dict[str, Any] = {
        "kind": SpanKind.INTERNAL, "trace_id": TRACE, "span_id": 0x1111, "flags": 1,
        "trace_state": "", "parent_id": 0, "parent_remote": False, "attributes": {},
        "links": (), "start_ns": 1_700_000_000_000_000_000,
    }  # fmt: skip
    fields.update(kw)
    return RecordedSpan(sink, name, **fields)  # type: ignore[arg-type]


def _every_kind_of_span() -> list[RecordedSpan]:
    sink = _Collected()
    root = _span(sink, "execution flow", attributes={"triggerbus.flow": "flow", "n": 0})
    root.set_status(Status(StatusCode.ERROR, "ValueError: boom ✗"))
    root.end(1_700_000_000_500_000_000)

    producer = _span(
        sink, "invoke chunk", kind=SpanKind.PRODUCER, span_id=0x2222, parent_id=REMOTE.span_id,
        parent_remote=True, trace_state=REMOTE.trace_state.to_header(),
        attributes={
            "messaging.system": "nats", "messaging.destination.name": "tb.f.run.chunk",
            "triggerbus.step": 3, "negative": -42, "big": 2**62, "ratio": 0.25,
            "yes": True, "no": False, "empty": "", "tags": ("a", "b"), "ints": [1, -2, 3],
            "long": "x" * 300, "unicode": "héllo wörld ✓",
        },
        links=[Link(REMOTE, {"triggerbus.link": "origin"}),
               Link(SpanContext(TRACE, 0x3333, is_remote=False), {"triggerbus.link": "join"})],
    )  # fmt: skip
    producer.end(1_700_000_000_000_100_000)

    consumer = _span(
        sink, "process chunk", kind=SpanKind.CONSUMER, span_id=0x4444, parent_id=0x2222,
        parent_remote=True, attributes={"triggerbus.attempt": 2},
    )  # fmt: skip
    consumer.set_attribute("user.key", "set by the chunk")
    consumer.add_event("checkpoint", {"rows": 12})
    try:
        raise RuntimeError("chunk failed")
    except RuntimeError as exc:
        consumer.record_exception(exc)
    consumer.set_status(StatusCode.OK)
    consumer.set_status(StatusCode.ERROR, "ignored: OK is final")
    consumer.end(1_700_000_000_000_200_000)

    local = _span(sink, "emit side", kind=SpanKind.PRODUCER, span_id=0x5555, parent_id=0x4444,
                  parent_remote=False)  # fmt: skip
    local.end(1_700_000_000_000_300_000)

    links = [Link(SpanContext(TRACE, i + 1, is_remote=True)) for i in range(130)]
    many = _span(sink, "invoke merge", span_id=0x6666, parent_id=0x5555, links=links)
    many.end(1_700_000_000_000_400_000)
    return sink.spans


def _decoded(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


class TestEncoder:
    def test_encodes_what_the_sdk_encoder_encodes_for_the_same_spans(self) -> None:
        spans = _every_kind_of_span()
        encoder = SpanEncoder(RESOURCE.attributes, SCOPE.name, SCOPE.version)
        ours = _decoded(encoder.encode([to_record(span) for span in spans]))
        sdk = encode_spans([span.readable(RESOURCE, SCOPE) for span in spans])
        assert ours == sdk
        assert ours.SerializeToString(deterministic=True) == sdk.SerializeToString(
            deterministic=True
        )

    def test_the_fields_a_collector_reads_are_there(self) -> None:
        """Checked by hand as well, so a conversion bug shared by both sides is caught."""
        spans = _every_kind_of_span()
        encoder = SpanEncoder(RESOURCE.attributes, "triggerbus", "1.2.3")
        request = _decoded(encoder.encode([to_record(span) for span in spans]))
        (resource_spans,) = request.resource_spans
        resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
        assert resource["service.name"] == "encoder-test"
        (scope_spans,) = resource_spans.scope_spans
        assert (scope_spans.scope.name, scope_spans.scope.version) == ("triggerbus", "1.2.3")
        root, producer, consumer, local, many = scope_spans.spans
        assert root.trace_id == TRACE.to_bytes(16, "big") and root.parent_span_id == b""
        assert (root.status.code, root.status.message) == (2, "ValueError: boom ✗")
        assert root.end_time_unix_nano - root.start_time_unix_nano == 500_000_000
        assert producer.kind == 4 and producer.parent_span_id == REMOTE.span_id.to_bytes(8, "big")
        assert producer.trace_state == "vendor=x1" and producer.flags == 0x300
        values = {kv.key: kv.value for kv in producer.attributes}
        assert values["negative"].int_value == -42 and values["ratio"].double_value == 0.25
        assert values["no"].HasField("bool_value") and not values["no"].bool_value
        assert values["long"].string_value == "x" * 300
        assert [v.int_value for v in values["ints"].array_value.values] == [1, -2, 3]
        assert [(link.span_id.hex(), link.flags) for link in producer.links] == [
            (f"{REMOTE.span_id:016x}", 0x300), (f"{0x3333:016x}", 0x100)
        ]  # fmt: skip
        assert consumer.kind == 5 and consumer.status.code == 1
        assert [event.name for event in consumer.events] == ["checkpoint", "exception"]
        assert {kv.key for kv in consumer.attributes} == {"triggerbus.attempt", "user.key"}
        assert local.flags == 0x100
        assert len(many.links) == 128 and many.dropped_links_count == 2


# --- through the seam --------------------------------------------------------------------------


def _telemetry(receiver: OtlpReceiver, **extra: str) -> Telemetry:
    return configure_telemetry({
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRICS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "seam-test", **extra,
    })  # fmt: skip


def _attempt(headers: dict[str, str]) -> AttemptInput:
    invocation = InvokeChunk(id="e1:2:0", flow="f", execution_id="e1", fingerprint="x",
                             chunk="work", step=2)  # fmt: skip
    return AttemptInput(flow="f", chunk="work", subject="tb.f.run.work", consumer="run_f_work",
                        headers=headers, invocation=invocation, attempt=1)  # fmt: skip


class TestRecordedSpans:
    async def test_a_users_spans_and_attributes_inside_an_attempt_land_in_its_trace(self) -> None:
        """The attempt's span is current: a span the chunk starts with its own provider is its
        child, and an attribute set on the current span is exported with the attempt."""
        user = TracerProvider(resource=Resource.create({"service.name": "user"}))
        parent = {"traceparent": f"00-{TRACE:032x}-{REMOTE.span_id:016x}-01"}
        with OtlpReceiver() as receiver:
            telemetry = _telemetry(receiver)
            try:
                with telemetry.attempt(_attempt(parent)) as attempt:
                    trace.get_current_span().set_attribute("user.rows", 3)
                    with user.get_tracer("user").start_as_current_span("user work") as mine:
                        pass
                    attempt.finished()
                async with asyncio.timeout(10):
                    spans = await receiver.wait_for(lambda s: bool(s))
            finally:
                shutdown_telemetry()
        (process,) = spans
        assert process.name == "process work" and process.parent_span_id == f"{REMOTE.span_id:016x}"
        assert process.attributes["user.rows"] == 3
        assert process.attributes["messaging.consumer.group.name"] == "run_f_work"
        assert f"{mine.parent.span_id:016x}" == process.span_id  # type: ignore[union-attr]
        assert trace.get_current_span() is trace.INVALID_SPAN  # the attempt's scope was left

    async def test_a_dropping_sampler_exports_nothing_but_context_still_flows(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTEL_TRACES_SAMPLER is the SDK's: always_off records nothing, headers say so."""
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        invocation = _attempt({}).invocation
        with OtlpReceiver() as receiver:
            telemetry = _telemetry(receiver)
            try:
                assert telemetry.tracing is not None and not telemetry.tracing.sampled(TRACE)
                with telemetry.attempt(_attempt({})) as attempt:
                    publish = attempt.publish(PublishInput("f", "tb.f.mailbox.e1", invocation))
                    with publish as headers:
                        assert headers is not None
                        assert not int(headers["traceparent"][-2:], 16) & 1  # not sampled
                    attempt.finished()
                telemetry.force_flush()
            finally:
                shutdown_telemetry()
        assert receiver.snapshot() == []

    def test_the_default_sampler_follows_the_parent_without_being_asked(self) -> None:
        assert tracing._follows_parent(DEFAULT_ON)
        always = ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
        assert not tracing._follows_parent(always)
        assert not tracing._follows_parent(ALWAYS_ON)

    def test_a_full_batch_is_posted_alone_while_later_spans_wait_for_theirs(self) -> None:
        """Spans that arrive while a batch is being posted wait for a whole batch (or the
        delay): posting them at once made a post every few milliseconds under load."""
        posted: list[int] = []
        first_post_started = threading.Event()
        release_first_post = threading.Event()
        second_post = threading.Event()

        class Exporter(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                posted.append(len(spans))
                if len(posted) == 1:
                    first_post_started.set()
                    assert release_first_post.wait(10)
                else:
                    second_post.set()
                return SpanExportResult.SUCCESS

        class Wake(threading.Event):
            """The export thread's wake-up, telling when the thread is back waiting on it."""

            def __init__(self) -> None:
                super().__init__()
                self.idle = threading.Event()

            def wait(self, timeout: float | None = None) -> bool:
                self.idle.set()
                return super().wait(timeout)

        recorder = SpanRecorder([Exporter()], resource=RESOURCE, scope=SCOPE, max_queue=100,
                                max_batch=4, delay=3600)  # fmt: skip
        try:
            wake, started_with = Wake(), recorder._wake
            recorder._wake = wake
            started_with.set()  # the thread moves over to the watched event
            assert wake.idle.wait(10)
            span_ids = iter(range(1, 100))
            for _ in range(4):
                _span(recorder, "s", span_id=next(span_ids)).end()  # type: ignore[arg-type]
            assert first_post_started.wait(10)
            for _ in range(3):  # arrive during the first post: not yet a batch
                _span(recorder, "s", span_id=next(span_ids)).end()  # type: ignore[arg-type]
            wake.idle.clear()
            release_first_post.set()
            assert wake.idle.wait(10)  # the first post is done and the thread waits again
            assert posted == [4]
            _span(recorder, "s", span_id=next(span_ids)).end()  # type: ignore[arg-type]
            assert second_post.wait(10)
            assert posted == [4, 4]
        finally:
            recorder.shutdown()

    def test_a_full_queue_drops_new_spans_and_counts_them(self) -> None:
        recorder = SpanRecorder([], resource=RESOURCE, scope=SCOPE, max_queue=2, max_batch=10,
                                delay=3600)  # fmt: skip
        try:
            with structlog.testing.capture_logs() as logs:
                for span_id in (1, 2, 3, 4):
                    _span(recorder, "s", span_id=span_id).end()  # type: ignore[arg-type]
                recorder.shutdown()
            assert recorder.dropped == 2
            # Said once when it starts, and the total at shutdown: never silently.
            assert [(e["event"], e.get("dropped")) for e in logs] == [
                ("spans_dropped_queue_full", None),
                ("spans_dropped_total", 2),
            ]
        finally:
            recorder.shutdown()
