"""A chunk that runs far longer than the consumer's ack wait is not redelivered while its worker
lives: in-progress heartbeats keep the invocation with it."""

from __future__ import annotations

import asyncio

from triggerbus import TriggerFlow
from triggerbus._runtime import close_runtime, configure
from triggerbus.config import Settings


async def test_slow_chunk_runs_once_under_a_short_ack_wait(nats_url: str, prefix: str) -> None:
    flow = TriggerFlow(name="heartbeat_flow")
    attempts = 0

    @flow.chunk("slow")
    async def slow(data):
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(3.5)  # simulated work, 3.5x the ack wait
        return data.value

    flow.to(slow).end()
    configure(Settings(nats_url=nats_url, prefix=prefix, ack_wait=1.0))
    try:
        async with asyncio.timeout(30):
            snapshot = await flow.async_start("done")
    finally:
        await close_runtime()
        configure(None)
    assert snapshot == {"$final_result": "done"}
    assert attempts == 1
