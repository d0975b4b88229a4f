"""``get_status()`` / ``is_waiting()`` follow the stored snapshot while they are polled.

A flow that pauses again after ``continue_with`` or after an emit is seen ``waiting`` by a
caller polling the sync reads (from inside its running loop, as Agently's human-in-the-loop
examples do, or from sync code), wherever the execution is hosted; after the last resume the
status reaches ``completed``. Polling is the feature under test, so the only waiting done here
is a bounded poll of those reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tests._helpers import ROOT, child_env, configure_pure_client
from triggerbus import Execution, TriggerFlow, TriggerFlowRuntimeData
from triggerbus._runtime import close_runtime, configure, get_runtime
from triggerbus.testing import WorkerProcess

POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 30

# Two approvals in a row: each chunk pauses and is resumed to the next one.
two_steps = TriggerFlow(name="status_two_steps")


@two_steps.chunk("first_approval")
async def first_approval(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", payload="first", resume_to="next")


@two_steps.chunk("second_approval")
async def second_approval(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", payload="second", resume_to="next")


@two_steps.chunk("finish")
def finish(data: TriggerFlowRuntimeData) -> Any:
    return {"approved": data.value}


two_steps.to(first_approval).to(second_approval).to(finish).end()

# Pauses only when asked to, by an event from outside.
asks = TriggerFlow(name="status_asks")


@asks.chunk("started")
def started(data: TriggerFlowRuntimeData) -> Any:
    return data.value


@asks.chunk("ask")
async def ask(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="question", payload=data.value, resume_to="next")


asks.to(started)
asks.when("NeedInput").to(ask)


async def poll(read: Callable[[], bool]) -> None:
    """Poll a sync status read until it holds (the caller bounds it with a timeout)."""
    # Polling the sync reads is what is tested: no event to wait on instead.
    while not read():  # noqa: ASYNC110
        await asyncio.sleep(POLL_SECONDS)


def poll_sync(read: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not read():
        assert time.monotonic() < deadline, "the status read never changed"
        time.sleep(POLL_SECONDS)


async def pending_payloads(execution: Execution) -> list[Any]:
    pending = await execution.async_get_pending_interrupts()
    return [record["payload"] for record in pending.values()]


async def only_pending(execution: Execution) -> str:
    pending = await execution.async_get_pending_interrupts()
    assert len(pending) == 1, pending
    return next(iter(pending))


def status_tasks(execution: Execution) -> list[asyncio.Task[Any]]:
    name = f"triggerbus-status-{execution.id}"
    return [task for task in asyncio.all_tasks() if task.get_name() == name]


async def approve_twice_polling(execution: Execution) -> dict[str, Any]:
    """Start, poll into each pause, answer it, and close: the human-in-the-loop loop."""
    await execution.async_start("draft")
    await poll(execution.is_waiting)
    assert await pending_payloads(execution) == ["first"]
    await execution.async_continue_with(await only_pending(execution), "ok1")
    # The resume is stored: the handle does not still report the pause it just answered.
    assert execution.get_status() in ("running", "waiting")
    await poll(execution.is_waiting)
    assert execution.get_status() == "waiting"
    assert await pending_payloads(execution) == ["second"], "the second pause, not a stale one"
    await execution.async_continue_with(await only_pending(execution), "ok2")
    await poll(lambda: not execution.is_waiting())
    return await execution.async_close()


class TestPolledStatusInsideALoop:
    async def test_a_second_pause_after_continue_with_is_seen_by_polling(
        self, runtime: Any
    ) -> None:
        execution = two_steps.create_execution(auto_close=False)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            snapshot = await approve_twice_polling(execution)
        assert snapshot["$final_result"] == {"approved": "ok2"}
        assert (execution.get_status(), execution.is_closed()) == ("completed", True)

    async def test_a_pause_after_an_emit_is_seen_by_polling(self, runtime: Any) -> None:
        execution = asks.create_execution(auto_close=False)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await execution.async_start("hello")
            assert execution.get_status() == "running"
            await execution.async_emit("NeedInput", "please")
            await poll(execution.is_waiting)
            assert execution.get_status() == "waiting"
            assert await pending_payloads(execution) == ["please"]
            await execution.async_continue_with(await only_pending(execution), "answer")
            await poll(lambda: execution.get_status() == "running")
            # Polled before, the handle is exact right after an emit: its cascade, the pause
            # included, was stored before the emit returned.
            await execution.async_emit("NeedInput", "again")
            assert execution.is_waiting()
            snapshot = await execution.async_close(pending_interrupts="cancel")
        assert "$final_result" not in snapshot
        assert execution.get_status() == "cancelled"

    async def test_a_resume_that_completes_an_auto_closing_execution_is_seen_closing(
        self, runtime: Any
    ) -> None:
        """Only polled reads: the close reaches the handle without any await of a result."""
        execution = two_steps.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            assert await execution.async_start("draft", wait_for_result=False) is None
            for expected in ("first", "second"):
                await poll(execution.is_waiting)
                assert await pending_payloads(execution) == [expected]
                await execution.async_continue_with(await only_pending(execution), expected)
            await poll(execution.is_closed)
            watches = status_tasks(execution)
            if watches:  # a background read still in flight ends by itself
                await asyncio.gather(*watches)
        assert execution.get_status() == "completed"
        assert execution.get_result() == {"approved": "second"}

    async def test_polling_many_open_executions_holds_nothing_on_the_server(
        self, runtime: Any
    ) -> None:
        """Each poll is at most one store read in flight, never a watch: a watch per polled
        handle held a consumer of the executions' stream each, and a few thousand polled
        executions ran the stream out of consumers (get_result's own watch among them)."""
        executions = [two_steps.create_execution(auto_close=False) for _ in range(40)]
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await asyncio.gather(*(e.async_start("draft") for e in executions))
            local = await get_runtime()
            stream = local.bus.nc.jetstream()
            bucket = f"KV_{local.subjects.executions_bucket}"
            before = (await stream.stream_info(bucket)).state.consumer_count
            for execution in executions:
                await poll(execution.is_waiting)
            after = (await stream.stream_info(bucket)).state.consumer_count
            reads = [task for e in executions for task in status_tasks(e)]
            await asyncio.gather(*reads)
            await asyncio.gather(*(e.async_close(pending_interrupts="cancel") for e in executions))
        assert after == before
        assert all(not status_tasks(e) for e in executions), "no read outlives its answer"

    async def test_auto_closing_starts_no_status_read(self, runtime: Any) -> None:
        execution = asks.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await execution.async_start("hello")
        assert execution.get_status() == "completed"
        assert status_tasks(execution) == []


def test_sync_reads_see_the_second_pause(sync_runtime: Any) -> None:
    """Without a running loop the sync reads may block: each one reads the store."""
    execution = two_steps.create_execution(auto_close=False)
    assert execution.start("draft") is execution
    assert execution.is_waiting()
    execution.continue_with(next(iter(execution.get_pending_interrupts())), "ok1")
    poll_sync(execution.is_waiting)
    pending = execution.get_pending_interrupts()
    assert [record["payload"] for record in pending.values()] == ["second"]
    execution.continue_with(next(iter(pending)), "ok2")
    poll_sync(lambda: execution.get_status() == "running")
    assert execution.close()["$final_result"] == {"approved": "ok2"}
    assert execution.get_status() == "completed"


async def test_polling_a_client_of_an_execution_hosted_by_a_worker(
    nats_url: str, prefix: str
) -> None:
    """This process only sends and reads: the worker process hosts the execution and its
    chunks, so the pauses can only be learnt from the store."""
    worker = WorkerProcess(
        "tests.api.test_status_freshness:two_steps",
        nats_url=nats_url,
        prefix=prefix,
        cwd=str(ROOT),
        env=child_env(),
    )
    configure_pure_client(nats_url, prefix)
    try:
        async with asyncio.timeout(60), worker:
            execution = two_steps.create_execution(auto_close=False)
            snapshot = await approve_twice_polling(execution)
            # The worker ran this execution's chunks (this process hosts none).
            assert await worker.wait_for("chunk_attempt_succeeded", execution_id=execution.id)
    finally:
        await close_runtime()
        configure(None)
    assert snapshot["$final_result"] == {"approved": "ok2"}
    assert execution.get_status() == "completed"
