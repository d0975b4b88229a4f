"""Trace context in every message, a whole trace whoever starts or resumes an execution, metrics,
configuration by OTEL_*, and nothing at all when telemetry is off."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from triggerbus import TriggerFlow
from triggerbus._runtime import close_runtime, get_runtime
from triggerbus.bus.subjects import Subjects
from triggerbus.contracts.messages import InvokeChunk
from triggerbus.errors import ConfigurationError
from triggerbus.observability import tracing
from triggerbus.observability.logging import add_trace_ids
from triggerbus.observability.telemetry import (
    MailboxInput,
    PublishInput,
    configure_telemetry,
    current,
    shutdown_telemetry,
)
from triggerbus.observability.testing import OtlpReceiver, ReceivedSpan

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
FOREIGN_TRACE = "0af7651916cd43dd8448eb211c80319c"


def _flow(name: str) -> TriggerFlow:
    flow = TriggerFlow(name=name)

    @flow.chunk("first")
    async def first(data):
        await data.async_put_into_stream({"n": data.value})
        return data.value

    @flow.chunk("later")
    async def later(data):
        return f"later {data.value}"

    flow.to(first).end()
    flow.when("resume").to(later)
    return flow


@pytest.fixture
async def receiver(runtime) -> AsyncIterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        configure_telemetry(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "200",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "OTEL_SERVICE_NAME": "tracing-test",
            }
        )
        try:
            yield receiver
        finally:
            shutdown_telemetry()


async def _stream_headers(nats_url: str, subject: str) -> list[dict[str, str]]:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
        headers: list[dict[str, str]] = []
        while True:
            msg = await sub.next_msg(timeout=10)
            headers.append(dict(msg.headers or {}))
            if json.loads(msg.data)["kind"] == "end":
                return headers
    finally:
        await nc.close()


async def _publish_start(
    nats_url: str, prefix: str, flow: str, execution_id: str, headers: dict[str, str]
) -> None:
    """Start an execution as another service would: plain JSON on the mailbox subject."""
    nc = await nats.connect(nats_url)
    try:
        start = {"kind": "start", "id": f"{execution_id}:start", "execution_id": execution_id,
                 "value": 1, "auto_close": False}  # fmt: skip
        await nc.jetstream().publish(
            Subjects(prefix).mailbox(flow, execution_id),
            json.dumps(start).encode(),
            headers=headers or None,
        )
    finally:
        await nc.close()


def _named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


async def _published(
    sends: list[tuple[Any, str, bool]],
    *,
    headers: dict[str, str],
    export: str = "process",
    transition: tuple[Any, Any] | None = None,
) -> tuple[list[ReceivedSpan], list[dict[str, str] | None], Any]:
    """Publish ``sends`` (message, subject, fails) while one mailbox message with ``headers``
    is handled (after ``transition``'s before and after snapshots, if given); returns the
    spans the collector got, the headers each publish was given, and the stored snapshot."""
    with OtlpReceiver() as receiver:
        telemetry = configure_telemetry(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRICS_EXPORTER": "none",
             "OTEL_BSP_SCHEDULE_DELAY": "50", "TRIGGERBUS_SPAN_EXPORT": export}
        )  # fmt: skip
        try:
            written: list[dict[str, str] | None] = []
            stored = None
            with telemetry.mailbox(MailboxInput("flow", "e1", headers)) as handling:
                if transition is not None:
                    stored = handling.transition(*transition)
                for message, subject, fails in sends:
                    publish = handling.publish(PublishInput("flow", subject, message))
                    with contextlib.suppress(ConnectionError), publish as given:
                        written.append(given)
                        if fails:
                            raise ConnectionError("no route")
            async with asyncio.timeout(10):
                spans = await receiver.wait_for(lambda spans: len(spans) >= len(sends))
        finally:
            shutdown_telemetry()
    return spans, written, stored


def _invoke(step: int) -> InvokeChunk:
    return InvokeChunk(id=f"e1:{step}:0", flow="flow", execution_id="e1", fingerprint="f",
                       chunk="c", step=step)  # fmt: skip


class TestTelemetryOff:
    def test_no_endpoint_or_sdk_disabled_means_no_tracing_and_no_metrics(self) -> None:
        """Opt-in: nothing configured, or OTEL_SDK_DISABLED, builds no provider at all."""
        try:
            for environ in (
                {},
                {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"},
                {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                 "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"},
            ):  # fmt: skip
                telemetry = configure_telemetry(environ)
                assert telemetry.tracing is None and telemetry.metrics is None
                publish = telemetry.publish(PublishInput("f", "s", object()))
                assert publish is telemetry.publish(PublishInput("g", "t", object()))
                with publish as headers:
                    assert headers is None
        finally:
            shutdown_telemetry()

    async def test_messages_carry_no_trace_headers_when_off(
        self, runtime, nats_url: str, prefix: str
    ) -> None:
        configure_telemetry({})
        try:
            flow = _flow("untraced")
            async with asyncio.timeout(30):
                execution = flow.create_execution(auto_close_timeout=0)
                await execution.async_start(3)
                headers = await _stream_headers(
                    nats_url, Subjects(prefix).stream(flow.name, execution.execution_id)
                )
        finally:
            shutdown_telemetry()
        assert headers and all(set(h) == {"Nats-Msg-Id"} for h in headers)


class TestTraceContext:
    async def test_every_message_carries_the_execution_trace(
        self, receiver: OtlpReceiver, nats_url: str, prefix: str
    ) -> None:
        flow = _flow("headers")
        async with asyncio.timeout(30):
            execution = flow.create_execution(auto_close_timeout=0)
            await execution.async_start(3)
            headers = await _stream_headers(
                nats_url, Subjects(prefix).stream(flow.name, execution.execution_id)
            )
            spans = await receiver.wait_for(lambda s: bool(_named(s, "execution headers")))
        (own,) = _named(spans, "execution headers")
        assert headers and all(h["traceparent"].split("-")[1] == own.trace_id for h in headers)
        assert own.parent_span_id == ""  # nobody had a span open: the execution is the root

    async def test_plain_nats_start_with_a_traceparent_joins_the_callers_trace(
        self, receiver: OtlpReceiver, nats_url: str, prefix: str
    ) -> None:
        flow = _flow("foreign_caller")
        await (await get_runtime()).ensure_flow(flow)
        async with asyncio.timeout(30):
            caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
            await _publish_start(nats_url, prefix, flow.name, "ext-1", caller)
            await _close(flow, "ext-1")
            spans = await receiver.wait_for(lambda s: bool(_named(s, "execution foreign_caller")))
        (own,) = _named(spans, "execution foreign_caller")
        assert own.trace_id == CALLER_TRACE and own.parent_span_id == CALLER_SPAN
        (invoke,) = _named(spans, "invoke first")
        assert invoke.trace_id == CALLER_TRACE and invoke.parent_span_id == own.span_id

    async def test_plain_nats_start_without_traceparent_and_a_late_resume_make_one_trace(
        self, receiver: OtlpReceiver, nats_url: str, prefix: str
    ) -> None:
        """The trace is fixed at the start and kept in the snapshot: a host that loads the
        execution cold, much later, continues it; a resume carrying another trace is linked."""
        flow = _flow("resumed")
        await (await get_runtime()).ensure_flow(flow)
        async with asyncio.timeout(30):
            await _publish_start(nats_url, prefix, flow.name, "ext-2", {})
            await receiver.wait_for(lambda s: bool(_named(s, "process first")))
            await close_runtime()  # every host forgets the execution: the next one loads it cold
            await (await get_runtime()).ensure_flow(flow)
            nc = await nats.connect(nats_url)
            try:
                emit = {"kind": "emit", "id": "ext-2:resume", "execution_id": "ext-2",
                        "event": "resume", "value": 2}  # fmt: skip
                await nc.jetstream().publish(
                    Subjects(prefix).mailbox(flow.name, "ext-2"),
                    json.dumps(emit).encode(),
                    headers={"traceparent": f"00-{FOREIGN_TRACE}-{CALLER_SPAN}-01"},
                )
            finally:
                await nc.close()
            await receiver.wait_for(lambda s: bool(_named(s, "process later")))
            await _close(flow, "ext-2")
            spans = await receiver.wait_for(lambda s: bool(_named(s, "execution resumed")))
        (own,) = _named(spans, "execution resumed")
        assert own.parent_span_id == ""
        mine = [s for s in spans if s.attributes.get("triggerbus.execution_id") == "ext-2"]
        assert {s.trace_id for s in mine} == {own.trace_id}
        (invoke_later,) = _named(spans, "invoke later")
        assert invoke_later.parent_span_id == own.span_id
        assert [(t, a["triggerbus.link"]) for t, _, a in invoke_later.links] == [
            (FOREIGN_TRACE, "origin")
        ]
        assert own.start_ns <= min(s.start_ns for s in mine)


async def _close(flow: TriggerFlow, execution_id: str) -> Any:
    """Close an execution started by someone else, through the documented mailbox."""
    runtime = await get_runtime()
    nc = await nats.connect(runtime.bus.url)
    try:
        close = {"kind": "close", "id": f"{execution_id}:close", "execution_id": execution_id}
        await nc.jetstream().publish(
            runtime.subjects.mailbox(flow.name, execution_id), json.dumps(close).encode()
        )
    finally:
        await nc.close()


class TestMetrics:
    async def test_chunk_and_execution_metrics_and_backlog_are_exported(
        self, receiver: OtlpReceiver
    ) -> None:
        flow = _flow("metered")
        async with asyncio.timeout(30):
            await flow.create_execution(auto_close_timeout=0).async_start(1)
            await asyncio.to_thread(current().force_flush)
            names = await receiver.wait_for_metrics(
                "triggerbus.chunk.duration",
                "triggerbus.chunk.invocations",
                "triggerbus.executions",
                "triggerbus.chunk.backlog",
            )
        assert "triggerbus.chunk.duration" in names
        statuses = {
            attrs.get("status")
            for name, attrs, _ in receiver.metric_points
            if name == "triggerbus.executions"
        }
        assert {"started", "completed"} <= statuses
        backlog = [p for p in receiver.metric_points if p[0] == "triggerbus.chunk.backlog"]
        assert {attrs["triggerbus.chunk"] for _, attrs, _ in backlog} == {"first", "later"}


class TestConfiguration:
    def test_endpoints_follow_the_otlp_rules(self) -> None:
        base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
        assert tracing.otlp_endpoint(base, "traces", "http/protobuf") == (
            "http://collector:4318/v1/traces"
        )
        assert tracing.otlp_endpoint(base, "metrics", "grpc") == "http://collector:4318/"
        specific = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"}
        assert tracing.otlp_endpoint(specific, "traces", "http/protobuf") == "http://t:1/x"

    def test_grpc_is_supported_and_unknown_protocols_are_refused(self) -> None:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
               "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_METRICS_EXPORTER": "none"}  # fmt: skip
        try:
            assert configure_telemetry(env).tracing is not None
            with pytest.raises(ConfigurationError, match="http/protobuf or grpc"):
                configure_telemetry({**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
        finally:
            shutdown_telemetry()

    def test_an_untraced_start_is_sampled_once_for_the_whole_execution(self) -> None:
        """With no caller span the sampler decides at the start; the caller's flag otherwise."""
        kept = tracing.execution_trace({}, "e1", lambda trace_id: True)
        dropped = tracing.execution_trace({}, "e1", lambda trace_id: False)
        assert kept["traceparent"].endswith("-01") and dropped["traceparent"].endswith("-00")
        assert kept["traceparent"][:-2] == dropped["traceparent"][:-2]  # same ids either way
        caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
        assert tracing.execution_trace(caller, "e1", lambda trace_id: True)[
            "traceparent"
        ].startswith(f"00-{CALLER_TRACE}-")
        assert tracing.execution_trace(caller, "e1")["traceparent"].endswith("-00")


class TestTraceparentParsing:
    @pytest.mark.parametrize(
        "headers",
        [
            {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00", "tracestate": "vendor=x1,b=2"},
        ],
    )
    def test_a_valid_context_is_written_back_as_it_was_read(self, headers: dict) -> None:
        parent = tracing.parent_of(headers)
        assert parent is not None
        assert tracing.inject_parent(parent, {}) == headers
        assert parent.span_context().trace_id == int(CALLER_TRACE, 16)

    @pytest.mark.parametrize(
        "header",
        [
            f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",  # uppercase hex
            f"00-{'0' * 32}-{CALLER_SPAN}-01",  # zero trace id
            f"00-{CALLER_TRACE}-{'0' * 16}-01",  # zero span id
            f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",  # forbidden version
            f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra",  # version 00 takes nothing after
            "garbage",
        ],
    )
    def test_what_the_w3c_propagator_refuses_is_refused(self, header: str) -> None:
        assert tracing.parent_of({"traceparent": header}) is None

    def test_the_snapshots_trace_fields_are_read_whatever_the_propagators(self) -> None:
        """They are triggerbus's own record in the W3C form, not a carrier: a process whose
        propagators do not read ``traceparent`` still finds the execution span in them."""
        from opentelemetry import propagate
        from opentelemetry.propagators.textmap import DefaultGetter, TextMapPropagator

        class Other(TextMapPropagator):
            def extract(self, carrier, context=None, getter=DefaultGetter()):  # noqa: B008
                return context

            def inject(self, carrier, context=None, setter=None) -> None:
                return None

            @property
            def fields(self) -> set[str]:
                return {"x-other-trace"}

        stored = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                  "tracestate": "vendor=x1"}  # fmt: skip
        before = propagate.get_global_textmap()
        propagate.set_global_textmap(Other())
        try:
            assert tracing.parent_of(stored) is None  # a carrier goes through the propagators
            for fields in (stored, {"traceparent": stored["traceparent"]}):
                own = tracing.execution_context(fields)
                assert own is not None and own.span_id == int(CALLER_SPAN, 16)
                assert own.state == fields.get("tracestate", "")
        finally:
            propagate.set_global_textmap(before)

    def test_a_later_version_keeps_its_known_fields(self) -> None:
        parent = tracing.parent_of({"traceparent": f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-more"})
        assert parent is not None and parent.span_id == int(CALLER_SPAN, 16)

    async def test_producer_spans_name_their_parent_and_record_a_failed_publish(self) -> None:
        """A producer span is recorded without a span object unless its publish fails; both
        kinds reach the collector with the parent, ids and outcome they had."""
        headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        sends = [(_invoke(1), "tb.flow.run.c", False), (_invoke(2), "tb.flow.run.c", True)]
        spans, sent, _ = await _published(sends, headers=headers)
        by_step = {span.attributes["triggerbus.step"]: span for span in spans}
        for step, written in ((1, sent[0]), (2, sent[1])):
            span = by_step[step]
            assert written == {"traceparent": f"00-{CALLER_TRACE}-{span.span_id}-01"}
            assert (span.trace_id, span.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
            assert span.name == "invoke c" and span.kind == 4  # SPAN_KIND_PRODUCER
        assert by_step[1].ok and by_step[1].events == []
        assert not by_step[2].ok and by_step[2].events == ["exception"]

    @pytest.mark.parametrize("export", ["process", "thread"])
    async def test_producer_spans_carry_the_messaging_attributes(self, export: str) -> None:
        """Recorded as the message's fields and built into a span by the export side (the
        export process, or this process's export thread), or a span object when the publish
        fails: either way the same name and attributes."""
        from triggerbus.contracts.messages import EmitEvent

        emits = [EmitEvent(id="e1:4:1", execution_id="e1", event="Ev", step=4),
                 EmitEvent(id="e1:x:2", execution_id="e1", event="Ev")]  # fmt: skip
        targets = [(_invoke(4), "tb.flow.run.c"), *((e, "tb.flow.exec.e1") for e in emits)]
        sends = [(message, subject, fails) for fails in (False, True)
                 for message, subject in targets]  # fmt: skip
        headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        spans, _, _ = await _published(sends, headers=headers, export=export)
        common = {"messaging.system": "nats", "messaging.operation.type": "send",
                  "triggerbus.flow": "flow", "triggerbus.execution_id": "e1"}  # fmt: skip
        expected = {
            "e1:4:0": ("invoke c", {**common, "messaging.destination.name": "tb.flow.run.c",
                                    "messaging.message.id": "e1:4:0",
                                    "messaging.operation.name": "invoke",
                                    "triggerbus.chunk": "c", "triggerbus.step": 4}),
            "e1:4:1": ("emit Ev", {**common, "messaging.destination.name": "tb.flow.exec.e1",
                                   "messaging.message.id": "e1:4:1",
                                   "messaging.operation.name": "emit",
                                   "triggerbus.event": "Ev", "triggerbus.step": 4}),
            "e1:x:2": ("emit Ev", {**common, "messaging.destination.name": "tb.flow.exec.e1",
                                   "messaging.message.id": "e1:x:2",
                                   "messaging.operation.name": "emit",
                                   "triggerbus.event": "Ev"}),
        }  # fmt: skip
        assert len(spans) == 6
        for span in spans:
            name, attributes = expected[span.attributes["messaging.message.id"]]
            assert (span.name, span.kind, span.attributes) == (name, 4, attributes)
            assert (span.trace_id, span.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
        assert sorted(span.ok for span in spans) == [False] * 3 + [True] * 3

    async def test_an_invocation_a_join_releases_links_the_newest_arrivals(self) -> None:
        """Past the link limit (128) the oldest arrivals are dropped, as the SDK's bounded
        list drops them, whether the producer span is a record or, its publish failing, a
        span object."""
        from triggerbus.contracts.snapshot import Snapshot

        arrivals = ",".join(f"{n:016x}" for n in range(1, 131))
        own = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        before = Snapshot(flow="flow", execution_id="e1", fingerprint="f", status="running",
                          joins={"k": {"n": 130}},
                          trace={"traceparent": own, "join:k": arrivals})  # fmt: skip
        after = Snapshot(flow="flow", execution_id="e1", fingerprint="f", status="running",
                         trace=before.trace)  # fmt: skip
        headers = {"traceparent": f"00-{CALLER_TRACE}-{130:016x}-01"}  # the last arrival
        sends = [(_invoke(1), "tb.flow.run.c", False), (_invoke(2), "tb.flow.run.c", True)]
        spans, _, stored = await _published(sends, headers=headers, transition=(before, after))
        assert "join:k" not in stored.trace
        assert len(spans) == 2
        for span in spans:
            assert [link[1] for link in span.links] == [f"{n:016x}" for n in range(3, 131)]
            assert {link[0] for link in span.links} == {CALLER_TRACE}
            assert span.links[0][2] == {"triggerbus.link": "join_arrival"}

    def test_log_lines_written_while_a_message_is_handled_name_its_trace(self) -> None:
        """The execution host's log lines carry the trace of the message it is handling."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
               "OTEL_METRICS_EXPORTER": "none", "TRIGGERBUS_SPAN_EXPORT": "thread"}  # fmt: skip
        telemetry = configure_telemetry(env)
        try:
            headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
            with telemetry.mailbox(MailboxInput("flow", "e1", headers)):
                inside = add_trace_ids(None, "info", {})
            outside = add_trace_ids(None, "info", {})
        finally:
            shutdown_telemetry()
        assert inside == {"trace_id": CALLER_TRACE, "span_id": CALLER_SPAN}
        assert outside == {}


class TestJoinLinks:
    def test_arrivals_are_kept_as_span_ids_and_linked_in_the_executions_trace(self) -> None:
        own = tracing.Parent(int(CALLER_TRACE, 16), 0x1, 1, "vendor=x1")
        stored: dict[str, str] = {}
        for span_id in range(1, tracing.MAX_JOIN_LINKS + 3):
            tracing.record_arrival(stored, "k", tracing.Parent(own.trace_id, span_id, 1, ""))
        assert stored["join:k"].split(",")[0] == f"{3:016x}"  # the oldest two dropped
        # A snapshot written before arrivals were span ids holds whole traceparents.
        stored["join:k"] += f",00-{CALLER_TRACE}-{CALLER_SPAN}-01,not-a-span"
        links = tracing.join_links(stored, "k", own)
        assert len(links) == tracing.MAX_JOIN_LINKS + 1
        assert [link.span_id for link in links[:2]] == [(3).to_bytes(8, "big"),
                                                        (4).to_bytes(8, "big")]  # fmt: skip
        assert links[-1].span_id.hex() == CALLER_SPAN
        assert {link.trace_id.hex() for link in links} == {CALLER_TRACE}
        assert all(link.remote for link in links)
        assert links[0].attributes == {"triggerbus.link": "join_arrival"}
        # Where OpenTelemetry's own objects are needed (a span object, a sampler):
        otel = tracing.otel_links(links, own)
        assert [link.context.span_id for link in otel[:2]] == [3, 4]
        assert otel[0].context.trace_state.to_header() == "vendor=x1"
        assert otel[0].context.trace_flags.sampled and otel[0].context.is_remote
        assert dict(otel[0].attributes) == {"triggerbus.link": "join_arrival"}

    async def test_when_and_for_each_joins_link_every_arrival(self, receiver: OtlpReceiver) -> None:
        """A ``when`` in and mode and a ``for_each`` end fan in: the invocation they release
        links the arrivals that came before the last one (which is its parent)."""
        flow = TriggerFlow(name="joins")

        @flow.chunk("items")
        async def items(data):
            return [1, 2, 3]

        @flow.chunk("double")
        async def double(data):
            return data.value * 2

        @flow.chunk("after_loop")
        async def after_loop(data):
            await data.async_emit("A", 1)
            await data.async_emit("B", 2)
            return data.value

        @flow.chunk("both")
        async def both(data):
            return data.value

        flow.to(items).for_each().to(double).end_for_each().to(after_loop).end()
        flow.when(["A", "B"]).to(both)
        async with asyncio.timeout(30):
            result = await flow.create_execution(auto_close_timeout=0).async_start(None)
            spans = await receiver.wait_for(lambda s: bool(_named(s, "execution joins")))
        assert result["$final_result"] == [2, 4, 6]
        by_id = {s.span_id: s for s in spans}

        (invoke_after,) = _named(spans, "invoke after_loop")
        arrivals = {s.span_id for s in _named(spans, "process double")}
        assert len(arrivals) == 3 and invoke_after.parent_span_id in arrivals
        # The loop's join opens at the split: the span that opened it is linked too.
        (split,) = _named(spans, "process items")
        assert {span_id for _, span_id, _ in invoke_after.links} == (
            arrivals - {invoke_after.parent_span_id}
        ) | {split.span_id}

        (invoke_both,) = _named(spans, "invoke both")
        emits = {s.span_id for s in spans if s.name in ("emit A", "emit B")}
        assert by_id[invoke_both.parent_span_id].name == "emit B"
        assert {span_id for _, span_id, _ in invoke_both.links} == emits - {
            invoke_both.parent_span_id
        }


class TestOtlpOverGrpc:
    async def test_a_flow_traced_over_grpc_exports_its_whole_trace_and_metrics(
        self, runtime
    ) -> None:
        """``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` (Jaeger's and collectors' port 4317): the SDK's
        gRPC exporters run in the process on SDK span objects, and the trace they send has the
        same shape as over HTTP: the execution span, each invocation's producer span under it,
        and the attempt's consumer span under that."""
        with OtlpReceiver(grpc=True) as receiver:
            configure_telemetry(
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                    "OTEL_METRIC_EXPORT_INTERVAL": "200",
                    "OTEL_BSP_SCHEDULE_DELAY": "50",
                    "OTEL_SERVICE_NAME": "grpc-test",
                }
            )
            try:
                async with asyncio.timeout(30):
                    await _flow("over_grpc").create_execution(auto_close_timeout=0).async_start(1)
                    await asyncio.to_thread(current().force_flush)
                    spans = await receiver.wait_for(
                        lambda spans: any(s.name.startswith("execution ") for s in spans)
                        and bool(_named(spans, "process first"))
                    )
                    await receiver.wait_for_metrics("triggerbus.chunk.duration")
            finally:
                shutdown_telemetry()
        assert receiver.requests >= 2 and receiver.bytes_received == 0, "not over HTTP"
        (execution,) = [s for s in spans if s.name == "execution over_grpc"]
        (invoke,) = _named(spans, "invoke first")
        (attempt,) = _named(spans, "process first")
        assert {s.trace_id for s in (execution, invoke, attempt)} == {execution.trace_id}
        assert invoke.parent_span_id == execution.span_id
        assert attempt.parent_span_id == invoke.span_id
        assert {s.service for s in spans} == {"grpc-test"}
