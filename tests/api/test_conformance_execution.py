"""Conformance with Agently TriggerFlow 4.1.x: the execution API, runtime streams, errors.

Expected values come from the observed reference behaviour of Agently 4.1.3.9. Where triggerbus
differs on purpose (errors cross the bus as ChunkFailedError; values must serialise), the test
asserts ours and says so in its docstring.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import time

import pytest

from triggerbus import (
    ChunkFailedError,
    Execution,
    TriggerFlow,
    ValueNotSerializableError,
)

BOUND = 20.0
"""Upper bound for every await in these tests; a healthy run takes a fraction of a second."""

META_KEYS = [
    "execution_id",
    "flow_name",
    "status",
    "lifecycle_state",
    "created_at",
    "started_at",
    "closed_at",
    "close_reason",
    "state_version",
]


def done_flow(name: str) -> TriggerFlow:
    """The reference probe's flow: ``seen`` holds the start value, the result is done(v)."""
    flow = TriggerFlow(name=name)

    async def work(data):
        await data.async_set_state("seen", data.value)
        return f"done({data.value})"

    flow.to(work).end()
    flow.when("Later").to(lambda d: f"later({d.value})")
    return flow


def stream_flow(name: str, *, stop: bool = True) -> TriggerFlow:
    """Puts {'n': 1, 'v': value}, {'n': 2}, 'three'; then stops the stream if asked."""
    flow = TriggerFlow(name=name)

    async def producer(data):
        await data.async_put_into_stream({"n": 1, "v": data.value})
        await data.async_put_into_stream({"n": 2})
        data.put_into_stream("three")
        if stop:
            await data.async_stop_stream()
        return "produced"

    flow.to(producer).end()
    return flow


STREAM_ITEMS = [{"n": 2}, "three"]


async def collect(stream) -> list:
    async with asyncio.timeout(BOUND):
        return [item async for item in stream]


# --- create, start, status, meta ----------------------------------------------------------------


