"""A chunk that takes a while, for drain tests."""

import asyncio

from triggerbus import TriggerFlow

flow = TriggerFlow(name="slow_flow")


@flow.chunk("slow")
async def slow(data):
    await asyncio.sleep(1.0)
    return f"done:{data.value}"


flow.to(slow).end()
