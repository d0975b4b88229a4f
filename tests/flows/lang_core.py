"""Flows of the language conformance suite (tests/language/test_language.py).

Each flow has an explicit name, so the test process and a worker that imports this module agree
on every subject. Chunks observe nothing but their data: what a test checks travels in results,
state and the runtime stream, so the same expectations hold in one process and across several.
"""

import asyncio

from triggerbus import TriggerFlow

# --- for_each ----------------------------------------------------------------------------------

fe_split = TriggerFlow(name="lang_fe_split")


@fe_split.chunk("double")
async def double(data):
    value = data.value
    return value * 2 if isinstance(value, int) else value


fe_split.for_each().to(double).end_for_each().end()

fe_cap = TriggerFlow(name="lang_fe_cap")


@fe_cap.chunk("tracked")
async def tracked(data):
    await data.async_put_into_stream(["start", data.value])
    await asyncio.sleep(0.05 * (5 - data.value))
    await data.async_put_into_stream(["end", data.value])
    return data.value * 10


fe_cap.for_each(concurrency=2).to(tracked).end_for_each().end()

fe_nested = TriggerFlow(name="lang_fe_nested")


@fe_nested.chunk("inc")
def inc(data):
    return data.value + 1


fe_nested.for_each().for_each().to(inc).end_for_each().end_for_each().end()

# --- match / if ----------------------------------------------------------------------------------


def gt1(data):
    return data.value > 1


def gt0(data):
    return data.value > 0


def lt0(data):
    return data.value < 0


m_first = TriggerFlow(name="lang_m_first")
m_first.match().case(gt1).to(("a", lambda d: f"a({d.value})")).case(gt0).to(
    ("b", lambda d: f"b({d.value})")
).case_else().to(("c", lambda d: f"c({d.value})")).end_match().end()


async def slow_a(data):
    await asyncio.sleep(0.1)
    return f"a({data.value})"


m_all = TriggerFlow(name="lang_m_all")
m_all.match(mode="hit_all").case(gt1).to(("a", slow_a)).case(gt0).to(
    ("b", lambda d: f"b({d.value})")
).case(3).to(("c", lambda d: f"c({d.value})")).end_match().end()

m_value = TriggerFlow(name="lang_m_value")
m_value.match().case("x").to(("x", lambda d: f"x({d.value})")).case("y").to(
    ("y", lambda d: f"y({d.value})")
).end_match().end()

m_if = TriggerFlow(name="lang_m_if")
m_if.if_condition(gt0).to(("pos", lambda d: "pos")).elif_condition(lt0).to(
    ("neg", lambda d: "neg")
).else_condition().to(("zero", lambda d: "zero")).end_condition().end()

# --- collect, side_branch, when ----------------------------------------------------------------

collected = TriggerFlow(name="lang_collect")


async def slow_b(data):
    await asyncio.sleep(0.05)
    return "B"


collected.to(("ca", lambda d: "A")).collect("g", "ba")
collected.to(("cb", slow_b)).collect("g", "bb").to(("after", lambda d: d.value)).end()

side = TriggerFlow(name="lang_side_branch")


@side.chunk("main")
def main_step(data):
    return f"main({data.value})"


@side.chunk("side")
async def side_step(data):
    await data.async_set_state("side", f"side({data.value})")


side.to(main_step).side_branch(side_step).to(("then", lambda d: f"then({d.value})")).end()

when_items = TriggerFlow(name="lang_when_items")


@when_items.chunk("pair")
async def pair(data):
    await data.async_emit("A", data.value)
    await asyncio.sleep(0.02)
    await data.async_emit("B", data.value * 10)
    return data.value


@when_items.chunk("joined")
async def joined(data):
    await data.async_put_into_stream(data.value)


when_items.for_each().to(pair).end_for_each().end()
when_items.when(["A", "B"]).to(joined)

states = TriggerFlow(name="lang_state")


@states.chunk("writer")
async def writer(data):
    await data.async_set_state("user.name", "ann")
    await data.state.async_append("log", "a")
    await data.async_append_state("log", "b")
    await data.async_set_state("quiet", 1, emit=False)
    return data.get_state("user")


@states.chunk("on_log")
async def on_log(data):
    await data.async_put_into_stream({"log": data.value, "trigger": data.trigger_event})


@states.chunk("on_quiet")
async def on_quiet(data):
    await data.async_put_into_stream("quiet fired")


states.to(writer).end()
states.when({"runtime_data": "log"}).to(on_log)
states.when({"runtime_data": "quiet"}).to(on_quiet)

# --- flow data -----------------------------------------------------------------------------------

shared = TriggerFlow(name="lang_flow_data")


@shared.chunk("read_threshold")
def read_threshold(data):
    return data.get_flow_data("threshold")


@shared.chunk("on_threshold")
async def on_threshold(data):
    await data.async_put_into_stream(
        {"value": data.value, "type": data.trigger_type, "event": data.trigger_event}
    )


@shared.chunk("set_from_chunk")
async def set_from_chunk(data):
    await data.async_set_flow_data("threshold", data.value)
    return data.get_flow_data("threshold")


shared.to(read_threshold).end()
shared.when({"flow_data": "threshold"}).to(on_threshold)
shared.when("Set").to(set_from_chunk)

FLOWS = [
    "fe_split",
    "fe_cap",
    "fe_nested",
    "m_first",
    "m_all",
    "m_value",
    "m_if",
    "collected",
    "side",
    "when_items",
    "states",
    "shared",
]