class TestLifecycle:
    async def test_a_new_execution_is_created_and_open_with_ten_second_auto_close(
        self, runtime
    ) -> None:
        execution = done_flow("t06").create_execution()
        assert (execution.auto_close, execution.auto_close_timeout) == (True, 10.0)
        assert (execution.get_status(), execution.get_lifecycle_state()) == ("created", "open")
        assert execution.started is False
        meta = execution.result.get_meta()
        assert list(meta) == META_KEYS
        assert {k: meta[k] for k in META_KEYS[1:] if k != "created_at"} == {
            "flow_name": "t06",
            "status": "created",
            "lifecycle_state": "open",
            "started_at": None,
            "closed_at": None,
            "close_reason": None,
            "state_version": 0,
        }
        assert meta["execution_id"] == execution.id
        assert isinstance(meta["created_at"], float)

    async def test_the_default_auto_close_timeout_reaches_the_execution_actor(
        self, runtime
    ) -> None:
        """Proves the 10 s default without waiting for it: the stored snapshot carries it."""
        flow = done_flow("t06_default")
        async with asyncio.timeout(BOUND):
            execution = await flow.async_start_execution("se")
            assert (execution.get_status(), execution.get_lifecycle_state()) == (
                "running",
                "open",
            )
            stored = await execution.async_get_snapshot()
            assert (stored["auto_close"], stored["auto_close_timeout"]) == (True, 10.0)
            assert await execution.async_close() == {"seen": "se", "$final_result": "done(se)"}

    async def test_async_start_with_auto_close_returns_the_close_snapshot(self, runtime) -> None:
        execution = done_flow("t06c").create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND):
            snapshot = await execution.async_start("v1")
        assert snapshot == {"seen": "v1", "$final_result": "done(v1)"}
        assert (execution.get_status(), execution.get_lifecycle_state()) == ("completed", "closed")
        assert (execution.is_open(), execution.is_sealed(), execution.is_closed()) == (
            False,
            False,
            True,
        )

    async def test_meta_after_an_auto_close(self, runtime) -> None:
        execution = done_flow("t06_meta").create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND):
            await execution.async_start("v1")
        meta = execution.result.get_meta()
        assert list(meta) == META_KEYS
        assert (meta["status"], meta["lifecycle_state"], meta["close_reason"]) == (
            "completed",
            "closed",
            "auto_close_idle_timeout",
        )
        assert meta["created_at"] <= meta["started_at"] <= meta["closed_at"]
        assert isinstance(meta["state_version"], int) and meta["state_version"] > 0

    async def test_status_is_running_while_chunks_run(self, runtime) -> None:
        flow = TriggerFlow(name="t06_running")
        entered = asyncio.Event()
        release = asyncio.Event()

        async def gate(data):
            entered.set()
            await release.wait()
            return "ok"

        flow.to(gate).end()
        execution = flow.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND), asyncio.TaskGroup() as group:
            started = group.create_task(execution.async_start())
            await entered.wait()
            assert execution.started is True
            assert (execution.get_status(), execution.get_lifecycle_state()) == (
                "running",
                "open",
            )
            release.set()
        assert started.result() == {"$final_result": "ok"}
        assert execution.get_status() == "completed"

    async def test_auto_close_waits_for_the_idle_timeout(self, runtime) -> None:
        execution = done_flow("t06_idle").create_execution(auto_close_timeout=0.5)
        began = time.monotonic()
        async with asyncio.timeout(BOUND):
            snapshot = await execution.async_start("x")
        assert snapshot == {"seen": "x", "$final_result": "done(x)"}
        assert time.monotonic() - began >= 0.5

    async def test_async_start_timeout_overrides_auto_close_timeout(self, runtime) -> None:
        execution = done_flow("t06_timeout").create_execution()
        began = time.monotonic()
        async with asyncio.timeout(BOUND):
            snapshot = await execution.async_start("x", timeout=0.3)
        assert snapshot == {"seen": "x", "$final_result": "done(x)"}
        assert 0.3 <= time.monotonic() - began < 5.0, "not the 10 s default"

    async def test_async_start_without_auto_close_returns_the_execution_itself(
        self, runtime
    ) -> None:
        execution = done_flow("t06b").create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            returned = await execution.async_start("v2")
        assert returned is execution
        assert (execution.get_status(), execution.get_lifecycle_state()) == ("running", "open")
        async with asyncio.timeout(BOUND):
            await execution.async_close()

    async def test_a_second_async_start_does_not_run_start_again(self, runtime) -> None:
        flow = TriggerFlow(name="t06_twice")
        runs: list = []

        async def work(data):
            runs.append(data.value)

        flow.to(work)
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            assert await execution.async_start("first") is execution
            assert await execution.async_start("second") is execution
            await execution.async_close()
        assert runs == ["first"]

    async def test_async_close_returns_the_snapshot_and_is_idempotent(self, runtime) -> None:
        execution = done_flow("t06_close").create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start("v2")
            first = await execution.async_close()
            second = await execution.async_close()
        assert first == second == {"seen": "v2", "$final_result": "done(v2)"}
        assert (execution.get_status(), execution.get_lifecycle_state()) == ("completed", "closed")
        meta = execution.result.get_meta()
        assert meta["close_reason"] == "manual"
        assert isinstance(meta["state_version"], int) and meta["state_version"] > 0

    async def test_async_close_after_auto_close_returns_the_same_snapshot(self, runtime) -> None:
        execution = done_flow("t06_after_auto").create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND):
            started = await execution.async_start("v1")
            closed = await execution.async_close()
            again = await execution.async_start("ignored")
        assert started == closed == again == {"seen": "v1", "$final_result": "done(v1)"}

    async def test_emit_after_close_returns_none(self, runtime) -> None:
        execution = done_flow("t06_emit_closed").create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start("v")
            await execution.async_close()
            assert await execution.async_emit("Later", 6) is None


    async def test_emit_into_an_execution_closed_elsewhere_returns_none(self, runtime) -> None:
        flow = done_flow("t06_emit_closed_elsewhere")
        execution = flow.create_execution(auto_close=False)
        other = flow.create_execution(execution_id=execution.id)
        async with asyncio.timeout(BOUND):
            await execution.async_start("v")
            await execution.async_close()
            with pytest.warns(RuntimeWarning, match="ignored event 'Later' because it is closed"):
                assert await other.async_emit("Later", 6) is None


