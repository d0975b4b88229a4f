"""On a 3-node NATS cluster with every stream and the bucket replicated three times, SIGKILLing
the server that leads the mailbox stream while executions are in flight loses and duplicates
nothing: publishes, reads and writes ride out the leader election, clients reconnect to the
survivors, and every execution completes with each transition applied once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests._helpers import ROOT, child_env, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.bus.subjects import Subjects
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess, nats_cluster, unique_prefix

EXECUTIONS = 100
ACK_WAIT = 2.0


async def test_killing_the_mailbox_leader_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    flow = load_module("tests/flows/crashy.py", "crashy_cluster").flow
    prefix = unique_prefix()
    mailbox_stream = Subjects(prefix).exec_stream
    async with asyncio.timeout(90), nats_cluster(3, str(tmp_path)) as cluster:
        # This process and a worker process both host the execution actors and both chunks,
        # each connected with all three URLs.
        configure(Settings(nats_url=cluster.url, prefix=prefix, replicas=3, ack_wait=ACK_WAIT))
        worker = WorkerProcess(
            "tests.flows.crashy:flow",
            nats_url=cluster.url,
            prefix=prefix,
            cwd=str(ROOT),
            env={
                **child_env(),
                "TRIGGERBUS_REPLICAS": "3",
                "TRIGGERBUS_ACK_WAIT": str(ACK_WAIT),
            },
        )
        try:
            async with worker:
                runs = [
                    asyncio.create_task(
                        flow.create_execution(auto_close_timeout=0.0).async_start(i)
                    )
                    for i in range(EXECUTIONS)
                ]
                await worker.wait_for("chunk_attempt_succeeded", chunk="first")
                victim = await cluster.leader_of(mailbox_stream)
                assert victim is not None
                cluster.kill(victim)
                snapshots = await asyncio.gather(*runs)
                successor = await cluster.leader_of(mailbox_stream)
        finally:
            await close_runtime()
            configure(None)
    assert successor not in (None, victim)
    assert [s["$final_result"] for s in snapshots] == [i * 10 for i in range(EXECUTIONS)]
    wrong = [s for s in snapshots if s.get("trail") != ["first", "second"]]
    assert not wrong, wrong[:5]
