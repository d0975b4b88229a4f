"""Closing a runtime leaves nats-py's read loop alone: no "encountered error" from a PONG that
arrives for a flush its host's cancellation abandoned (nats.py #914 stops the loop on it)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from triggerbus import TriggerFlow
from triggerbus._runtime import close_runtime
from triggerbus.config import Settings


async def test_closing_a_runtime_with_running_hosts_logs_no_client_error(
    runtime: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    flow = TriggerFlow(name="clean_shutdown")

    @flow.chunk("double")
    async def double(data):
        return data.value * 2

    flow.to(double).end()
    with caplog.at_level(logging.ERROR, logger="nats.aio.client"):
        async with asyncio.timeout(20):
            assert await flow.async_start(4) == {"$final_result": 8}
            await close_runtime()
    errors = [r.getMessage() for r in caplog.records if r.name == "nats.aio.client"]
    assert errors == []
