"""A worker killed between storing a handed-off outcome's transition and sending its outbox
loses nothing: the outcome was never in the mailbox, so it is the unacked invocation that comes
back, and its repeat finds the stored transition and sends the outbox again."""

from __future__ import annotations

import asyncio

from tests._helpers import ROOT, child_env, configure_pure_client
from tests.flows.pure_pair import flow
from triggerbus._runtime import close_runtime, configure
from triggerbus.testing import WorkerProcess


async def test_worker_killed_after_storing_a_handed_off_outcome_loses_nothing(
    nats_url: str, prefix: str
) -> None:
    # This process is a pure client; each worker hosts the chunks and the execution actors.
    configure_pure_client(nats_url, prefix)
    common = {"nats_url": nats_url, "prefix": prefix, "cwd": str(ROOT)}
    # Store 1 is the start; store 2 is the transition of first's handed-off outcome: the
    # worker dies before invoking second, and before acking first's invocation.
    victim = WorkerProcess(
        "tests.flows.pure_pair:flow",
        env={**child_env(), "TRIGGERBUS_ACK_WAIT": "2", "TRIGGERBUS_FAULT_KILL_AFTER_STORES": "2"},
        **common,
    )
    survivor = WorkerProcess(
        "tests.flows.pure_pair:flow", env={**child_env(), "TRIGGERBUS_ACK_WAIT": "2"}, **common
    )
    try:
        async with asyncio.timeout(60):
            async with victim:
                execution = flow.create_execution(auto_close_timeout=0.0)
                run = asyncio.create_task(execution.async_start(4))
                await victim.wait_for("fault_injected_kill")
                assert await victim.terminate() == -9
            async with survivor:
                snapshot = await run
    finally:
        await close_runtime()
        configure(None)
    assert snapshot == {"$final_result": 50}