# --- flow-level runners --------------------------------------------------------------------------


class TestFlowRunners:
    async def test_flow_async_start_returns_the_close_snapshot_quickly(self, runtime) -> None:
        flow = done_flow("t06d")
        began = time.monotonic()
        async with asyncio.timeout(BOUND):
            snapshot = await flow.async_start("fs")
        assert snapshot == {"seen": "fs", "$final_result": "done(fs)"}
        assert time.monotonic() - began < 5.0, "auto_close_timeout is 0 for flow.async_start"

    async def test_flow_async_start_refuses_auto_close_false(self, runtime) -> None:
        with pytest.raises(ValueError, match="auto_close=True"):
            await done_flow("t06d_refuse").async_start("x", auto_close=False)

    async def test_flow_async_start_execution_returns_a_running_execution(self, runtime) -> None:
        async with asyncio.timeout(BOUND):
            execution = await done_flow("t06d_exec").async_start_execution("se")
            assert isinstance(execution, Execution)
            assert (execution.get_status(), execution.get_lifecycle_state()) == (
                "running",
                "open",
            )
            assert execution.auto_close_timeout == 10.0
            assert await execution.async_close() == {"seen": "se", "$final_result": "done(se)"}


# --- emitting from outside -----------------------------------------------------------------------


class TestOutsideEmit:
    async def test_outside_emit_returns_the_handlers_results(self, runtime) -> None:
        flow = TriggerFlow(name="t02c")
        seen: list = []

        @flow.chunk("first")
        async def first(data):
            return f"first({data.value})"

        async def outside(data):
            seen.append(("outside", data.value, data.trigger_type))
            return "outside-ret"

        flow.to(first)
        flow.when("Outside").to(outside)
        flow.when(first).to(lambda d: "o")
        flow.when("first").to(lambda d: "n")
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start("v")
            assert await execution.async_emit("Outside", 42) == ["outside-ret"]
            assert await execution.async_emit("NobodyListens", 1) is None
            # A chunk name is not mapped to the chunk's trigger from outside...
            assert await execution.async_emit("first", "manual") is None
            # ...its trigger string is.
            assert await execution.async_emit(first.trigger, "manual2") == ["o", "n"]
            assert await execution.async_close() == {}
        assert seen == [("outside", 42, "event")]


