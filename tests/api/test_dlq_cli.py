"""`triggerbus dlq` lists, shows and replays dead letters against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import nats

from tests._helpers import ROOT, load_module, run_python
from triggerbus.bus.subjects import Subjects
from triggerbus.contracts.codec import encode
from triggerbus.contracts.messages import DeadLetter, StartExecution


def _cli(nats_url: str, prefix: str, *args: str) -> str:
    env = {**os.environ, "TRIGGERBUS_NATS_URL": nats_url, "TRIGGERBUS_PREFIX": prefix}
    done = subprocess.run(
        [sys.executable, "-m", "triggerbus", "dlq", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_list_show_and_replay_a_dead_start(runtime, nats_url: str, prefix: str) -> None:
    flow = load_module("tests/flows/echo.py", "echo_dlq").flow
    subjects = Subjects(prefix)
    execution = flow.create_execution(auto_close_timeout=0.0)
    start = StartExecution(
        id=f"{execution.id}:start", execution_id=execution.id, value="again", auto_close_timeout=0
    )
    letter = DeadLetter(
        subject=subjects.mailbox(flow.name, execution.id),
        reason="retries exhausted (test)",
        data=encode(start).decode(),
        execution_id=execution.id,
    )
    async with asyncio.timeout(60):
        await flow.async_start("warm-up")  # provisions streams and hosts the flow
        nc = await nats.connect(nats_url)
        try:
            ack = await nc.jetstream().publish(
                subjects.dead_letter(flow.name, "__mailbox__"), encode(letter)
            )
        finally:
            await nc.drain()
        listed = await asyncio.to_thread(_cli, nats_url, prefix, "list")
        shown = json.loads(await asyncio.to_thread(_cli, nats_url, prefix, "show", str(ack.seq)))
        replayed = await asyncio.to_thread(
            _cli, nats_url, prefix, "replay", str(ack.seq), "--delete"
        )
        snapshot = await execution.async_start()
        after = await asyncio.to_thread(_cli, nats_url, prefix, "list")
    assert f"{ack.seq}\t" in listed and "retries exhausted (test)" in listed
    assert shown["reason"] == "retries exhausted (test)"
    assert shown["execution_id"] == execution.id
    assert "replayed" in replayed
    assert snapshot == {"$final_result": "again"}
    assert f"{ack.seq}\t" not in after


def test_list_says_on_stderr_when_there_are_no_dead_letters(nats_url: str, prefix: str) -> None:
    """A person is told there are none; stdout stays empty for a script counting its lines."""
    env = {**os.environ, "TRIGGERBUS_NATS_URL": nats_url, "TRIGGERBUS_PREFIX": prefix}
    every = run_python("-m", "triggerbus", "dlq", "list", env=env, timeout=60)
    one = run_python("-m", "triggerbus", "dlq", "list", "--flow", "orders", env=env, timeout=60)
    assert (every.returncode, every.stdout) == (0, ""), every.stderr
    assert f"no dead letters under prefix {prefix!r}" in every.stderr
    assert (one.returncode, one.stdout) == (0, ""), one.stderr
    assert f"no dead letters of flow 'orders' under prefix {prefix!r}" in one.stderr
