"""The hosts against a real nats-server: compare-and-set conflicts are retried from the newer
snapshot, and a chunk host never runs more invocations of a chunk than its concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from triggerbus import TriggerFlow
from triggerbus._runtime import close_runtime, configure
from triggerbus.actors.chunk_host import ChunkHost
from triggerbus.actors.execution_host import ExecutionHost
from triggerbus.actors.hosted import MISMATCH_REDELIVERIES, HostedFlow, mismatch_delay
from triggerbus.bus.connection import ConnectOptions
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.replies import ReplyRouter
from triggerbus.bus.subjects import Subjects
from triggerbus.config import Settings


@asynccontextmanager
async def hosted(
    flow: TriggerFlow, nats_url: str, prefix: str, *, concurrency: int = 16
) -> AsyncIterator[tuple[Bus, ExecutionHost, ChunkHost]]:
    """Hosts built by hand, with this process's runtime reduced to a pure client."""
    configure(
        Settings(nats_url=nats_url, prefix=prefix, local_chunks=frozenset(), host_executions=False)
    )
    bus = await Bus.open(ConnectOptions(servers=[nats_url]), Subjects(prefix))
    replies = ReplyRouter(bus.nc)
    await replies.start()
    flow_hosted = HostedFlow(flow.graph(), flow.handlers())
    executions = ExecutionHost(bus, flow_hosted)
    chunks = ChunkHost(bus, flow_hosted, replies, concurrency=concurrency)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(executions.run())
            group.create_task(chunks.run())
            await executions.wait_ready()
            await chunks.wait_ready()
            try:
                yield bus, executions, chunks
            finally:
                executions.shutdown()
                chunks.shutdown()
    finally:
        await close_runtime()
        configure(None)
        await replies.stop()
        await bus.close()


async def test_stale_cached_snapshot_conflicts_then_applies_on_the_newer_one(
    nats_url: str, prefix: str
) -> None:
    flow = TriggerFlow(name="cas_flow")

    @flow.chunk("pong")
    def pong(data):
        return f"pong:{data.value}"

    flow.when("Ping").to(pong)
    async with asyncio.timeout(30), hosted(flow, nats_url, prefix) as (bus, executions, _):
        execution = flow.create_execution(auto_close=False)
        await execution.async_start("x")
        key = bus.subjects.execution_key(flow.name, execution.id)
        data, revision = await bus.load(key) or (b"", 0)
        await bus.store(key, data, revision=revision)  # another writer, as far as the host knows
        assert executions.statistics().conflicts == 0
        results = await execution.async_emit("Ping", 1)
        assert executions.statistics().conflicts == 1
        closed = await execution.async_close()
    assert results == ["pong:1"]
    assert closed == {}


async def test_chunk_host_runs_at_most_its_concurrency(nats_url: str, prefix: str) -> None:
    flow = TriggerFlow(name="bounded_flow")
    running = 0
    peak = 0

    @flow.chunk("work")
    async def work(data):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)  # simulated work, not a wait for an event
        running -= 1
        return data.value

    flow.to(work).end()
    async with asyncio.timeout(60), hosted(flow, nats_url, prefix, concurrency=2) as (_, _, chunks):
        snapshots = await asyncio.gather(*(flow.async_start(i) for i in range(8)))
        completed = chunks.statistics().completed
    assert [s["$final_result"] for s in snapshots] == list(range(8))
    assert peak == 2
    assert completed == 8


def test_a_mismatched_process_hands_work_back_patiently() -> None:
    """A message refused for a different flow definition comes back soon at first, then less
    often, for over a minute in all before it is dead-lettered: long enough for a rolling
    deploy's matching workers to start."""
    delays = [mismatch_delay(n) for n in range(1, MISMATCH_REDELIVERIES)]
    assert delays[0] == 0.2 and max(delays) == 5.0
    assert delays == sorted(delays)
    assert 60 < sum(delays) < 90
