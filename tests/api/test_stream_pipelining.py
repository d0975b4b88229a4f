"""Stream items are sent without waiting for each ack, yet arrive complete and in order, and
the end marker stays last."""

from __future__ import annotations

import asyncio

from triggerbus import TriggerFlow

ITEMS = 2000


async def test_many_items_arrive_in_order_and_end_last(runtime) -> None:
    flow = TriggerFlow(name="pipelined_stream")

    @flow.chunk("burst")
    async def burst(data):
        for n in range(ITEMS):
            if n % 2:
                data.put_into_stream(n)
            else:
                await data.async_put_into_stream(n)
        await data.async_stop_stream()
        return ITEMS

    flow.to(burst).end()
    async with asyncio.timeout(60):
        items = [item async for item in flow.get_async_runtime_stream(None, timeout=10)]
    assert items == list(range(ITEMS))
