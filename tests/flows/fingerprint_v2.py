"""The same flow name defined differently: a worker built from this must refuse ``fp_demo``
executions started by fingerprint_v1."""

from triggerbus import TriggerFlow

flow = TriggerFlow(name="fp_demo")


@flow.chunk("work")
def work(data):
    return f"v2:{data.value}"


@flow.chunk("extra")
def extra(data):
    return data.value


flow.to(work).to(extra).end()
