"""``flow.get_runtime_stream`` / ``get_async_runtime_stream`` raise the execution's failure
after yielding what was put before it, as Agently does (observed: the items, then
``ValueError: boom``); here the error is the one ``flow.start()`` raises for that failure."""

from __future__ import annotations

import asyncio

import pytest

from triggerbus import ChunkFailedError, TriggerFlow

BOUND = 20.0
"""Upper bound for every await in these tests; a healthy run takes a fraction of a second."""


def failing_flow(name: str, *, skip_exceptions: bool = False) -> TriggerFlow:
    flow = TriggerFlow(name=name, skip_exceptions=skip_exceptions)

    def a(data):
        data.put_into_stream("before")
        raise ValueError("boom")

    flow.to(a).end()
    return flow


def assert_boom(error: ChunkFailedError) -> None:
    assert (error.chunk, error.error_type, error.error_message) == ("a", "ValueError", "boom")


async def test_the_async_flow_stream_yields_the_items_then_raises_the_failure(runtime) -> None:
    items: list[object] = []
    with pytest.raises(ChunkFailedError) as raised:
        async with asyncio.timeout(BOUND):
            async for item in failing_flow("sf_async").get_async_runtime_stream(1, timeout=5):
                items.append(item)
    assert items == ["before"]
    assert_boom(raised.value)


async def test_a_skipped_failure_ends_the_stream_normally(runtime) -> None:
    async with asyncio.timeout(BOUND):
        stream = failing_flow("sf_skip", skip_exceptions=True).get_async_runtime_stream(1)
        assert [item async for item in stream] == ["before"]


async def test_the_handle_stream_of_a_started_execution_still_ends_normally(runtime) -> None:
    """As in Agently: reading an execution someone else started does not raise its failure."""
    flow = failing_flow("sf_handle")
    async with asyncio.timeout(BOUND):
        execution = flow.create_execution(auto_close_timeout=0)
        with pytest.raises(ChunkFailedError):
            await execution.async_start(1)
        assert [item async for item in execution.get_async_runtime_stream(timeout=5)] == [
            "before"
        ]



def test_the_sync_flow_stream_yields_the_items_then_raises_the_failure(sync_runtime) -> None:
    items: list[object] = []
    with pytest.raises(ChunkFailedError) as raised:
        for item in failing_flow("sf_sync").get_runtime_stream(1, timeout=5):
            items.append(item)
    assert items == ["before"]
    assert_boom(raised.value)
