"""An execution whose snapshot outgrows the server's max payload fails and closes, once,
with the reason; before, its message was handed back and redelivered forever."""

from __future__ import annotations

import asyncio

import pytest

from triggerbus import TriggerFlow
from triggerbus.config import Settings
from triggerbus.errors import ExecutionClosedError

BOUND = 30.0
HALF_A_MEGABYTE = 600_000  # two of them outgrow NATS's default max_payload of 1 MB


async def test_state_that_outgrows_the_max_payload_fails_the_execution(
    runtime: Settings,
) -> None:
    flow = TriggerFlow(name="oversized")

    @flow.chunk("grow")
    async def grow(data):
        await data.async_set_state("a", "x" * HALF_A_MEGABYTE)
        await data.async_set_state("b", "y" * HALF_A_MEGABYTE)
        return "grown"

    flow.to(grow).end()
    execution = flow.create_execution(auto_close_timeout=0.0)
    # Not a chunk's failure: the execution's, closed with the reason (before the fix the
    # message was handed back forever and this waited out its bound).
    with pytest.raises(ExecutionClosedError, match=r"SnapshotTooLargeError: .*max_payload"):
        async with asyncio.timeout(BOUND):
            await execution.async_start(1)
    assert execution.get_status() == "failed"
