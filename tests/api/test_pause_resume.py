"""pause_for / continue_with through the public API, against a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tests._helpers import load_module
from triggerbus import (
    Execution,
    InterruptNotFoundError,
    InterruptNotWaitingError,
    PendingInterruptsError,
)
from triggerbus._runtime import get_runtime
from triggerbus.actors.execution_host import ExecutionHost


async def read_until_pause(execution: Execution, value: Any) -> list[Any]:
    """Start ``execution`` through its runtime stream and read until its pause item."""
    items: list[Any] = []
    async for item in execution.get_async_runtime_stream(value, timeout=None):
        items.append(item)
        if isinstance(item, dict) and item.get("action") == "pause":
            return items
    raise AssertionError(f"the stream ended without a pause: {items}")


async def wait_for_pause(flow_name: str, execution_id: str) -> dict[str, Any]:
    """Read the execution's runtime stream (without starting anything) until a pause item."""
    runtime = await get_runtime()
    reader = runtime.bus.read_stream(runtime.subjects.stream(flow_name, execution_id))
    try:
        async for _, data in reader:
            item = msgspec.json.decode(data)
            value = item.get("value")
            if isinstance(value, dict) and value.get("action") == "pause":
                return value
    finally:
        await reader.aclose()
    raise AssertionError("the stream ended")


async def cached_snapshots() -> int:
    runtime = await get_runtime()
    hosts = [h for h in runtime._hosts if isinstance(h, ExecutionHost)]
    return sum(h.statistics().cached_snapshots for h in hosts)


class TestPauseForNext:
    async def test_pause_waits_and_continue_with_gives_the_value_downstream(
        self, runtime: Any
    ) -> None:
        """The paused execution is ``waiting`` with a pending interrupt and a pause item; the
        resume value becomes the paused chunk's result for its downstream chunk."""
        flow = load_module("tests/flows/approval.py", "approval_next").flow
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(30):
            # Without auto_close, start returns once the start's cascade is over: here, once
            # the paused chunk has returned and the execution waits.
            await execution.async_start("post-1")
            assert execution.get_status() == "waiting"
            pending = await execution.async_get_pending_interrupts()
            assert list(pending) == ["approve"]
            assert pending["approve"]["payload"] == {"draft": "post-1"}
            assert pending["approve"]["type"] == "approval"
            assert pending["approve"]["resume_to"] == "next"
            assert await cached_snapshots() == 0, "a waiting execution is held in no memory"
            items = await read_until_pause(execution, None)
            record = await execution.async_continue_with("approve", {"ok": True})
            assert record is not None and record["status"] == "resumed"
            assert record["resume_value"] == {"ok": True}
            snapshot = await execution.async_close()
            rest = [item async for item in execution.get_async_runtime_stream(timeout=5)]
        assert items[0] == {"drafted": "post-1"}
        pause = items[-1]
        assert (pause["type"], pause["interrupt"]["id"], pause["execution_id"]) == (
            "interrupt", "approve", execution.id
        )
        assert snapshot["$final_result"] == {
            "approved": {"ok": True}, "is_resume": True, "interrupt_id": "approve"
        }
        assert snapshot["published"] == [{"ok": True}]
        assert execution.get_status() == "completed"
        resumes = [i for i in rest if isinstance(i, dict) and i.get("action") == "resume"]
        assert [r["value"] for r in resumes] == [{"ok": True}]

    async def test_unknown_and_already_resumed_interrupts_raise_clear_errors(
        self, runtime: Any
    ) -> None:
        flow = load_module("tests/flows/approval.py", "approval_errors").flow
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(30):
            await read_until_pause(execution, "x")
            with pytest.raises(InterruptNotFoundError, match="'nope' not found"):
                await execution.async_continue_with("nope", 1)
            with pytest.raises(KeyError):  # TriggerFlow raises KeyError here
                await execution.async_continue_with("nope", 1)
            with pytest.raises(PendingInterruptsError, match="pending_interrupts='cancel'"):
                await execution.async_close()
            await execution.async_continue_with("approve", "yes")
            with pytest.raises(InterruptNotWaitingError, match="not waiting"):
                await execution.async_continue_with("approve", "again")
            snapshot = await execution.async_close()
        assert snapshot["published"] == ["yes"]

    async def test_another_handle_continues_by_execution_id(self, runtime: Any) -> None:
        """Any handle of the execution (another process would do the same) can resume it."""
        flow = load_module("tests/flows/approval.py", "approval_other").flow
        execution = flow.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(30):
            waiting = asyncio.create_task(execution.async_start("z"))
            await wait_for_pause(flow.name, execution.id)
            other = flow.create_execution(execution_id=execution.id)
            await other.async_continue_with("approve", "from-elsewhere")
            snapshot = await waiting
        assert snapshot["$final_result"]["approved"] == "from-elsewhere"

    async def test_close_cancelling_pending_interrupts(self, runtime: Any) -> None:
        flow = load_module("tests/flows/approval.py", "approval_cancel").flow
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(30):
            await read_until_pause(execution, "x")
            snapshot = await execution.async_close(pending_interrupts="cancel")
            with pytest.warns(RuntimeWarning, match="closed"):
                assert await execution.async_continue_with("approve", 1) is None
            interrupts = await execution.async_get_interrupts()
        assert execution.get_status() == "cancelled"
        assert "published" not in snapshot
        assert interrupts["approve"]["status"] == "cancelled"


