"""A closed execution answers its sync reads from memory, so they work inside a running event
loop, as Agently's do: ``await execution.async_start(...)`` then ``execution.get_state()`` is
how flows written for Agently read their state. An open execution's reads still need the
store, and are still refused there (they would block the loop that serves the connection)."""

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


async def test_an_open_execution_still_refuses_sync_reads_inside_the_loop(runtime) -> None:
    execution = _flow("open_reads").create_execution(auto_close=False)
    async with asyncio.timeout(BOUND):
        await execution.async_start(1)
        try:
            with pytest.raises(LifecycleError, match=r"get_state\(\) is the sync form"):
                execution.get_state()
            with pytest.raises(LifecycleError, match=r"get_result\(\) is the sync form"):
                execution.get_result(timeout=1.0)
            with pytest.raises(LifecycleError, match=r"close\(\) is the sync form"):
                execution.close()
        finally:
            await execution.async_close()
        assert execution.get_state("seen") == {"value": 1}
