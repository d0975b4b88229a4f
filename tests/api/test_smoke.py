"""The simplest flows run end to end on a real nats-server."""

from __future__ import annotations

import asyncio

from triggerbus import TriggerFlow


async def test_chain_returns_close_snapshot_with_final_result(runtime) -> None:
    flow = TriggerFlow(name="smoke_chain")

    @flow.chunk("double")
    async def double(data):
        return data.value * 2

    @flow.chunk
    def plus_one(data):
        return data.value + 1

    flow.to(double).to(plus_one).end()
    async with asyncio.timeout(20):
        snapshot = await flow.async_start(5)
    assert snapshot == {"$final_result": 11}