class TestEmitNowait:
    """TriggerFlow's ``emit_nowait`` hands back the task of the emit's cascade: awaiting it
    gives what ``emit`` would have returned, not awaiting it is fine too."""

    @staticmethod
    def gated_flow(name: str) -> tuple[TriggerFlow, asyncio.Event]:
        flow = TriggerFlow(name=name)
        gate = asyncio.Event()

        async def on_go(data):
            await gate.wait()
            data.state.set("went", data.value)
            return f"went({data.value})"

        async def boom(data):
            raise ValueError(f"no {data.value}")

        flow.to(lambda data: "begun")
        flow.when("Go").to(on_go)
        flow.when("Boom").to(boom)
        return flow, gate

    async def test_the_async_form_returns_before_the_cascade_with_its_task(self, runtime) -> None:
        flow, gate = self.gated_flow("t_en_async")
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start()
            answer = await execution.async_emit_nowait("Go", 1)
            assert isinstance(answer, asyncio.Task)
            assert not answer.done()  # the handler waits on the gate: nothing waited for it
            gate.set()
            assert await answer == ["went(1)"]
            assert await (await execution.async_emit_nowait("NobodyListens")) is None
            assert await execution.async_close() == {"went": 1}
            assert await execution.async_emit_nowait("Go", 2) is None  # closed

    async def test_the_sync_form_inside_a_loop_does_not_block_and_returns_the_task(
        self, runtime
    ) -> None:
        """It used to refuse (a sync form inside a running loop); TriggerFlow schedules it."""
        flow, gate = self.gated_flow("t_en_sync_in_loop")
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start()
            answer = execution.emit_nowait("Go", 3)
            assert isinstance(answer, asyncio.Task) and not answer.done()
            gate.set()
            assert await answer == ["went(3)"]
            assert await execution.async_get_state("went") == 3
            await execution.async_close()

    async def test_a_failing_handler_fails_the_task_and_an_unawaited_one_stays_quiet(
        self, runtime
    ) -> None:
        flow, _ = self.gated_flow("t_en_fail")
        loop = asyncio.get_running_loop()
        unhandled: list[dict] = []
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        try:
            async with asyncio.timeout(BOUND):
                awaited_here = flow.create_execution(auto_close=False)
                await awaited_here.async_start()
                awaited = await awaited_here.async_emit_nowait("Boom", 1)
                with pytest.raises(ChunkFailedError) as raised:
                    await awaited
                assert raised.value.chunk == "boom" and isinstance(raised.value, ValueError)
                left_alone = flow.create_execution(auto_close=False)
                await left_alone.async_start()
                ignored = await left_alone.async_emit_nowait("Boom", 2)
                await asyncio.wait([ignored])
                del ignored
                gc.collect()  # a task whose exception nobody retrieved complains when collected
                assert left_alone.get_status() == "failed"
        finally:
            loop.set_exception_handler(previous)
        assert [c for c in unhandled if "never retrieved" in c.get("message", "")] == []

    async def test_an_unawaited_task_that_could_not_reach_the_bus_is_logged(self) -> None:
        """A handler's failure is the execution's to report; any other failure of an emit
        nobody awaits is logged, not lost."""
        from structlog.testing import capture_logs

        from triggerbus.errors import BusError
        from triggerbus.execution import _unawaited_failure_logged

        async def lost() -> None:
            raise BusError("the connection closed", subject="tb.x")

        async def failed() -> None:
            raise ChunkFailedError("boom", chunk="c", error_type="ValueError",
                                   error_message="no")  # fmt: skip

        with capture_logs() as logs:
            for work in (lost, failed):
                task = asyncio.get_running_loop().create_task(work())
                task.add_done_callback(_unawaited_failure_logged)
                # Done callbacks run in the order added: ours before the one that ends wait.
                await asyncio.wait([task], timeout=BOUND)
        assert [(entry["event"], "BusError" in entry["error"]) for entry in logs] == [
            ("emit_nowait_failed", True)
        ]

    def test_the_sync_form_outside_a_loop_returns_a_future_of_the_results(
        self, sync_runtime
    ) -> None:
        flow = TriggerFlow(name="t_en_sync")
        flow.to(lambda data: "begun")
        flow.when("Go").to(lambda data: f"went({data.value})")
        execution = flow.create_execution(auto_close=False)
        execution.start()
        answer = execution.emit_nowait("Go", 4)
        assert isinstance(answer, concurrent.futures.Future)
        assert answer.result(timeout=BOUND) == ["went(4)"]
        execution.close()
        assert execution.emit_nowait("Go", 5) is None


class TestOutsideState:
    async def test_outside_state_written_while_running_is_in_the_close_snapshot(
        self, runtime
    ) -> None:
        execution = done_flow("t03_outside").create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start("v")
            await execution.async_set_state("outside", 1)
            assert await execution.async_close() == {
                "seen": "v",
                "$final_result": "done(v)",
                "outside": 1,
            }

    async def test_outside_state_written_before_start_is_kept(self, runtime) -> None:
        flow = TriggerFlow(name="t03_before_start")
        flow.to(lambda d: None)
        execution = flow.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND):
            await execution.async_set_state("outside", 1)
            assert await execution.async_start() == {"outside": 1}


