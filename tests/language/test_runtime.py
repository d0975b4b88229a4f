"""Conformance of emits, the execution concurrency cap, errors, the lifecycle, auto-close and
stream timeouts, each run with chunks in this process and in a worker process."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from typing import Any

import pytest

from tests.flows import lang_runtime as flows
from tests.language.conftest import Hosting, succeeded_in_worker
from triggerbus import ChunkFailedError

pytestmark = pytest.mark.asyncio(loop_scope="module")
FLOWS_MODULE = "tests.flows.lang_runtime"

STARTED = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


async def collect_stream(execution: Any, value: Any = None, *, idle: float = 5.0) -> list[Any]:
    """Every stream item; ``idle`` is the stream's own bound on the wait for each next item."""
    return [item async for item in execution.get_async_runtime_stream(value, timeout=idle)]


def peak_in_flight(items: list[Any]) -> int:
    running, peak = 0, 0
    for kind, _ in items:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


class TestEmits:
    async def test_emit_nowait_returns_at_once_and_its_cascade_still_runs(
        self, hosting: Hosting
    ) -> None:
        execution = flows.nowait.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start(None)
            items = await stream
        assert result == {"$final_result": "fired"}
        assert sorted(items, key=lambda i: i["side"]) == [{"side": 1}, {"side": 2}]
        await succeeded_in_worker(hosting, "on_side")

    async def test_awaited_emits_run_depth_first_and_the_stream_keeps_causal_order(
        self, hosting: Hosting
    ) -> None:
        """An awaited emit returns after its whole cascade (downstream chunks included), so
        everything along one causal path reaches the stream in that order."""
        execution = flows.depth.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start(None)
            items = await stream
        assert result == {"$final_result": ["h1"]}
        assert items == [
            "outer:start",
            "h1",
            "h2",
            "h1:after:['h2']",
            "h1_next",
            "outer:after:['h1']",
        ]


