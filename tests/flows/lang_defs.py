"""Flows of the definitions and sub-flow conformance suite (tests/language/test_definitions.py).

``source`` is built in code. ``loaded`` is the same flow read back from ``lang_defs.json`` (an
export of ``source``) with its handlers registered by name: the worker hosts ``loaded``, the
test process builds ``source``, and both must drive the same execution.
"""

import asyncio
from pathlib import Path

from triggerbus import TriggerFlow

JSON_PATH = Path(__file__).with_name("lang_defs.json")


async def double(data):
    return data.value * 2


def is_big(data):
    return data.value > 10


async def big(data):
    await data.async_put_into_stream({"big": data.value})
    return f"big({data.value})"


def small(data):
    return f"small({data.value})"


def build_source() -> TriggerFlow:
    flow = TriggerFlow(name="lang_defs")
    flow.for_each().to(("double", double)).if_condition(is_big).to(("big", big)).else_condition(
    ).to(("small", small)).end_condition().end_for_each().end()
    return flow


source = build_source()


def load_from_json() -> TriggerFlow:
    flow = TriggerFlow(name="placeholder")
    for handler in (double, big, small):
        flow.register_chunk_handler(handler)
    flow.register_condition_handler(is_big)
    return flow.load_json_flow(JSON_PATH)


loaded = load_from_json()

# --- sub-flows ----------------------------------------------------------------------------------

child = TriggerFlow(name="lang_sub_child")


@child.chunk("child_step")
async def child_step(data):
    await data.async_put_into_stream({"child": data.value, "seen": data.get_state("given")})
    await asyncio.sleep(0.02)
    return f"child({data.value})"


child.to(child_step).end()

parent = TriggerFlow(name="lang_sub_parent")
parent.to(("pre", lambda d: f"pre({d.value})")).to_sub_flow(child).to(
    ("post", lambda d: f"post({d.value})")
).end()

bound = TriggerFlow(name="lang_sub_bound")
bound.to_sub_flow(
    child,
    capture={"input": "value.topic", "runtime_data": {"given": "value.extra"}},
    write_back={"value": {"answer": "result"}, "runtime_data": {"child_result": "result"}},
).to(("post_bound", lambda d: d.value)).end()

FLOWS = ["loaded", "parent", "bound"]