# --- concurrency ---------------------------------------------------------------------------------


async def _peak_of(concurrency: int | None, name: str) -> int:
    flow = TriggerFlow(name=name)
    running = 0
    peak = 0

    async def emitter(data):
        return await data.async_emit("Go", None)

    def worker(label: str):
        async def handler(data):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.1)
            running -= 1
            return label

        return (label, handler)

    flow.to(emitter).end()
    for label in ("w1", "w2", "w3", "w4"):
        flow.when("Go").to(worker(label))
    execution = flow.create_execution(concurrency=concurrency, auto_close_timeout=0.0)
    async with asyncio.timeout(BOUND):
        snapshot = await execution.async_start()
    assert snapshot == {"$final_result": ["w1", "w2", "w3", "w4"]}
    return peak


class TestConcurrency:
    async def test_concurrency_one_runs_one_handler_at_a_time(self, runtime) -> None:
        """The emitting chunk gives up its slot while it waits, so nothing deadlocks."""
        assert await _peak_of(1, "t06d_c1") == 1

    async def test_concurrency_two_runs_two_at_a_time(self, runtime) -> None:
        assert await _peak_of(2, "t06d_c2") == 2

    async def test_no_concurrency_limit_runs_all_at_once(self, runtime) -> None:
        assert await _peak_of(None, "t06d_cnone") == 4


# --- runtime stream ------------------------------------------------------------------------------


