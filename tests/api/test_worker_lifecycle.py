"""A worker drains on SIGTERM: the invocation it holds finishes before it exits 0."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tests._helpers import ROOT, child_env, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess


def slow_chunks_worker(nats_url: str, prefix: str, **env: str) -> WorkerProcess:
    """A worker hosting ``tests.flows.slow``'s chunks, no execution actors."""
    return WorkerProcess("tests.flows.slow:flow", nats_url=nats_url, prefix=prefix,
                         no_executions=True, cwd=str(ROOT), env={**child_env(), **env})  # fmt: skip


async def test_sigterm_mid_chunk_finishes_the_chunk_then_exits_zero(
    nats_url: str, prefix: str
) -> None:
    flow = load_module("tests/flows/slow.py", "slow_lifecycle").flow
    configure(Settings(nats_url=nats_url, prefix=prefix, local_chunks=frozenset()))
    worker = slow_chunks_worker(nats_url, prefix, TRIGGERBUS_LOG_LEVEL="debug")
    try:
        async with asyncio.timeout(60), worker:
            started = asyncio.create_task(flow.async_start("job"))
            await worker.wait_for("chunk_attempt_started", chunk="slow")
            code = await worker.terminate()
            snapshot = await started
    finally:
        await close_runtime()
        configure(None)
    events = [r["event"] for r in worker.records]
    assert code == 0
    assert snapshot == {"$final_result": "done:job"}
    assert events.index("worker_draining") < events.index("chunk_attempt_succeeded")
    assert events.index("chunk_attempt_succeeded") < events.index("worker_stopped")


async def test_signalling_a_worker_never_polls_it_behind_asyncios_back(
    nats_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kill()`` and ``terminate()`` signal the pid. ``Process.send_signal`` would go through
    ``Popen.send_signal``, which polls first: a worker that had just died (an injected fault)
    was reaped by that poll before asyncio's child watcher got to it, and its exit code read
    255 instead of -9 (the crash tests' rare ``assert 255 == -9``)."""
    polled: list[int] = []
    poll = subprocess.Popen.poll

    def recorded(process: subprocess.Popen[bytes]) -> int | None:
        polled.append(process.pid)
        return poll(process)

    monkeypatch.setattr(subprocess.Popen, "poll", recorded)
    worker = slow_chunks_worker(nats_url, prefix)
    async with asyncio.timeout(60):
        await worker.start()
        worker.kill()
        assert await worker.terminate() == -9
    assert worker.pid not in polled
