"""The two ways every language conformance test runs, with the same expected values.

``in_process``: this process hosts the execution actors and every chunk, as a script would.
``workers``: this process hosts no chunk at all (``local_chunks=frozenset()``) and keeps the
execution actors; one real ``triggerbus worker`` process, started once per test module, hosts
every chunk of the module's flows. A test module names its flows module in
``FLOWS_MODULE``; that module lists its flow variables in ``FLOWS``.

Each module gets one nats-server, and each mode its own subject prefix.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from triggerbus._runtime import close_runtime, configure
from triggerbus.config import Settings
from triggerbus.testing import NatsServerHandle, WorkerProcess, unique_prefix
from triggerbus.testing import nats_server as start_nats_server

ROOT = Path(__file__).resolve().parents[2]
MODES = ["in_process", "workers"]


@dataclass(frozen=True)
class Hosting:
    """Where the chunks of this run live."""

    mode: str
    settings: Settings
    worker: WorkerProcess | None


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerHandle]:
    with start_nats_server(store_dir=str(tmp_path_factory.mktemp("nats"))) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=MODES)
async def hosting(
    request: pytest.FixtureRequest, module_nats: NatsServerHandle
) -> AsyncIterator[Hosting]:
    """Configure this module's runtime for one mode; in ``workers`` mode, run the worker."""
    mode = request.param
    prefix = unique_prefix()
    worker: WorkerProcess | None = None
    if mode == "workers":
        module_name = request.module.FLOWS_MODULE
        flows = importlib.import_module(module_name)
        worker = WorkerProcess(
            [f"{module_name}:{name}" for name in flows.FLOWS],
            nats_url=module_nats.url,
            prefix=prefix,
            no_executions=True,
            cwd=str(ROOT),
            env={"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
        )
        async with asyncio.timeout(60):
            await worker.start()
        settings = Settings(nats_url=module_nats.url, prefix=prefix, local_chunks=frozenset())
    else:
        settings = Settings(nats_url=module_nats.url, prefix=prefix)
    configure(settings)
    try:
        yield Hosting(mode, settings, worker)
    finally:
        await close_runtime()
        configure(None)
        if worker is not None:
            async with asyncio.timeout(40):
                await worker.terminate()


async def succeeded_in_worker(hosting: Hosting, chunk: str) -> None:
    """In ``workers`` mode, prove ``chunk`` ran in the worker process (by its own log)."""
    if hosting.worker is not None:
        async with asyncio.timeout(10):
            await hosting.worker.wait_for("chunk_attempt_succeeded", chunk=chunk)