class TestRuntimeStream:
    async def test_flow_stream_starts_a_run_and_ends_at_stop(self, runtime) -> None:
        items = await collect(
            stream_flow("s1").get_async_runtime_stream("S1", timeout=5)
        )
        assert items == [{"n": 1, "v": "S1"}, *STREAM_ITEMS]

    async def test_flow_stream_without_stop_ends_at_auto_close(self, runtime) -> None:
        began = time.monotonic()
        items = await collect(
            stream_flow("s2", stop=False).get_async_runtime_stream("S2", timeout=5)
        )
        assert items == [{"n": 1, "v": "S2"}, *STREAM_ITEMS]
        assert time.monotonic() - began < 5.0, "ended by the close, not by the timeout"

    async def test_passing_a_value_starts_the_execution(self, runtime) -> None:
        execution = stream_flow("s3").create_execution(auto_close=False)
        items = await collect(execution.get_async_runtime_stream("S3", timeout=5))
        assert items == [{"n": 1, "v": "S3"}, *STREAM_ITEMS]
        assert execution.started is True
        async with asyncio.timeout(BOUND):
            assert await execution.async_close() == {"$final_result": "produced"}

    async def test_items_put_before_the_reader_attached_are_replayed(self, runtime) -> None:
        execution = stream_flow("s4").create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start("S4")
        items = await collect(execution.get_async_runtime_stream(timeout=5))
        assert items == [{"n": 1, "v": "S4"}, *STREAM_ITEMS]
        async with asyncio.timeout(BOUND):
            await execution.async_close()

    async def test_two_readers_both_get_every_item(self, runtime) -> None:
        execution = stream_flow("s8").create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND):
            first, second = await asyncio.gather(
                collect(execution.get_async_runtime_stream("S8", timeout=5)),
                collect(execution.get_async_runtime_stream("ignored", timeout=1)),
            )
        assert first == second == [{"n": 1, "v": "S8"}, *STREAM_ITEMS]

    async def test_a_reader_after_close_still_gets_every_item(self, runtime) -> None:
        execution = stream_flow("s11").create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND):
            await execution.async_start("S11")
        items = await collect(execution.get_async_runtime_stream(timeout=5))
        assert items == [{"n": 1, "v": "S11"}, *STREAM_ITEMS]

    async def test_without_stop_or_close_the_stream_ends_by_timeout(self, runtime) -> None:
        execution = stream_flow("s5", stop=False).create_execution(auto_close=False)
        began = time.monotonic()
        items = await collect(execution.get_async_runtime_stream("S5", timeout=1))
        assert items == [{"n": 1, "v": "S5"}, *STREAM_ITEMS]
        assert time.monotonic() - began >= 1.0
        async with asyncio.timeout(BOUND):
            assert await execution.async_close() == {"$final_result": "produced"}

    async def test_timeout_bounds_the_wait_for_each_item_not_the_whole_stream(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="s7")

        async def ticker(data):
            for n in range(4):
                await data.async_put_into_stream(n)
                await asyncio.sleep(0.4)
            await data.async_stop_stream()

        flow.to(ticker)
        began = time.monotonic()
        items = await collect(flow.get_async_runtime_stream(timeout=1.0))
        assert items == [0, 1, 2, 3]
        assert time.monotonic() - began > 1.0, "the stream outlived one timeout"

    async def test_a_gap_longer_than_the_timeout_ends_the_stream(self, runtime) -> None:
        flow = TriggerFlow(name="s7b")
        release = asyncio.Event()

        async def ticker(data):
            await data.async_put_into_stream(0)
            await release.wait()
            await data.async_put_into_stream(1)

        flow.to(ticker)
        execution = flow.create_execution(auto_close_timeout=0.0)
        items = await collect(execution.get_async_runtime_stream(None, timeout=0.5))
        assert items == [0]
        release.set()
        async with asyncio.timeout(BOUND):
            assert await execution.async_start() == {}

    async def test_a_start_called_before_the_reader_runs_decides_the_value(
        self, runtime
    ) -> None:
        """The seed playbook's pattern: the reader task has not run when async_start is
        called, so the run uses async_start's value."""
        execution = stream_flow("s9").create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND), asyncio.TaskGroup() as group:
            reader = group.create_task(
                collect(execution.get_async_runtime_stream("FROM-STREAM", timeout=5))
            )
            snapshot = await execution.async_start("FROM-START")
        assert snapshot == {"$final_result": "produced"}
        assert reader.result() == [{"n": 1, "v": "FROM-START"}, *STREAM_ITEMS]

    async def test_a_reader_that_runs_first_decides_the_value(self, runtime) -> None:
        execution = stream_flow("s9b").create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(BOUND), asyncio.TaskGroup() as group:
            reader = group.create_task(
                collect(execution.get_async_runtime_stream("FROM-STREAM", timeout=5))
            )
            await asyncio.sleep(0)  # one turn of the loop: the reader claims the start
            snapshot = await execution.async_start("FROM-START")
        assert snapshot == {"$final_result": "produced"}
        assert reader.result() == [{"n": 1, "v": "FROM-STREAM"}, *STREAM_ITEMS]


# --- errors --------------------------------------------------------------------------------------


class MyErr(Exception):
    pass


