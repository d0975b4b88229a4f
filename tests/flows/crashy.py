"""Two chunks that record each run in state, slow enough to be killed in the middle."""

import asyncio

from triggerbus import TriggerFlow

flow = TriggerFlow(name="crashy_flow")


@flow.chunk("first")
async def first(data):
    data.state.append("trail", "first")
    await asyncio.sleep(0.3)
    return data.value


@flow.chunk("second")
async def second(data):
    data.state.append("trail", "second")
    await asyncio.sleep(0.3)
    return data.value * 10


flow.to(first).to(second).end()
