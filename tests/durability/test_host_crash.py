"""An execution host killed between writing a snapshot and publishing its outbox loses nothing
and duplicates nothing: the next host to load that snapshot publishes the stored outbox again,
with the same message ids."""

from __future__ import annotations

import asyncio

from tests._helpers import ROOT, child_env, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess

EXECUTIONS = 20


async def test_host_killed_between_store_and_publish_loses_nothing(
    nats_url: str, prefix: str
) -> None:
    flow = load_module("tests/flows/crashy.py", "crashy_host_kill").flow
    # This process hosts the chunks only; execution actors run in the worker processes.
    configure(Settings(nats_url=nats_url, prefix=prefix, host_executions=False, ack_wait=2.0))
    common = {
        "nats_url": nats_url,
        "prefix": prefix,
        "no_chunks": True,
        "cwd": str(ROOT),
    }
    victim = WorkerProcess(
        "tests.flows.crashy:flow",
        env={**child_env(), "TRIGGERBUS_ACK_WAIT": "2", "TRIGGERBUS_FAULT_KILL_AFTER_STORES": "5"},
        **common,
    )
    survivor = WorkerProcess(
        "tests.flows.crashy:flow", env={**child_env(), "TRIGGERBUS_ACK_WAIT": "2"}, **common
    )
    try:
        async with asyncio.timeout(120):
            async with victim:
                runs = [
                    asyncio.create_task(
                        flow.create_execution(auto_close_timeout=0.0).async_start(i)
                    )
                    for i in range(EXECUTIONS)
                ]
                await victim.wait_for("fault_injected_kill")
                assert await victim.terminate() == -9
            async with survivor:
                snapshots = await asyncio.gather(*runs)
    finally:
        await close_runtime()
        configure(None)
    assert [s["$final_result"] for s in snapshots] == [i * 10 for i in range(EXECUTIONS)]
    assert all(s["trail"] == ["first", "second"] for s in snapshots)