class TestErrors:
    async def test_a_chunk_that_raises_fails_async_start_with_chunk_failed_error(
        self, runtime
    ) -> None:
        """Agently re-raises the original exception (MyErr('kaboom')); triggerbus raises
        ChunkFailedError carrying the remote type, message and traceback (difference)."""
        flow = TriggerFlow(name="t09a")

        async def boom(data):
            await data.async_set_state("before", 1)
            raise MyErr("kaboom")

        flow.to(boom).end()
        execution = flow.create_execution(auto_close_timeout=0.0)
        with pytest.raises(ChunkFailedError) as raised:
            async with asyncio.timeout(BOUND):
                await execution.async_start("x")
        error = raised.value
        assert (error.chunk, error.error_type, error.error_message) == ("boom", "MyErr", "kaboom")
        assert "'boom'" in str(error)
        assert "raise MyErr" in error.remote_traceback
        assert error.execution_id == execution.id
        assert execution.get_status() == "failed"
        async with asyncio.timeout(BOUND):
            assert await execution.async_close() == {"before": 1}
        assert execution.get_status() == "failed"

    async def test_a_downstream_sync_chunk_that_raises_fails_flow_async_start(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="t09b")

        def sync_boom(data):
            raise ValueError(f"bad value {data.value!r}")

        flow.to(lambda d: "ok").to(sync_boom)
        with pytest.raises(ChunkFailedError) as raised:
            async with asyncio.timeout(BOUND):
                await flow.async_start()
        assert (raised.value.chunk, raised.value.error_type, raised.value.error_message) == (
            "sync_boom",
            "ValueError",
            "bad value 'ok'",
        )

    async def test_an_emit_handler_that_raises_fails_the_emitters_await(self, runtime) -> None:
        """Agently raises the handler's error at the emitter, and lets the flow continue if
        the emitter catches it; triggerbus fails the execution at the first uncaught chunk
        error, so the run fails even when the emitter catches (difference)."""
        flow = TriggerFlow(name="t09c")
        caught: list = []
        emitter_done = asyncio.Event()

        async def emitter(data):
            try:
                await data.async_emit("E", 1)
            except RuntimeError as error:  # the handler's own type, as in Agently
                assert isinstance(error, ChunkFailedError)
                caught.append((error.chunk, error.error_type, error.error_message))
            finally:
                emitter_done.set()
            return "emitter-ok"

        def bad(data):
            raise RuntimeError("handler failed")

        flow.to(emitter).end()
        flow.when("E").to(bad)
        with pytest.raises(ChunkFailedError, match="handler failed"):
            async with asyncio.timeout(BOUND):
                await flow.async_start()
        # The emitter hears of the failure on its own path: the run may close first.
        async with asyncio.timeout(BOUND):
            await emitter_done.wait()
        assert caught == [("bad", "RuntimeError", "handler failed")]

    async def test_skip_exceptions_returns_the_state_without_raising(self, runtime) -> None:
        flow = TriggerFlow(name="t09e", skip_exceptions=True)

        async def boom(data):
            await data.async_set_state("before", 1)
            raise MyErr("kaboom")

        flow.to(boom).end()
        async with asyncio.timeout(BOUND):
            assert await flow.async_start("x") == {"before": 1}

    async def test_a_chunk_returning_a_non_serialisable_value_fails_naming_chunk_and_type(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="unserialisable")

        @flow.chunk("maker")
        async def maker(data):
            return object()

        flow.to(maker).end()
        execution = flow.create_execution(auto_close_timeout=0.0)
        with pytest.raises(ChunkFailedError) as raised:
            async with asyncio.timeout(BOUND):
                await execution.async_start()
        error = raised.value
        assert (error.chunk, error.error_type) == ("maker", "ValueNotSerializableError")
        assert "'maker'" in error.error_message and "object" in error.error_message
        assert execution.get_status() == "failed"

    async def test_a_non_serialisable_start_value_is_refused(self, runtime) -> None:
        flow = done_flow("unserialisable_start")
        with pytest.raises(ValueNotSerializableError) as raised:
            async with asyncio.timeout(BOUND):
                await flow.async_start(object())
        assert raised.value.type_name == "object"


# --- sync twins ----------------------------------------------------------------------------------



def sync_flow(name: str) -> TriggerFlow:
    flow = TriggerFlow(name=name)

    def step(data):
        data.state.set("k", data.value)
        data.put_into_stream(f"s1:{data.value}")
        return f"r({data.value})"

    async def tail(data):
        await data.async_put_into_stream("s2")

    flow.to(step).end().to(tail)
    return flow


