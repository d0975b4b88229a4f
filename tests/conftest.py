"""Fixtures shared by every test: a private NATS server per test and a unique subject prefix.

Each test gets its own server (and its own store directory under ``tmp_path``), so tests run in
parallel under pytest-xdist without seeing each other's streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from triggerbus._runtime import close_runtime, configure
from triggerbus._sync import close_background_runtime, run_sync
from triggerbus.config import Settings
from triggerbus.testing import NatsServerHandle, unique_prefix
from triggerbus.testing import nats_server as start_nats_server


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServerHandle]:
    """A JetStream-enabled nats-server for this test only."""
    with start_nats_server(store_dir=str(tmp_path / "nats")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServerHandle) -> str:
    """The client URL of this test's server."""
    return nats_server.url


@pytest.fixture
def prefix() -> str:
    """A subject prefix no other test uses."""
    return unique_prefix()


@pytest.fixture
async def runtime(nats_url: str, prefix: str) -> AsyncIterator[Settings]:
    """Point the in-process runtime at this test's server and prefix; close it afterwards."""
    settings = Settings(nats_url=nats_url, prefix=prefix)
    configure(settings)
    try:
        yield settings
    finally:
        await close_runtime()
        # A sync read inside the loop opened the background loop's runtime on this server.
        await asyncio.to_thread(close_background_runtime)
        configure(None)


@pytest.fixture
def sync_runtime(nats_url: str, prefix: str) -> Iterator[Settings]:
    """The sync twins run on the process's background loop: point its runtime at this test's
    server and close it afterwards (the async ``runtime`` fixture cannot reach that loop)."""
    settings = Settings(nats_url=nats_url, prefix=prefix)
    configure(settings)
    try:
        yield settings
    finally:
        try:
            run_sync(close_runtime())
        finally:
            configure(None)
