"""Product events and observation events never mix.

The runtime stream holds only what chunks put into it, while the Event Center sees every
lifecycle event; and nothing a chunk puts into the runtime stream reaches OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest

from triggerbus import TriggerFlow
from triggerbus._runtime import get_runtime
from triggerbus.bus.subjects import Subjects
from triggerbus.contracts.messages import StreamEnded, StreamItem, stream_decoder
from triggerbus.observability import events
from triggerbus.observability.telemetry import configure_telemetry, shutdown_telemetry
from triggerbus.observability.testing import OtlpReceiver

MARKER = "product-only-7f3a"


def _flow(name: str) -> TriggerFlow:
    flow = TriggerFlow(name=name)

    @flow.chunk("produce")
    async def produce(data):
        await data.async_put_into_stream({"secret": MARKER, "n": 1})
        data.state.set("seen", MARKER)
        await data.async_emit("produced", MARKER)
        await data.async_put_into_stream({"secret": MARKER, "n": 2})
        return MARKER

    @flow.chunk("listen")
    async def listen(data):
        return f"heard {data.value}"

    @flow.chunk("explode")
    async def explode(data):
        raise ValueError("boom")

    flow.to(produce).end()
    flow.when("produced").to(listen)
    flow.when("detonate").to(explode)
    return flow


@pytest.fixture
async def observed(runtime) -> AsyncIterator[tuple[list[events.Event], OtlpReceiver]]:
    """Every Event Center event of this process, and a receiver the process exports to."""
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append)
    with OtlpReceiver() as receiver:
        configure_telemetry(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
            }
        )
        try:
            yield seen, receiver
        finally:
            shutdown_telemetry()
            unsubscribe()


async def _stream_messages(nats_url: str, subject: str) -> list[Any]:
    """Every message of one runtime stream subject, decoded strictly, up to its end."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
        messages: list[Any] = []
        while not messages or not isinstance(messages[-1], StreamEnded):
            msg = await sub.next_msg(timeout=10)
            messages.append(stream_decoder.decode(msg.data))
        return messages
    finally:
        await nc.close()


@pytest.fixture
async def timeline(
    observed: tuple[list[events.Event], OtlpReceiver], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[Any]]:
    """Event Center events, and ``("published", msg_id)`` for each invocation the execution
    host publishes, in the order they happen on this loop. The publishes still go to NATS."""
    entries: list[Any] = []
    unsubscribe = events.subscribe(entries.append)
    bus = (await get_runtime()).bus
    real = bus.publish_pipelined

    async def recorded(subject: str, payload: bytes, *, msg_id: str, **options: Any) -> Any:
        if ".run." in subject:
            entries.append(("published", msg_id))
        return await real(subject, payload, msg_id=msg_id, **options)

    monkeypatch.setattr(bus, "publish_pipelined", recorded)
    try:
        yield entries
    finally:
        unsubscribe()


async def test_runtime_stream_holds_only_product_items_while_event_center_saw_every_event(
    observed: tuple[list[events.Event], OtlpReceiver],
    timeline: list[Any],
    nats_url: str,
    prefix: str,
) -> None:
    seen, receiver = observed
    flow = _flow("observed_ok")
    async with asyncio.timeout(60):
        execution = flow.create_execution(auto_close_timeout=0)
        result = await execution.async_start("go")
        messages = await _stream_messages(
            nats_url, Subjects(prefix).stream(flow.name, execution.execution_id)
        )
        spans = await receiver.wait_for(
            lambda spans: any(s.name == "execution observed_ok" for s in spans)
        )

    assert result["$final_result"] == MARKER
    # The runtime stream: the two product items, then its end. No lifecycle record.
    assert [type(m) for m in messages] == [StreamItem, StreamItem, StreamEnded]
    assert [m.value for m in messages[:2]] == [
        {"secret": MARKER, "n": 1},
        {"secret": MARKER, "n": 2},
    ]

    # The Event Center: every lifecycle event of the execution.
    mine = [e for e in seen if e.execution_id == execution.execution_id]
    kinds = [type(e) for e in mine]
    assert kinds[0] is events.ExecutionStarted and kinds[-1] is events.ExecutionClosed
    assert {
        events.ChunkInvoked,
        events.ChunkStarted,
        events.ChunkSucceeded,
        events.StateWritten,
        events.EventEmitted,
    } <= set(kinds)
    assert {e.chunk for e in mine if isinstance(e, events.ChunkSucceeded)} == {"produce", "listen"}
    # Each invocation is observed before it is published (so before any worker can start
    # it): the Event Center's ChunkInvoked precedes the bus publish of that invocation.
    invoked = {
        e.step: index
        for index, e in enumerate(timeline)
        if isinstance(e, events.ChunkInvoked) and e.execution_id == execution.execution_id
    }
    published = {
        int(entry[1].split(":")[1]): index
        for index, entry in enumerate(timeline)
        if isinstance(entry, tuple) and entry[1].startswith(f"{execution.execution_id}:")
    }
    assert len(invoked) == 2 and invoked.keys() <= published.keys()
    for step, index in invoked.items():
        assert index < published[step], f"step {step}'s invocation was published unobserved"
    closed = mine[-1]
    assert isinstance(closed, events.ExecutionClosed) and closed.status == "completed"
    trace_ids = {e.trace_id for e in mine}
    assert len(trace_ids) == 1 and "" not in trace_ids

    # Values never travel into observation: not into events, not into spans.
    assert MARKER not in json.dumps([msgspec.to_builtins(e) for e in mine])
    assert MARKER not in repr([(s.name, s.attributes, s.events) for s in spans])


