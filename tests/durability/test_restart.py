"""Stop every process and the nats-server in the middle of a run, start them again on the same
store directory: the executions that were running finish, with each transition applied once."""

from __future__ import annotations

import asyncio

from tests._helpers import ROOT, child_env, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.bus.embedded import EmbeddedServer
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess, unique_prefix

EXECUTIONS = 20


async def test_running_executions_finish_after_everything_restarts(tmp_path) -> None:
    flow = load_module("tests/flows/crashy.py", "crashy_restart").flow
    prefix = unique_prefix()
    store = str(tmp_path / "store")
    first = EmbeddedServer(store_dir=store)
    url = first.start()
    # This process only starts executions and waits for them; workers do all the work.
    configure(
        Settings(
            nats_url=url,
            prefix=prefix,
            local_chunks=frozenset(),
            host_executions=False,
            ack_wait=2.0,
        )
    )
    options = {
        "nats_url": url,
        "prefix": prefix,
        "cwd": str(ROOT),
        "env": {**child_env(), "TRIGGERBUS_ACK_WAIT": "2", "TRIGGERBUS_LOG_LEVEL": "debug"},
    }
    second: EmbeddedServer | None = None
    try:
        async with asyncio.timeout(120):
            async with WorkerProcess("tests.flows.crashy:flow", **options) as before:
                runs = [
                    asyncio.create_task(
                        flow.create_execution(auto_close_timeout=0.0).async_start(i)
                    )
                    for i in range(EXECUTIONS)
                ]
                await before.wait_for("chunk_attempt_started", chunk="second")
                before.kill()
                await before.terminate()
            first.stop()
            assert not any(run.done() for run in runs), "everything was still in flight"
            second = EmbeddedServer(store_dir=store, port=first.port)
            second.start()
            async with WorkerProcess("tests.flows.crashy:flow", **options):
                snapshots = await asyncio.gather(*runs)
    finally:
        await close_runtime()
        configure(None)
        first.stop()
        if second is not None:
            second.stop()
    assert [s["$final_result"] for s in snapshots] == [i * 10 for i in range(EXECUTIONS)]
    assert all(s["trail"] == ["first", "second"] for s in snapshots)
