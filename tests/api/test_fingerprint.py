"""Processes agree on a flow through its graph: same module, same fingerprint; a process with a
different definition refuses the execution's work, and the execution is not corrupted."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from tests._helpers import ROOT, child_env, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess


def _fingerprint_in_subprocess(target: str) -> str:
    code = (
        "from triggerbus.cli import load_flow; import sys; "
        f"sys.stdout.write(load_flow({target!r}).graph().fingerprint)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**child_env(), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_two_processes_importing_one_module_build_the_same_fingerprint() -> None:
    first = _fingerprint_in_subprocess("tests.flows.fingerprint_v1:flow")
    second = _fingerprint_in_subprocess("tests.flows.fingerprint_v1:flow")
    other = _fingerprint_in_subprocess("tests.flows.fingerprint_v2:flow")
    here = load_module("tests/flows/fingerprint_v1.py", "fp_v1_here").flow.graph().fingerprint
    assert first == second == here
    assert other != first


async def test_mismatched_worker_refuses_and_execution_completes_correctly(
    nats_url: str, prefix: str
) -> None:
    """A worker built from a different definition logs a clear refusal and never runs the
    chunk; once a matching worker is up, the execution completes with the right result."""
    flow = load_module("tests/flows/fingerprint_v1.py", "fp_v1_mismatch").flow
    configure(Settings(nats_url=nats_url, prefix=prefix, local_chunks=frozenset()))
    common = {"nats_url": nats_url, "prefix": prefix, "cwd": str(ROOT), "env": child_env()}
    wrong = WorkerProcess(
        "tests.flows.fingerprint_v2:flow", chunks=["work"], no_executions=True, **common
    )
    right = WorkerProcess(
        "tests.flows.fingerprint_v1:flow", chunks=["work"], no_executions=True, **common
    )
    try:
        async with asyncio.timeout(60):
            async with wrong:
                execution = flow.create_execution(auto_close_timeout=0.0)
                started = asyncio.create_task(execution.async_start("x"))
                refusal = await wrong.wait_for("fingerprint_mismatch")
                assert refusal["expected"] == flow.graph().fingerprint
                assert refusal["actual"] != flow.graph().fingerprint
                assert "hint" in refusal
                async with right:
                    snapshot = await started
                    await right.wait_for("chunk_attempt_succeeded", chunk="work")
                assert wrong.events("chunk_attempt_succeeded") == []
    finally:
        await close_runtime()
        configure(None)
    assert snapshot == {"$final_result": "v1:x"}
    assert execution.get_status() == "completed"
