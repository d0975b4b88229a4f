"""The seed playbook runs with only its import changed: in one process, and with two of its
chunks hosted by a separate worker process, giving the same stream and result both ways."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from triggerbus._runtime import close_runtime, configure
from triggerbus.config import Settings
from triggerbus.testing import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "Agently TriggerFlow"
EXPECTED_REPORT = {
    "topic": TOPIC,
    "facts": f"facts({TOPIC})",
    "risks": f"risks({TOPIC})",
}
EXPECTED_STREAM = [
    {"stage": "normalized", "topic": TOPIC},
    {"stage": "facts_ready", "topic": TOPIC},
    {"stage": "risks_ready", "topic": TOPIC},
    {"stage": "compiled", "report": EXPECTED_REPORT},
]


@functools.cache
def _load_playbook() -> ModuleType:
    """Loaded once per process, as a deployment would: each load of a module that creates an
    unnamed flow at the same line counts as another flow (see TriggerFlow's name)."""
    spec = importlib.util.spec_from_file_location(
        "playbook_under_test", ROOT / "examples" / "playbook.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _run_seed_consumer(flow: Any) -> tuple[list[Any], dict[str, Any]]:
    """The seed's consumer side, verbatim in spirit: watch the stream while awaiting start."""
    execution = flow.create_execution(concurrency=2, auto_close_timeout=0.0)
    items: list[Any] = []

    async def watch_stream() -> None:
        async for item in execution.get_async_runtime_stream(TOPIC, timeout=5):
            items.append(item)

    stream_task = asyncio.create_task(watch_stream())
    result = await execution.async_start(TOPIC)
    await stream_task
    return items, result


def _key(item: dict[str, Any]) -> str:
    return repr(sorted(item.items()))


class TestPlaybookInOneProcess:
    async def test_stream_and_result_match_the_seed(self, runtime) -> None:
        """All four stream items arrive (the stream replays, so none is lost) and the close
        snapshot holds the state and the report."""
        playbook = _load_playbook()
        async with asyncio.timeout(30):
            items, result = await _run_seed_consumer(playbook.flow)
        assert items[0] == {"stage": "normalized", "topic": TOPIC}
        assert items[-1]["stage"] == "compiled"
        assert sorted(map(_key, items)) == sorted(map(_key, EXPECTED_STREAM))
        assert result == {"topic": TOPIC, "$final_result": EXPECTED_REPORT}


class TestPlaybookAcrossProcesses:
    async def test_worker_hosts_fetch_chunks_and_results_are_the_same(
        self, nats_url: str, prefix: str
    ) -> None:
        """fetch_facts and fetch_risks run in a separate worker process (its log proves it, and
        this process does not host them), and the stream and result equal the one-process run."""
        playbook = _load_playbook()
        local = Settings(
            nats_url=nats_url,
            prefix=prefix,
            local_chunks=frozenset({"normalize", "compile_report"}),
        )
        worker = WorkerProcess(
            "examples.playbook:flow",
            nats_url=nats_url,
            prefix=prefix,
            chunks=["fetch_facts", "fetch_risks"],
            no_executions=True,
            cwd=str(ROOT),
            env={"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
        )
        configure(local)
        try:
            async with asyncio.timeout(60):
                async with worker:
                    ready = await worker.wait_for("worker_ready")
                    assert ready["flow"] == playbook.flow.name
                    assert ready["fingerprint"] == playbook.flow.graph().fingerprint
                    items, result = await _run_seed_consumer(playbook.flow)
                    facts = await worker.wait_for("chunk_attempt_succeeded", chunk="fetch_facts")
                    risks = await worker.wait_for("chunk_attempt_succeeded", chunk="fetch_risks")
                    assert await worker.terminate() == 0
        finally:
            await close_runtime()
            configure(None)
        assert {r["chunk"] for r in worker.events("chunk_attempt_succeeded")} == {
            "fetch_facts",
            "fetch_risks",
        }
        assert sorted(map(_key, items)) == sorted(map(_key, EXPECTED_STREAM))
        assert result == {"topic": TOPIC, "$final_result": EXPECTED_REPORT}
        assert risks["execution_id"] == facts["execution_id"]


@pytest.fixture(autouse=True)
def _no_leaked_configuration():
    yield
    configure(None)