class TestExecutionConcurrency:
    @pytest.mark.parametrize("cap", [1, 2])
    async def test_cap_holds_for_chunk_bodies_wherever_they_run(
        self, hosting: Hosting, cap: int
    ) -> None:
        """Six items, no for_each cap: the execution's ``concurrency`` alone bounds them."""
        execution = flows.capped.create_execution(concurrency=cap, auto_close_timeout=0.0)
        async with asyncio.timeout(30):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start(list(range(6)))
            items = await stream
        assert result == {"$final_result": list(range(6))}
        assert peak_in_flight(items) == cap

    async def test_cap_of_one_releases_the_permit_while_a_chunk_awaits_an_emit(
        self, hosting: Hosting
    ) -> None:
        """caller awaits inner, which awaits deeper: three chunk bodies nested under a cap
        of one finish instead of deadlocking."""
        execution = flows.nested_emit.create_execution(concurrency=1, auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            result = await execution.async_start(1)
        assert result == {"$final_result": [[20]]}


class TestErrors:
    async def test_a_failing_chunk_fails_the_execution_and_stops_downstream(
        self, hosting: Hosting
    ) -> None:
        execution = flows.failing.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            with pytest.raises(ChunkFailedError) as raised:
                await execution.async_start("x")
            items = await stream
        error = raised.value
        assert (error.chunk, error.error_type, error.error_message) == (
            "boom",
            "KaboomError",
            "kaboom(x)",
        )
        assert "boom" in str(error) and "kaboom(x)" in str(error)
        assert "raise KaboomError" in error.remote_traceback
        assert execution.get_status() == "failed"
        assert items == []
        snapshot = await execution.async_get_snapshot()
        assert (snapshot["status"], snapshot["lifecycle"], snapshot["state"]) == (
            "failed",
            "closed",
            {"before": 1},
        )

    async def test_skip_exceptions_keeps_siblings_running(self, hosting: Hosting) -> None:
        execution = flows.skipping.create_execution(skip_exceptions=True, auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start(None)
            items = await stream
        assert result == {}
        assert items == ["ok_slow done"]
        assert execution.get_status() == "completed"


class TestLifecycle:
    async def test_statuses_and_open_sealed_closed(self, hosting: Hosting) -> None:
        """created/open -> running/open -> sealed (outside emits ignored with a warning) ->
        open again -> completed/closed (emits ignored with a warning)."""
        execution = flows.life.create_execution(auto_close=False)
        assert (execution.get_status(), execution.get_lifecycle_state()) == ("created", "open")
        async with asyncio.timeout(20):
            assert await execution.async_start(None) is execution
            assert (execution.get_status(), execution.get_lifecycle_state()) == (
                "running",
                "open",
            )
            assert await execution.async_emit("Ping", 1) == ["pong(1)"]
            await execution.async_seal()
            assert execution.get_lifecycle_state() == "sealed"
            with pytest.warns(RuntimeWarning, match="sealed"):
                assert await execution.async_emit("Ping", 2) is None
            await execution.async_unseal()
            assert execution.get_lifecycle_state() == "open"
            assert await execution.async_emit("Ping", 3) == ["pong(3)"]
            assert await execution.async_close() == {}
            assert (execution.get_status(), execution.get_lifecycle_state()) == (
                "completed",
                "closed",
            )
            with pytest.warns(RuntimeWarning, match="closed"):
                await execution.async_unseal()

    async def test_a_sealed_execution_does_not_close_by_idleness(self, hosting: Hosting) -> None:
        execution = flows.life.create_execution(auto_close_timeout=0.2)
        async with asyncio.timeout(20):
            await execution.async_start(None, wait_for_result=False)
            await execution.async_seal()
            assert execution.get_lifecycle_state() == "sealed"
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.8):
                    await execution.async_start(None)
            assert await execution.async_close() == {}
        snapshot = await execution.async_get_snapshot()
        assert (snapshot["status"], snapshot["close_reason"]) == ("completed", "manual")

    async def test_auto_close_is_an_idle_timeout_not_a_deadline(self, hosting: Hosting) -> None:
        """Activity every 0.3 s keeps a 0.6 s idle timeout from firing; it closes 0.6 s
        after the last activity."""
        execution = flows.life.create_execution(auto_close_timeout=0.6)
        async with asyncio.timeout(20):
            began = time.monotonic()
            closing = asyncio.create_task(execution.async_start(None))
            for n in range(4):
                await asyncio.sleep(0.3)  # the idle gaps under test, not a wait for an event
                assert await execution.async_emit("Ping", n) == [f"pong({n})"]
            last = time.monotonic()
            assert await closing == {}
            closed = time.monotonic()
        assert last - began >= 1.2
        assert closed - last >= 0.55
        snapshot = await execution.async_get_snapshot()
        assert snapshot["close_reason"] == "auto_close_idle_timeout"

    async def test_auto_close_timeout_none_never_closes_by_itself(self, hosting: Hosting) -> None:
        execution = flows.life.create_execution(auto_close_timeout=None)
        async with asyncio.timeout(20):
            closing = asyncio.create_task(execution.async_start(None))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(closing)
            assert await execution.async_emit("Ping", 1) == ["pong(1)"]
            assert await execution.async_close() == {}
            assert await closing == {}


class TestStreamTimeout:
    async def test_timeout_bounds_the_wait_for_each_next_item_only(
        self, hosting: Hosting
    ) -> None:
        """Items 0.5 s apart all arrive under a 3 s timeout (4 s in all, so the timeout is not
        a deadline); items 4 s apart under a 1 s timeout end the stream after the first. The
        margins are wide because workers on a loaded 2-core machine add jitter."""
        steady = flows.ticker.create_execution(auto_close_timeout=0.0)
        sparse = flows.ticker.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(60):
            assert await collect_stream(steady, [0.5, 9], idle=3.0) == list(range(9))
            assert await collect_stream(sparse, [4.0, 2], idle=1.0) == [0]
            assert await sparse.async_start() == {"$final_result": 2}
        await succeeded_in_worker(hosting, "tick")


class TestFlowResources:
    async def test_each_process_gives_its_chunks_its_own_flow_resources(
        self, hosting: Hosting
    ) -> None:
        """Flow-level resources (``flow.set_runtime_resource`` and friends) reach the chunks
        of every execution hosted in the process that set them, under the execution's own;
        they do not travel to other processes, the execution's serialisable ones do, and one
        JSON would change (a datetime) stays in the starting process."""
        flows.resourced.set_runtime_resource("starter", "set by the starting process")
        try:
            execution = flows.resourced.create_execution(
                runtime_resources={"shared": "execution", "started": STARTED},
                auto_close_timeout=0.0,
            )
            assert execution.get_runtime_resources() == {
                "host_pid": os.getpid(),
                "shared": "execution",
                "started": STARTED,
                "starter": "set by the starting process",
            }
            async with asyncio.timeout(20):
                result = await execution.async_start(None)
        finally:
            flows.resourced.del_runtime_resource("starter")
        in_process = hosting.worker is None
        assert result["$final_result"] == {
            "host_pid": os.getpid() if in_process else hosting.worker.pid,
            "shared": "execution",
            "doomed": None,
            "starter": "set by the starting process" if in_process else None,
            "started": "datetime" if in_process else "NoneType",
        }
        await succeeded_in_worker(hosting, "read_resources")
        assert flows.resourced.get_runtime_resource("starter", "gone") == "gone"
