"""Sync reads work inside a running event loop, as Agently's do: ``await
execution.async_start(...)`` then ``execution.get_state()`` is how flows written for Agently
read their state. A closed execution answers from memory; an open one's reads go to the store
on the sync API's own connection, the caller's loop waiting for the answer. Sync calls that
would wait on work this loop runs (a write's answer, a result not yet reached) are refused."""

from __future__ import annotations

import asyncio

import pytest

from triggerbus import TriggerFlow
from triggerbus.errors import LifecycleError

BOUND = 20.0


def _flow(name: str) -> TriggerFlow:
    flow = TriggerFlow(name=name)

    async def remember(data):
        await data.async_set_state("seen", {"value": data.value})
        return data.value * 2

    flow.to(remember).end()
    return flow


async def test_a_closed_execution_answers_sync_reads_inside_the_loop(runtime) -> None:
    execution = _flow("closed_reads").create_execution(auto_close_timeout=0.0)
    async with asyncio.timeout(BOUND):
        closed = await execution.async_start(4)
        assert execution.is_closed()
        assert execution.get_state() == await execution.async_get_state() == closed
        assert execution.get_state("seen.value") == 4
        assert execution.get_state("missing", "fallback") == "fallback"
        assert execution.get_result() == await execution.async_get_result() == 8
        assert execution.close() == closed
        assert execution.start(4) == closed
        with pytest.raises(LifecycleError, match=r"close\(\) is the sync form"):
            execution.close(pending_interrupts="bogus")  # not an answer from memory


async def test_an_open_execution_answers_sync_reads_inside_the_loop_from_the_store(
    runtime,
) -> None:
    execution = _flow("open_reads").create_execution(auto_close=False)
    async with asyncio.timeout(BOUND):
        await execution.async_start(1)
        try:
            assert execution.get_state() == {"seen": {"value": 1}, "$final_result": 2}
            assert execution.get_state("seen.value") == 1
            assert execution.get_result() == 2  # end() reached: stored before the close
            assert execution.get_pending_interrupts() == execution.get_interrupts() == {}
            assert execution.get_flow_data("nothing", "none") == "none"
            assert not execution.is_closed()
            with pytest.raises(LifecycleError, match=r"close\(\) is the sync form"):
                execution.close()  # a write: its answer comes from work this loop may run
        finally:
            await execution.async_close()


async def test_a_result_not_reached_yet_is_refused_not_waited_for_inside_the_loop(
    runtime,
) -> None:
    """Waiting inside the loop could wait for the loop itself: the chunk that would reach
    ``end()`` runs on it."""
    flow = TriggerFlow(name="result_not_yet")

    async def ask(data):
        return await data.async_pause_for(type="approval", payload=data.value)

    flow.to(ask).to(lambda data: f"approved {data.value}").end()
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(BOUND):
        await execution.async_start("doc")
        try:
            (waiting,) = execution.get_pending_interrupts().values()
            assert (waiting["type"], waiting["payload"]) == ("approval", "doc")
            with pytest.raises(LifecycleError, match=r"get_result\(\) inside a running event"):
                execution.get_result()
            await execution.async_continue_with(waiting["id"], "yes")
            assert execution.get_result() == "approved yes"
        finally:
            await execution.async_close()


async def test_stream_appends_from_the_handle_inside_the_loop(runtime) -> None:
    """A stream append needs no actor, so the sync form works inside the loop too, in order
    with the async one."""
    flow = TriggerFlow(name="stream_in_loop")
    flow.to(lambda data: data.value)
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(BOUND):
        await execution.async_start("go")
        await execution.async_put_into_stream("first")
        execution.put_into_stream("second")
        execution.stop_stream()
        items = [item async for item in execution.get_async_runtime_stream(timeout=BOUND)]
        await execution.async_close()
    assert items == ["first", "second"]


async def test_flow_data_reads_and_writes_inside_the_loop(runtime) -> None:
    """Flow data is the flow's store key and a broadcast: no actor answers a change, so the
    sync forms work inside the loop, and a listening execution still hears them."""
    flow = TriggerFlow(name="flow_data_in_loop")
    flow.to(lambda data: data.value)

    async def hear(data):
        await data.async_put_into_stream({"heard": data.get_flow_data("limits")})

    flow.when({"flow_data": "limits"}).to(hear)
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(BOUND):
        await execution.async_start("go")
        flow.set_flow_data("limits", {"daily": 3})
        assert flow.get_flow_data("limits.daily") == 3
        execution.append_flow_data("log", "one")
        assert execution.get_flow_data() == {"limits": {"daily": 3}, "log": ["one"]}
        execution.del_flow_data("log")
        assert flow.get_flow_data() == {"limits": {"daily": 3}}
        async for item in execution.get_async_runtime_stream(timeout=BOUND):
            assert item == {"heard": {"daily": 3}}
            break
        await execution.async_close()
