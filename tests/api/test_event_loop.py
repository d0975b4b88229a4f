"""The worker and the sync API's thread run on uvloop when it is installed (the ``fast``
extra, part of ``dev``), and on asyncio's loop when ``TRIGGERBUS_EVENT_LOOP=asyncio``."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tests._helpers import ROOT, child_env
from triggerbus._gc import TUNED_THRESHOLDS
from triggerbus._loop import loop_factory
from triggerbus.config import Settings
from triggerbus.errors import ConfigurationError
from triggerbus.testing import WorkerProcess


def test_choices_and_a_clear_error_for_anything_else() -> None:
    assert loop_factory("asyncio") is asyncio.new_event_loop
    loop = loop_factory("uvloop")()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    with pytest.raises(ConfigurationError, match="TRIGGERBUS_EVENT_LOOP must be one of"):
        Settings.from_env({"TRIGGERBUS_EVENT_LOOP": "trio"})
    assert Settings.from_env({"TRIGGERBUS_EVENT_LOOP": "AsyncIO"}).event_loop == "asyncio"


@pytest.mark.parametrize(("choice", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_the_worker_says_which_loop_it_runs_on(
    nats_url: str, prefix: str, choice: str, expected: str
) -> None:
    env = {**child_env(), "TRIGGERBUS_EVENT_LOOP": choice}
    worker = WorkerProcess(
        "tests.flows.slow:flow", nats_url=nats_url, prefix=prefix, cwd=str(ROOT), env=env
    )
    async with asyncio.timeout(30):
        ready = await worker.start()
        await worker.terminate()
    assert ready["event_loop"] == expected


def test_worker_gc_choices_and_a_clear_error_for_anything_else() -> None:
    assert Settings.from_env({}).worker_gc == "tuned"
    assert Settings.from_env({"TRIGGERBUS_WORKER_GC": "Python"}).worker_gc == "python"
    with pytest.raises(ConfigurationError, match="TRIGGERBUS_WORKER_GC must be one of"):
        Settings.from_env({"TRIGGERBUS_WORKER_GC": "off"})


@pytest.mark.parametrize(
    ("choice", "flag", "tuned"),
    [("", None, True), ("python", None, False), ("python", "tuned", True)],
)
async def test_the_worker_tunes_its_garbage_collector_unless_told_not_to(
    nats_url: str, prefix: str, choice: str, flag: str | None, tuned: bool
) -> None:
    """``triggerbus worker`` owns its process: raised collector thresholds and the start-up
    objects frozen out of every collection, unless ``TRIGGERBUS_WORKER_GC=python``."""
    env = {**child_env(), "TRIGGERBUS_WORKER_GC": choice}
    worker = WorkerProcess(
        "tests.flows.slow:flow", nats_url=nats_url, prefix=prefix, gc=flag, cwd=str(ROOT), env=env
    )
    async with asyncio.timeout(30):
        ready = await worker.start()
        await worker.terminate()
    defaults = list(gc.get_threshold())  # this test process's: Python's own
    if tuned:
        assert ready["gc_thresholds"] == list(TUNED_THRESHOLDS) != defaults
        assert ready["gc_frozen"] > 1000
    else:
        assert (ready["gc_thresholds"], ready["gc_frozen"]) == (defaults, 0)


async def test_a_sync_call_holds_a_loop_that_hosts_nothing_and_refuses_one_that_hosts(
    runtime,
) -> None:
    """Agently code calls the sync forms inside ``async def``. While this loop hosts no actors
    they run on the background loop, holding this one for their answer (warned once). Once an
    async call has hosted the flow here, holding the loop would wait for itself: refused,
    naming the method the caller wrote, not the ``async_`` twin it wraps."""
    from structlog.testing import capture_logs

    from triggerbus import TriggerFlow, _sync
    from triggerbus.errors import LifecycleError

    flow = TriggerFlow(name="sync_inside_loop")

    @flow.chunk("step")
    async def step(data):
        return data.value

    flow.to(step).end()
    flow.when("Go").to(lambda data: f"went {data.value}")
    _sync._warned.clear()
    async with asyncio.timeout(20):
        with capture_logs() as logs:
            assert flow.start(1) == {"$final_result": 1}
            held = flow.create_execution(auto_close=False)
            assert held.start(2) is held
            assert held.emit("Go", 3) == ["went 3"]
            held.set_state("k", 4)
            assert held.close() == {"k": 4, "$final_result": 2}
        assert [entry["call"] for entry in logs if
                entry["event"] == "sync_call_holds_event_loop"] == ["TriggerFlow.start()"]
        assert await flow.async_start(5) == {"$final_result": 5}  # hosted on this loop too
        execution = flow.create_execution(auto_close=False)
        with pytest.raises(LifecycleError, match=r"^TriggerFlow\.start\(\) is the sync form"):
            flow.start(6)
        with pytest.raises(LifecycleError, match=r"\.set_state\(\) is the sync form.*async_ twin"):
            execution.set_state("k", 1)
