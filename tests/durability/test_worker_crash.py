"""A chunk worker killed with SIGKILL in the middle of chunks loses nothing: its invocations are
redelivered to another replica, every execution completes, and each state transition is applied
exactly once (a redelivered attempt sends the same message ids, which the actor applies once)."""

from __future__ import annotations

import asyncio

from tests._helpers import ROOT, child_env, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess

EXECUTIONS = 200
ACK_WAIT = "2"


async def test_sigkill_mid_chunk_redelivers_and_applies_each_transition_once(
    nats_url: str, prefix: str
) -> None:
    flow = load_module("tests/flows/crashy.py", "crashy_kill").flow
    configure(Settings(nats_url=nats_url, prefix=prefix, local_chunks=frozenset(), ack_wait=2.0))
    common = {
        "nats_url": nats_url,
        "prefix": prefix,
        "no_executions": True,
        "concurrency": 100,
        "cwd": str(ROOT),
        "env": {**child_env(), "TRIGGERBUS_ACK_WAIT": ACK_WAIT, "TRIGGERBUS_LOG_LEVEL": "debug"},
    }
    victim = WorkerProcess("tests.flows.crashy:flow", **common)
    survivor = WorkerProcess("tests.flows.crashy:flow", **common)
    try:
        async with asyncio.timeout(120), victim, survivor:
            runs = [
                asyncio.create_task(flow.create_execution(auto_close_timeout=0.0).async_start(i))
                for i in range(EXECUTIONS)
            ]
            await victim.wait_for("chunk_attempt_started", chunk="second")
            victim.kill()
            snapshots = await asyncio.gather(*runs)
            redelivered = [
                r for r in survivor.events("chunk_attempt_started") if r.get("attempt", 1) > 1
            ]
    finally:
        await close_runtime()
        configure(None)
    assert [s["$final_result"] for s in snapshots] == [i * 10 for i in range(EXECUTIONS)]
    assert all(s["trail"] == ["first", "second"] for s in snapshots), [
        s["trail"] for s in snapshots if s["trail"] != ["first", "second"]
    ][:5]
    assert redelivered, "the survivor should have taken over invocations the victim held"