class TestPauseForSelf:
    async def test_resume_to_self_reruns_the_chunk_and_repeats_are_applied_once(
        self, runtime: Any
    ) -> None:
        """A sync chunk pauses with ``resume_to="self"``; resumed, it runs again with
        ``data.is_resume`` and the answer. The same ``resume_request_id`` twice resumes once."""
        survey = load_module("tests/flows/approval.py", "approval_self").survey
        execution = survey.create_execution(auto_close=False)
        async with asyncio.timeout(30):
            [pause] = [i async for i in _items_until_pause_started(execution, "color?")]
            interrupt_id = pause["interrupt"]["id"]
            assert pause["interrupt"]["max_resumes"] == 1
            first = await execution.async_continue_with(
                interrupt_id, "blue", resume_request_id="req-1"
            )
            again = await execution.async_continue_with(
                interrupt_id, "blue", resume_request_id="req-1"
            )
            with pytest.raises(InterruptNotWaitingError, match="different value"):
                await execution.async_continue_with(
                    interrupt_id, "red", resume_request_id="req-1"
                )
            snapshot = await execution.async_close()
        assert first is not None and again is not None
        assert first["resume_count"] == again["resume_count"] == 1
        assert snapshot["runs"] == [
            {"is_resume": False, "value": "color?"},
            {"is_resume": True, "value": "color?"},
        ]
        assert snapshot["$final_result"] == {"question": "color?", "answer": "blue"}


async def _items_until_pause_started(execution: Execution, value: Any) -> Any:
    async for item in execution.get_async_runtime_stream(value, timeout=None):
        if isinstance(item, dict) and item.get("action") == "pause":
            yield item
            return


class TestSaveAndLoad:
    async def test_a_saved_waiting_execution_is_restored_and_resumed(self, runtime: Any) -> None:
        """``save()`` is JSON-able; ``load()`` binds a new handle (same store) or, with
        ``replace``, puts the saved state back after the execution moved on."""
        import json

        flow = load_module("tests/flows/approval.py", "approval_save").flow
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(30):
            await execution.async_start("s")  # returns once the paused chunk has returned
            saved = json.loads(json.dumps(await execution.async_save()))
            assert saved["snapshot"]["status"] == "waiting"
            # Same store, same state: load only binds the handle.
            bound = await flow.create_execution().async_load(saved)
            assert bound.id == execution.id and bound.get_status() == "waiting"
            await execution.async_close(pending_interrupts="cancel")
            with pytest.raises(Exception, match="replace=True"):
                await flow.create_execution().async_load(saved)
            restored = await flow.create_execution().async_load(saved, replace=True)
            assert restored.get_status() == "waiting"
            await restored.async_continue_with("approve", "after-restore")
            snapshot = await restored.async_close()
        assert snapshot["$final_result"]["approved"] == "after-restore"


class TestIdempotentStart:
    async def test_two_handles_started_concurrently_get_the_same_close_snapshot(
        self, runtime: Any
    ) -> None:
        flow = load_module("tests/flows/echo.py", "echo_idem").flow
        one = flow.create_execution(execution_id="order-7", auto_close_timeout=0.0)
        two = flow.create_execution(execution_id="order-7", auto_close_timeout=0.0)
        async with asyncio.timeout(30):
            first, second = await asyncio.gather(one.async_start("a"), two.async_start("b"))
        assert first == second
        assert first["$final_result"] in ("a", "b")

    async def test_an_idempotency_key_names_one_execution(self, runtime: Any) -> None:
        flow = load_module("tests/flows/echo.py", "echo_key").flow
        key = "checkout/user 42 #9"
        one = flow.create_execution(idempotency_key=key, auto_close_timeout=0.0)
        two = flow.create_execution(idempotency_key=key, auto_close_timeout=0.0)
        assert one.id == two.id and one.id != key
        async with asyncio.timeout(30):
            first = await one.async_start("x")
            second = await two.async_start("y")
        assert first == second
