"""A run to close reads its stored snapshot nowhere: the host writes a start without reading
first, and the close notice carries what the waiting handle used to read."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.msg import Msg

from triggerbus import TriggerFlow
from triggerbus.config import Settings


async def test_a_started_execution_is_never_read_back_from_the_store(
    runtime: Settings, nats_url: str, prefix: str
) -> None:
    flow = TriggerFlow(name="store_reads")

    @flow.chunk("double")
    async def double(data):
        return data.value * 2

    flow.to(double).end()
    reads: list[str] = []

    async def spy(msg: Msg) -> None:
        reads.append(msg.subject + " " + msg.data.decode(errors="replace"))

    nc = await nats.connect(nats_url)
    try:
        # Every way a KV entry can be read: direct get, and the stream's message get.
        for subject in ("$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>"):
            await nc.subscribe(subject, cb=spy)
        await nc.flush()
        async with asyncio.timeout(20):
            await flow.async_start(1)  # warm: consumers and flow data in place
            execution = flow.create_execution(auto_close_timeout=0)
            snapshot = await execution.async_start(5)
            await nc.flush()
    finally:
        await nc.close()
    assert snapshot == {"$final_result": 10}
    own = [read for read in reads if execution.id in read]
    assert own == [], f"the execution's snapshot was read: {own}"
    meta = execution.result.get_meta()
    assert meta["state_version"] > 0
    assert meta["close_reason"] == "auto_close_idle_timeout"
    assert meta["closed_at"] >= meta["started_at"] > 0
