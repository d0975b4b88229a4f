"""A flow for tracing tests: a batch that fans in, an emit, and a chunk redelivered once.

``merge`` blocks its event loop for longer than the consumer's ack wait on its first attempt
(when ``TRACED_MARKER`` names a file that does not exist yet), so JetStream redelivers it and
a second attempt runs: two attempt spans for one invocation.
"""

import os
import time
from pathlib import Path

from triggerbus import TriggerFlow

flow = TriggerFlow(name="traced_flow")


@flow.chunk("left")
async def left(data):
    return f"L{data.value}"


@flow.chunk("right")
async def right(data):
    await data.async_emit("side", data.value)
    return f"R{data.value}"


@flow.chunk("on_side")
async def on_side(data):
    data.state.set("side", data.value)
    return "side"


@flow.chunk("merge")
async def merge(data):
    marker = os.environ.get("TRACED_MARKER")
    if marker and not Path(marker).exists():  # noqa: ASYNC240
        Path(marker).write_text("first attempt")  # noqa: ASYNC240
        # Block the loop (no heartbeats) past the ack wait: the invocation is redelivered.
        time.sleep(float(os.environ.get("TRACED_BLOCK_SECONDS", "4")))  # noqa: ASYNC251
    return {"left": data.value["left"], "right": data.value["right"]}


flow.batch(left, right).to(merge).end()
flow.when("side").to(on_side)