class TestSyncTwins:
    def test_flow_start_returns_the_close_snapshot(self, sync_runtime) -> None:
        flow = sync_flow("t06c_flow")
        assert flow.start("a") == {"k": "a", "$final_result": "r(a)"}
        assert flow.start() == {"k": None, "$final_result": "r(None)"}

    def test_execution_start_and_close(self, sync_runtime) -> None:
        flow = sync_flow("t06c_exec")
        execution = flow.create_execution(auto_close_timeout=0)
        assert execution.start("b") == {"k": "b", "$final_result": "r(b)"}
        manual = flow.create_execution(auto_close=False)
        assert manual.start("c") is manual
        assert manual.close() == {"k": "c", "$final_result": "r(c)"}
        assert manual.get_status() == "completed"

    def test_flow_get_runtime_stream_yields_items_until_the_run_closes(
        self, sync_runtime
    ) -> None:
        items = list(sync_flow("t06c_stream").get_runtime_stream("d", timeout=5))
        assert items == ["s1:d", "s2"]

    def test_leaving_a_sync_stream_early_leaves_later_runs_working(self, sync_runtime) -> None:
        stream = sync_flow("t06c_stream_early").get_runtime_stream("e", timeout=5)
        for item in stream:
            assert item == "s1:e"
            break
        stream.close()
        items = list(sync_flow("t06c_stream_after").get_runtime_stream("f", timeout=5))
        assert items == ["s1:f", "s2"]

    def test_sync_flow_start_raises_a_chunk_failure(self, sync_runtime) -> None:
        flow = TriggerFlow(name="t09g")

        def sboom(data):
            raise MyErr("sync kaboom")

        flow.to(sboom)
        with pytest.raises(ChunkFailedError) as raised:
            flow.start()
        assert (raised.value.chunk, raised.value.error_type, raised.value.error_message) == (
            "sboom",
            "MyErr",
            "sync kaboom",
        )

    def test_the_other_execution_methods_agently_has(self, sync_runtime) -> None:
        """State reads and writes, emit_nowait, flow data, the stream and the result, from
        the handle, in their sync forms (each wraps its ``async_`` twin)."""
        flow = TriggerFlow(name="t06c_more")

        async def begin(data):
            await data.async_put_into_stream("from a chunk")
            return "begun"

        async def on_ping(data):
            data.state.set(f"pinged.{data.value}", True)

        flow.to(begin).end()
        flow.when("Ping").to(on_ping)
        execution = flow.create_execution(auto_close=False)
        assert execution.get_state() == {} and execution.get_state("a", "DEF") == "DEF"
        execution.set_state("a", {"b": 1})
        execution.append_state("xs", 1)
        execution.append_state("xs", 2)
        execution.del_state("xs")
        execution.append_state("xs", 3)
        assert execution.start() is execution
        assert execution.get_state("a.b") == 1 and execution.get_state("xs") == [3]
        execution.put_into_stream("from outside")
        execution.emit_nowait("Ping", 1)
        execution.set_flow_data("fd", 1)
        assert execution.get_flow_data("fd") == 1
        execution.del_flow_data("fd")
        assert execution.get_flow_data("fd", "gone") == "gone"
        assert execution.get_result(timeout=5) == "begun"  # end() reached: before the close
        closed = execution.close()  # in-flight work (Ping's chunk) finishes first
        assert closed["pinged"] == {"1": True} and closed["$final_result"] == "begun"
        assert execution.get_result() == "begun"
        with pytest.warns(DeprecationWarning, match="get_state"):
            assert execution.get_runtime_data("a") == {"b": 1}
        assert list(execution.get_runtime_stream(timeout=5)) == ["from a chunk", "from outside"]

    def test_stop_stream_from_the_handle_ends_the_readers(self, sync_runtime) -> None:
        flow = TriggerFlow(name="t06c_stop")
        flow.to(lambda data: None)  # no end(): the result is the close snapshot
        execution = flow.create_execution(auto_close=False)
        execution.start()
        execution.put_into_stream("only")
        with pytest.raises(ValueNotSerializableError, match="stream item"):
            execution.put_into_stream(object())
        execution.stop_stream()
        assert list(execution.get_runtime_stream(timeout=5)) == ["only"]
        assert execution.get_status() == "running"
        execution.set_state("k", 1)
        execution.close()
        assert execution.get_result() == {"k": 1}
