"""Outcomes handed to the execution host of the same process (actors/hand_off.py), against a
real nats-server: they skip the mailbox, an outcome with effects in flight follows them through
it, a stopped host hands outcomes back, and a chunk whose worker kept dying gives up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests._helpers import configure_pure_client
from tests.flows.pure_pair import flow as pure_pair
from triggerbus import TriggerFlow
from triggerbus._runtime import close_runtime, configure
from triggerbus.actors.chunk_host import CRASH_REDELIVERIES, ChunkHost
from triggerbus.actors.execution_host import ExecutionHost
from triggerbus.actors.hosted import HostedFlow
from triggerbus.bus.connection import ConnectOptions
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.provision import ConsumerPolicy
from triggerbus.bus.replies import ReplyRouter
from triggerbus.bus.subjects import Subjects
from triggerbus.errors import ChunkFailedError
from triggerbus.observability.telemetry import configure_telemetry, shutdown_telemetry
from triggerbus.observability.testing import OtlpReceiver


@asynccontextmanager
async def client_only(nats_url: str, prefix: str) -> AsyncIterator[Bus]:
    """This process's runtime reduced to a pure client, and a bus for the hosts."""
    configure_pure_client(nats_url, prefix)
    bus = await Bus.open(ConnectOptions(servers=[nats_url]), Subjects(prefix))
    try:
        yield bus
    finally:
        await close_runtime()
        configure(None)
        await bus.close()


@asynccontextmanager
async def hosted(
    bus: Bus, flow: TriggerFlow, *, linked: bool = True, chunks: bool = True
) -> AsyncIterator[ExecutionHost]:
    """An execution host and (if ``chunks``) a chunk host for ``flow``, the chunk host handing
    outcomes to the execution host when ``linked``, as a worker's are."""
    replies = ReplyRouter(bus.nc)
    await replies.start()
    flow_hosted = HostedFlow(flow.graph(), flow.handlers())
    executions = ExecutionHost(bus, flow_hosted)
    hosts: list[ExecutionHost | ChunkHost] = [executions]
    if chunks:
        local = executions if linked else None
        hosts.append(ChunkHost(bus, flow_hosted, replies, executions=local))
    try:
        async with asyncio.TaskGroup() as group:
            for host in hosts:
                group.create_task(host.run())
            for host in hosts:
                await host.wait_ready()
            try:
                yield executions
            finally:
                for host in hosts:
                    host.shutdown()
    finally:
        await replies.stop()


async def mailbox_writes(bus: Bus) -> int:
    """Messages ever stored in the prefix's mailbox stream (acked ones leave it)."""
    info = await bus.js.stream_info(bus.subjects.exec_stream)
    return int(info.state.last_seq)


@pytest.mark.parametrize("linked", [True, False])
async def test_outcomes_of_a_local_execution_host_skip_the_mailbox(
    nats_url: str, prefix: str, linked: bool
) -> None:
    async with asyncio.timeout(30), client_only(nats_url, prefix) as bus:
        async with hosted(bus, pure_pair, linked=linked) as executions:
            result = await pure_pair.async_start(4)
            handed_off = executions.statistics().handed_off
        writes = await mailbox_writes(bus)
    assert result == {"$final_result": 50}
    # The start is the only mailbox message when the outcomes are handed off; without the
    # hand-off, both outcomes are stored there too.
    assert (handed_off, writes) == ((2, 1) if linked else (0, 3))


async def test_an_outcome_follows_its_unawaited_effects_through_the_mailbox(
    nats_url: str, prefix: str
) -> None:
    flow = TriggerFlow(name="hand_off_effects")

    @flow.chunk("remember")
    async def remember(data):
        data.set_state("seen", data.value)  # sent without waiting for it to be applied
        return data.value

    @flow.chunk("recall")
    async def recall(data):
        return [data.value, data.get_state("seen")]

    flow.to(remember).to(recall).end()
    seen: dict[bool, tuple[object, int, int]] = {}
    for linked in (False, True):
        run_prefix = f"{prefix}{int(linked)}"
        async with asyncio.timeout(30), client_only(nats_url, run_prefix) as bus:
            async with hosted(bus, flow, linked=linked) as executions:
                result = await flow.create_execution().async_start("v")
                handed_off = executions.statistics().handed_off
            seen[linked] = (result, handed_off, await mailbox_writes(bus))
    expected = {"seen": "v", "$final_result": ["v", "v"]}
    (plain, none, writes), (result, handed_off, linked_writes) = seen[False], seen[True]
    assert plain == result == expected
    # Only recall's outcome is handed off: remember's follows its state write.
    assert (none, handed_off) == (0, 1)
    assert linked_writes == writes - 1


async def test_an_execution_host_that_is_not_running_hands_outcomes_back(
    nats_url: str, prefix: str
) -> None:
    async with asyncio.timeout(30), client_only(nats_url, prefix) as bus:
        executions = ExecutionHost(bus, HostedFlow(pure_pair.graph(), pure_pair.handlers()))
        subject = bus.subjects.mailbox(pure_pair.name, "e1")
        assert await executions.take(subject, b"{}", {}) is False
        assert executions.statistics().handed_off == 0


