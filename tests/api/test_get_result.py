"""``get_result`` with Agently's semantics: ``$final_result`` as soon as ``end()`` is reached,
not at the close; the close snapshot for a flow without ``end()``; ``None`` with a warning when
neither comes in time."""

from __future__ import annotations

import asyncio

import pytest

from triggerbus import TriggerFlow

BOUND = 20.0


def _ends(name: str) -> TriggerFlow:
    flow = TriggerFlow(name=name)
    flow.to(("double", lambda data: data.value * 2)).end()
    return flow


async def test_the_result_comes_once_end_is_reached_before_the_close(runtime) -> None:
    flow = _ends("result_early")
    async with asyncio.timeout(BOUND):
        execution = await flow.async_start_execution(21, auto_close_timeout=60.0)
        assert await execution.async_get_result(timeout=BOUND) == 42
        assert execution.get_status() == "running"  # an idle minute from its auto-close
        await execution.async_close()


async def test_a_flow_without_end_gives_its_close_snapshot(runtime) -> None:
    flow = TriggerFlow(name="result_snapshot")

    async def writes(data):
        await data.async_set_state("k", data.value)

    flow.to(writes)
    async with asyncio.timeout(BOUND):
        execution = await flow.async_start_execution(1, auto_close_timeout=0.0)
        assert await execution.async_get_result(timeout=BOUND) == {"k": 1}


async def test_no_result_in_time_is_none_with_a_warning(runtime) -> None:
    flow = TriggerFlow(name="result_none")
    flow.to(("idle", lambda data: None))
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(BOUND):
        await execution.async_start()
        with pytest.warns(UserWarning, match="has no result after 0.3 s"):
            assert await execution.async_get_result(timeout=0.3) is None
        await execution.async_close()


def test_the_sync_twin_returns_the_result_before_the_close(sync_runtime) -> None:
    execution = _ends("result_sync").start_execution(5, auto_close_timeout=60.0)
    assert execution.get_result(timeout=BOUND) == 10
    assert execution.get_status() == "running"
    execution.close()
