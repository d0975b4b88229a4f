"""An execution and its chunk attempts leave no reference cycles behind: what refcounting
cannot free waits for the garbage collector, whose collections then walk it (measured as a
visible share of a busy host's CPU)."""

from __future__ import annotations

import asyncio
import gc

from triggerbus import TriggerFlow
from triggerbus.actors.runtime_data import FlowStateView, StateView, TriggerFlowRuntimeData
from triggerbus.config import Settings
from triggerbus.execution import Execution, ExecutionResult

_PER_EXECUTION = (TriggerFlowRuntimeData, StateView, FlowStateView, Execution, ExecutionResult)


async def test_executions_and_attempts_are_freed_without_the_collector(
    runtime: Settings,
) -> None:
    flow = TriggerFlow(name="cycles")

    @flow.chunk("first")
    async def first(data):
        data.state.set("seen", data.value)  # the views are used, as chunks use them
        return data.flow_state.get("missing", data.value) + 1

    @flow.chunk("second")
    async def second(data):
        return data.state.get("seen") + data.value

    flow.to(first).to(second).end()
    async with asyncio.timeout(30):
        await flow.async_start(0)  # warm: consumers, hosts, connections
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage
        try:
            for value in range(5):
                execution = flow.create_execution(auto_close_timeout=0)
                await execution.async_start(value)
                assert execution.result.get_meta()["status"] == "completed"
            del execution
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage if isinstance(o, _PER_EXECUTION)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert left == []