async def test_a_chunk_whose_workers_kept_dying_fails_its_execution(
    nats_url: str, prefix: str
) -> None:
    """Past its attempts plus CRASH_REDELIVERIES deliveries without an outcome, an invocation
    fails the execution instead of running again."""
    flow = TriggerFlow(name="hand_off_doomed")
    ran: list[str] = []

    @flow.chunk("doomed")
    async def doomed(data):
        ran.append(data.value)
        return data.value

    flow.to(doomed).end()
    async with asyncio.timeout(60), client_only(nats_url, prefix) as bus:
        flow_hosted = HostedFlow(flow.graph(), flow.handlers())
        token = flow_hosted.index.chunks["doomed"].token
        subjects = bus.subjects
        # The chunk's durable consumer, taken by "workers" that die: each delivery is handed
        # back unfinished, as a dead worker's comes back after ack_wait.
        dying = await bus.pull_consumer(
            stream=subjects.run_stream,
            durable=subjects.run_consumer(flow.name, token),
            filter_subject=subjects.run(flow.name, token),
            policy=ConsumerPolicy(),
        )
        async with hosted(bus, flow, chunks=False):
            execution = flow.create_execution()
            started = asyncio.create_task(execution.async_start("x"))
            deliveries = 0
            while deliveries < 1 + CRASH_REDELIVERIES:
                for delivery in await dying.fetch(1, wait=5.0):
                    deliveries += 1
                    await delivery.nak()
            await dying.close()
            async with hosted(bus, flow):
                with pytest.raises(ChunkFailedError, match=r"delivered 7 times"):
                    await started
    assert ran == []


@pytest.mark.parametrize("linked", [True, False])
async def test_a_handed_off_outcome_keeps_the_trace_shape(
    nats_url: str, prefix: str, linked: bool
) -> None:
    """The invocation an outcome causes is a child of the attempt that produced it, whether the
    outcome went through the mailbox (with its headers) or was handed off in process."""
    with OtlpReceiver() as receiver:
        configure_telemetry(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRICS_EXPORTER": "none",
             "OTEL_BSP_SCHEDULE_DELAY": "50"}
        )  # fmt: skip
        try:
            async with asyncio.timeout(30), client_only(nats_url, prefix) as bus:
                async with hosted(bus, pure_pair, linked=linked) as executions:
                    await pure_pair.async_start(4)
                    handed_off = executions.statistics().handed_off
                spans = await receiver.wait_for(
                    lambda spans: {"process first", "process second", "invoke second"}
                    <= {s.name for s in spans}
                )
        finally:
            shutdown_telemetry()
    by_name = {s.name: s for s in spans}
    first, invoke, second = (by_name[n] for n in ("process first", "invoke second",
                                                   "process second"))  # fmt: skip
    assert handed_off == (2 if linked else 0)
    assert invoke.parent_span_id == first.span_id
    assert second.parent_span_id == invoke.span_id
    assert first.trace_id == invoke.trace_id == second.trace_id


async def test_an_invocation_waiting_on_its_hand_off_is_kept_alive(
    nats_url: str, prefix: str
) -> None:
    """A transition slower than the chunk consumer's ack_wait (a busy lane, a bus retrying)
    does not get the invocation redelivered: the heartbeat covers the hand-off's wait too."""
    flow = TriggerFlow(name="hand_off_slow")
    runs: list[int] = []
    ran_twice = asyncio.Event()

    @flow.chunk("once")
    async def once(data):
        runs.append(data.value)
        if len(runs) > 1:
            ran_twice.set()
        return data.value

    flow.to(once).end()
    held, released = asyncio.Event(), asyncio.Event()
    performed = 0

    class SlowExecutions(ExecutionHost):
        async def _perform(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal performed
            performed += 1
            if performed == 2:  # the chunk's outcome (the start's transition was the first)
                held.set()
                await released.wait()
            return await super()._perform(*args, **kwargs)

    async with asyncio.timeout(30), client_only(nats_url, prefix) as bus:
        replies = ReplyRouter(bus.nc)
        await replies.start()
        flow_hosted = HostedFlow(flow.graph(), flow.handlers())
        executions = SlowExecutions(bus, flow_hosted)
        chunks = ChunkHost(bus, flow_hosted, replies, executions=executions,
                           consumer_policy=ConsumerPolicy(ack_wait=1.0))  # fmt: skip
        try:
            async with asyncio.TaskGroup() as group:
                for host in (executions, chunks):
                    group.create_task(host.run())
                    await host.wait_ready()
                started = asyncio.create_task(flow.create_execution().async_start(7))
                await held.wait()
                # Three ack_waits with the outcome's transition held back: a redelivery would
                # run the chunk again.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ran_twice.wait(), 3.0)
                released.set()
                result = await started
                executions.shutdown()
                chunks.shutdown()
        finally:
            await replies.stop()
    assert result == {"$final_result": 7}
    assert runs == [7]
