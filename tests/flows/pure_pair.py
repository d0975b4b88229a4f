"""Two chunks whose only effect is their result: their outcomes are handed to the execution
host of their worker (actors/hand_off.py) rather than stored in the mailbox."""

from triggerbus import TriggerFlow

flow = TriggerFlow(name="pure_pair_flow")


@flow.chunk("first")
async def first(data):
    return data.value + 1


@flow.chunk("second")
async def second(data):
    return data.value * 10


flow.to(first).to(second).end()
