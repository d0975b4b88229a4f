"""A flow named ``fp_demo``: the definition the test process and the matching worker share."""

from triggerbus import TriggerFlow

flow = TriggerFlow(name="fp_demo")


@flow.chunk("work")
def work(data):
    return f"v1:{data.value}"


flow.to(work).end()