async def test_event_center_sees_failures_and_dead_letters(
    observed: tuple[list[events.Event], OtlpReceiver], nats_url: str, prefix: str
) -> None:
    seen, _ = observed
    flow = _flow("observed_fail")
    async with asyncio.timeout(60):
        execution = flow.create_execution(auto_close=False)
        await execution.async_start("go")
        with pytest.raises(Exception, match="boom"):
            await execution.async_emit("detonate")
        # An invocation nobody can read is dead-lettered, and the Event Center hears of it.
        runtime = await get_runtime()
        token = flow.graph().chunks[0].token
        await runtime.bus.publish(Subjects(prefix).run(flow.name, token), b"not an invocation")
        await _wait_event(seen, lambda e: isinstance(e, events.ChunkDeadLettered))

    mine = [e for e in seen if e.execution_id == execution.execution_id]
    failed = [e for e in mine if isinstance(e, events.ChunkFailed)]
    assert [(e.chunk, e.error_type) for e in failed] == [("explode", "ValueError")]
    assert any(isinstance(e, events.ExecutionFailed) and e.chunk == "explode" for e in mine)
    assert [e.status for e in mine if isinstance(e, events.ExecutionClosed)] == ["failed"]
    letters = [e for e in seen if isinstance(e, events.ChunkDeadLettered)]
    assert letters[0].chunk == flow.graph().chunks[0].name and "invalid" in letters[0].reason


async def _wait_event(seen: list[events.Event], predicate: Any) -> None:
    """Wait until an event matching ``predicate`` has arrived (the caller bounds the wait)."""
    arrived = asyncio.Event()
    unsubscribe = events.subscribe(lambda _: arrived.set())
    try:
        while not any(predicate(e) for e in seen):
            await arrived.wait()
            arrived.clear()
    finally:
        unsubscribe()


async def test_pause_and_resume_are_observed_but_only_their_items_reach_the_stream(
    observed: tuple[list[events.Event], OtlpReceiver],
) -> None:
    """The Event Center sees the interrupt, the execution waiting and resumed; the runtime
    stream gets only TriggerFlow's pause/resume product items."""
    from tests._helpers import load_module

    seen, _ = observed
    flow = load_module("tests/flows/approval.py", "approval_observed").flow
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(30):
        await execution.async_start("post-9")
        await execution.async_continue_with("approve", {"ok": True})
        await execution.async_close()
        items = [item async for item in execution.get_async_runtime_stream(timeout=5)]
    mine = [e for e in seen if e.execution_id == execution.id]
    kinds = [type(e).__name__ for e in mine]
    assert "Interrupted" in kinds
    assert kinds.index("Interrupted") < kinds.index("ExecutionWaiting")
    assert kinds.index("ExecutionWaiting") < kinds.index("ExecutionResumed")
    actions = [
        i.get("action") for i in items if isinstance(i, dict) and i.get("type") == "interrupt"
    ]
    assert actions == ["pause", "resume"]
    assert not any(isinstance(i, dict) and "execution_waiting" in str(i) for i in items)
