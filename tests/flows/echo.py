"""A one-chunk flow for tests that poke at the bus by hand."""

from triggerbus import TriggerFlow

flow = TriggerFlow(name="echo_flow")


@flow.chunk("echo")
async def echo(data):
    await data.async_put_into_stream({"echo": data.value})
    return data.value


flow.to(echo).end()
