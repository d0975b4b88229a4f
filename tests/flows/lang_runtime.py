"""Flows of the runtime conformance suite (tests/language/test_runtime.py): emits and their
ordering, the execution concurrency cap, errors, lifecycle, auto-close and stream timeouts."""

import asyncio
import os

from triggerbus import TriggerFlow

# --- emits ------------------------------------------------------------

nowait = TriggerFlow(name="lang_emit_nowait")


@nowait.chunk("fire")
async def fire(data):
    data.emit_nowait("Side", 1)
    await data.async_emit_nowait("Side", 2)
    return "fired"


@nowait.chunk("on_side")
async def on_side(data):
    await asyncio.sleep(0.05)
    await data.async_put_into_stream({"side": data.value})


nowait.to(fire).end()
nowait.when("Side").to(on_side)

depth = TriggerFlow(name="lang_emit_depth")


@depth.chunk("outer")
async def outer(data):
    await data.async_put_into_stream("outer:start")
    results = await data.async_emit("E1", "x")
    await data.async_put_into_stream(f"outer:after:{results}")
    return results


@depth.chunk("h1")
async def h1(data):
    await data.async_put_into_stream("h1")
    inner = await data.async_emit("E2", "y")
    await data.async_put_into_stream(f"h1:after:{inner}")
    return "h1"


@depth.chunk("h1_next")
async def h1_next(data):
    await asyncio.sleep(0.05)
    await data.async_put_into_stream("h1_next")


@depth.chunk("h2")
async def h2(data):
    await asyncio.sleep(0.05)
    await data.async_put_into_stream("h2")
    return "h2"


depth.to(outer).end()
depth.when("E1").to(h1).to(h1_next)
depth.when("E2").to(h2)

# --- the execution concurrency cap ------------------------------------------------------------

capped = TriggerFlow(name="lang_exec_cap")


@capped.chunk("work")
async def work(data):
    await data.async_put_into_stream(["start", data.value])
    await asyncio.sleep(0.1)
    await data.async_put_into_stream(["end", data.value])
    return data.value


capped.for_each().to(work).end_for_each().end()

nested_emit = TriggerFlow(name="lang_exec_cap_emit")


@nested_emit.chunk("caller")
async def caller(data):
    return await data.async_emit("Inner", data.value)


@nested_emit.chunk("inner")
async def inner_step(data):
    return await data.async_emit("Deeper", data.value + 1)


@nested_emit.chunk("deeper")
def deeper(data):
    return data.value * 10


nested_emit.to(caller).end()
nested_emit.when("Inner").to(inner_step)
nested_emit.when("Deeper").to(deeper)

# --- errors ------------------------------------------------------------


class KaboomError(ValueError):
    pass


failing = TriggerFlow(name="lang_failing")


@failing.chunk("prep")
async def prep(data):
    await data.async_set_state("before", 1)
    return data.value


@failing.chunk("boom")
def boom(data):
    raise KaboomError(f"kaboom({data.value})")


@failing.chunk("never")
async def never(data):
    await data.async_put_into_stream("never ran")


failing.to(prep).to(boom).to(never).end()

skipping = TriggerFlow(name="lang_skipping")


@skipping.chunk("ok_slow")
async def ok_slow(data):
    await asyncio.sleep(0.1)
    await data.async_put_into_stream("ok_slow done")
    return "ok"


@skipping.chunk("bad")
async def bad(data):
    raise RuntimeError("bad branch")


skipping.batch(ok_slow, bad).to(("after_batch", lambda d: d.value)).end()

# --- lifecycle, auto-close, streams ------------------------------------------------------------

life = TriggerFlow(name="lang_life")


@life.chunk("pong")
def pong(data):
    return f"pong({data.value})"


life.when("Ping").to(pong)

ticker = TriggerFlow(name="lang_ticker")


@ticker.chunk("tick")
async def tick(data):
    gap, count = data.value
    for n in range(count):
        if n:
            await asyncio.sleep(gap)
        await data.async_put_into_stream(n)
    return count


ticker.to(tick).end()

# --- flow-level runtime resources --------------------------------------

resourced = TriggerFlow(name="lang_flow_resources")
# Module level: every process that imports this module sets its own.
resourced.set_runtime_resource("host_pid", os.getpid()).update_runtime_resources(
    {"shared": "flow"}, doomed="flow"
)
resourced.del_runtime_resource("doomed")


@resourced.chunk("read_resources")
async def read_resources(data):
    read = {key: data.get_resource(key) for key in ("host_pid", "shared", "doomed", "starter")}
    # A datetime would arrive as a string: it stays with the chunks of the starting process.
    return {**read, "started": type(data.get_resource("started")).__name__}


resourced.to(read_resources).end()

FLOWS = [
    "nowait", "depth", "capped", "nested_emit", "failing", "skipping", "life", "ticker",
    "resourced",
]  # fmt: skip
