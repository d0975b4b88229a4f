"""The worker and the sync API's thread run on uvloop when it is installed (the ``fast``
extra, part of ``dev``), and on asyncio's loop when ``TRIGGERBUS_EVENT_LOOP=asyncio``."""

from __future__ import annotations

import asyncio

import pytest

from tests._helpers import ROOT, child_env
from triggerbus._loop import loop_factory
from triggerbus.config import Settings
from triggerbus.errors import ConfigurationError
from triggerbus.testing import WorkerProcess


def test_choices_and_a_clear_error_for_anything_else() -> None:
    assert loop_factory("asyncio") is asyncio.new_event_loop
    loop = loop_factory("uvloop")()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    with pytest.raises(ConfigurationError, match="TRIGGERBUS_EVENT_LOOP must be one of"):
        Settings.from_env({"TRIGGERBUS_EVENT_LOOP": "trio"})
    assert Settings.from_env({"TRIGGERBUS_EVENT_LOOP": "AsyncIO"}).event_loop == "asyncio"


@pytest.mark.parametrize(("choice", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_the_worker_says_which_loop_it_runs_on(
    nats_url: str, prefix: str, choice: str, expected: str
) -> None:
    env = {**child_env(), "TRIGGERBUS_EVENT_LOOP": choice}
    worker = WorkerProcess(
        "tests.flows.slow:flow", nats_url=nats_url, prefix=prefix, cwd=str(ROOT), env=env
    )
    async with asyncio.timeout(30):
        ready = await worker.start()
        await worker.terminate()
    assert ready["event_loop"] == expected
