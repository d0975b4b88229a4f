"""An idle execution's auto-close timer lives in JetStream, not in the process that set it:
SIGKILL that process, restart the server on the same store, and another process closes the
execution when the timer is due."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats

from tests._helpers import ROOT, child_env, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.bus.embedded import EmbeddedServer
from triggerbus.bus.subjects import Subjects
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess, unique_prefix

IDLE = 3.0


async def wait_timer_set(url: str, subjects: Subjects, flow: str, execution_id: str) -> None:
    """Watch the execution's snapshot until its idle timer has been asked for."""
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(subjects.executions_bucket)
        watcher = await kv.watch(subjects.execution_key(flow, execution_id))
        try:
            async for entry in watcher:
                if entry is None or entry.value is None:
                    continue
                snapshot = msgspec.json.decode(entry.value)
                if snapshot.get("timer_generation", 0) >= 1:
                    return
        finally:
            await watcher.stop()
    finally:
        await nc.drain()


async def test_idle_timer_fires_after_its_setter_died_and_the_server_restarted(tmp_path) -> None:
    flow = load_module("tests/flows/echo.py", "echo_timer").flow
    prefix = unique_prefix()
    store = str(tmp_path / "store")
    first = EmbeddedServer(store_dir=store)
    url = first.start()
    configure(Settings(nats_url=url, prefix=prefix, local_chunks=frozenset(),
                       host_executions=False))  # fmt: skip
    options = {"nats_url": url, "prefix": prefix, "cwd": str(ROOT), "env": child_env()}
    second: EmbeddedServer | None = None
    try:
        async with asyncio.timeout(90):
            execution = flow.create_execution(auto_close_timeout=IDLE)
            async with WorkerProcess("tests.flows.echo:flow", **options) as setter:
                started = time.monotonic()
                run = asyncio.create_task(execution.async_start("tick"))
                await wait_timer_set(url, Subjects(prefix), flow.name, execution.id)
                setter.kill()
                await setter.terminate()
            first.stop()
            second = EmbeddedServer(store_dir=store, port=first.port)
            second.start()
            async with WorkerProcess("tests.flows.echo:flow", **options):
                snapshot = await run
                elapsed = time.monotonic() - started
                stored = await execution.async_get_snapshot()
    finally:
        await close_runtime()
        configure(None)
        first.stop()
        if second is not None:
            second.stop()
    assert snapshot == {"$final_result": "tick"}
    assert stored["close_reason"] == "auto_close_idle_timeout"
    assert elapsed >= IDLE - 0.5, "the timer fired when due, not at once"
