"""Stop every process and the nats-server in the middle of a run, start them again on the same
store directory: the executions that were running finish, with each transition applied once."""

from __future__ import annotations

import asyncio
from typing import Any

from tests._helpers import ROOT, child_env, configure_pure_client, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.bus.embedded import EmbeddedServer
from triggerbus.testing import WorkerProcess, unique_prefix

EXECUTIONS = 20


def worker_options(url: str, prefix: str, **env: str) -> dict[str, Any]:
    return {
        "nats_url": url,
        "prefix": prefix,
        "cwd": str(ROOT),
        "env": {**child_env(), "TRIGGERBUS_ACK_WAIT": "2", **env},
    }


async def test_running_executions_finish_after_everything_restarts(tmp_path) -> None:
    flow = load_module("tests/flows/crashy.py", "crashy_restart").flow
    prefix = unique_prefix()
    store = str(tmp_path / "store")
    first = EmbeddedServer(store_dir=store)
    url = first.start()
    configure_pure_client(url, prefix)
    options = worker_options(url, prefix, TRIGGERBUS_LOG_LEVEL="debug")
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


WAITING = 10


async def test_waiting_executions_resume_after_everything_restarts(tmp_path) -> None:
    """Executions paused on an interrupt survive the loss of every process and the server:
    nothing of them lives in memory, and ``continue_with`` after the restart finishes them."""
    from triggerbus._runtime import get_runtime
    from triggerbus.contracts.codec import decode
    from triggerbus.contracts.messages import StreamItem, stream_decoder

    flow = load_module("tests/flows/approval.py", "approval_restart").flow
    prefix = unique_prefix()
    store = str(tmp_path / "store")
    first = EmbeddedServer(store_dir=store)
    url = first.start()
    configure_pure_client(url, prefix)
    options = worker_options(url, prefix)

    async def wait_paused(execution_id: str) -> None:
        runtime = await get_runtime()
        reader = runtime.bus.read_stream(runtime.subjects.stream(flow.name, execution_id))
        try:
            async for _, data in reader:
                item = decode(stream_decoder, data)
                if isinstance(item, StreamItem) and isinstance(item.value, dict) and (
                    item.value.get("action") == "pause"
                ):
                    return
        finally:
            await reader.aclose()

    second: EmbeddedServer | None = None
    try:
        async with asyncio.timeout(120):
            executions = [
                flow.create_execution(auto_close_timeout=0.0) for _ in range(WAITING)
            ]
            async with WorkerProcess("tests.flows.approval:flow", **options) as before:
                runs = [
                    asyncio.create_task(e.async_start(f"doc-{i}"))
                    for i, e in enumerate(executions)
                ]
                await asyncio.gather(*(wait_paused(e.id) for e in executions))
                before.kill()
                await before.terminate()
            first.stop()
            assert not any(run.done() for run in runs), "every execution was waiting"
            second = EmbeddedServer(store_dir=store, port=first.port)
            second.start()
            async with WorkerProcess("tests.flows.approval:flow", **options):
                for i, execution in enumerate(executions):
                    # A fresh handle, as another process would make it.
                    handle = flow.create_execution(execution_id=execution.id)
                    await handle.async_continue_with("approve", f"yes-{i}")
                snapshots = await asyncio.gather(*runs)
    finally:
        await close_runtime()
        configure(None)
        first.stop()
        if second is not None:
            second.stop()
    assert [s["$final_result"]["approved"] for s in snapshots] == [
        f"yes-{i}" for i in range(WAITING)
    ]
    assert all(s["published"] == [f"yes-{i}"] for i, s in enumerate(snapshots))
