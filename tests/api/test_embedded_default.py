"""With no NATS configured, a script starts its own nats-server and runs as it did on Agently:
the README's demo command and a plain sync script, run as real processes; a script killed
leaves neither the server nor its store behind."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shutil
import signal
import sys
import textwrap
from typing import Any

import pytest

from tests._helpers import (
    ROOT,
    assert_server_gone,
    parent_pid,
    process_exited,
    run_python,
    without_triggerbus_settings,
)


def test_demo_prints_the_stream_then_the_close_snapshot_on_an_embedded_server() -> None:
    done = run_python("examples/playbook.py", env=without_triggerbus_settings())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    stream = [
        ast.literal_eval(line.removeprefix("STREAM: "))
        for line in lines
        if line.startswith("STREAM: ")
    ]
    results = [line for line in lines if line.startswith("RESULT: ")]
    assert stream[0]["stage"] == "normalized"
    assert sorted(item["stage"] for item in stream) == [
        "compiled",
        "facts_ready",
        "normalized",
        "risks_ready",
    ]
    assert lines[-1] == results[0], "the close snapshot is printed after the stream"
    snapshot = ast.literal_eval(results[0].removeprefix("RESULT: "))
    assert snapshot["topic"] == "Agently TriggerFlow"
    assert snapshot["$final_result"]["facts"] == "facts(Agently TriggerFlow)"
    assert "embedded" not in done.stdout, "library logs stay off stdout"


def test_a_sync_script_exits_without_warnings_after_using_the_embedded_server() -> None:
    """The sync API's background loop used to be left connected at exit: the embedded server
    stopped under it, and every such script ended with the client's ``nats_async_error`` and
    ``nats_disconnected`` warnings. It is closed first now, as an async script closes it."""
    script = textwrap.dedent(
        """
        from triggerbus import TriggerFlow

        flow = TriggerFlow(name="quiet_exit")

        @flow.chunk("inc")
        async def inc(data):
            return data.value + 1

        flow.to(inc).end()
        print(flow.start(1))
        """
    )
    done = run_python("-c", script, env=without_triggerbus_settings())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'$final_result': 2}"
    noisy = [line for line in done.stderr.splitlines() if '"level": "' in line
             and '"level": "info"' not in line and '"level": "debug"' not in line]  # fmt: skip
    assert not noisy, "\n".join(noisy)


_REPRO = textwrap.dedent(
    """
    import threading
    from triggerbus import TriggerFlow

    flow = TriggerFlow(name="hang")
    flow.to(("a", lambda d: d.value)).end()
    print(flow.start(1), flush=True)
    threading.Event().wait()  # until the test kills it
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="waits on pidfds, reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
async def test_a_sync_script_killed_takes_its_embedded_server_and_store_along(
    signum: signal.Signals,
) -> None:
    """The sync API starts the server from its loop thread; a script stopped by ``timeout``
    or a container stop (SIGTERM), or by SIGKILL, runs no exit hook, and its server used to
    run on, reparented, with its store directory left in /tmp."""
    env = without_triggerbus_settings() | {"TRIGGERBUS_LOG_LEVEL": "info"}
    script = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _REPRO, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    started: dict[str, Any] = {}
    try:
        assert script.stdout is not None and script.stderr is not None
        async with asyncio.timeout(60):
            started = await _server_started(script.stderr)
            assert await script.stdout.readline() == b"{'$final_result': 1}\n"
        server_parent = parent_pid(started["pid"])  # its watchdog (the script, formerly)

        script.send_signal(signum)
        async with asyncio.timeout(10):
            await script.wait()

        assert_server_gone(started["pid"], server_parent, started["store_dir"])
    finally:
        _end_leftovers(script, started)


async def _server_started(stderr: asyncio.StreamReader) -> dict[str, Any]:
    """The fields of the ``embedded_nats_server_started`` log line (JSON off a terminal)."""
    while line := await stderr.readline():
        if b'"embedded_nats_server_started"' in line:
            event: dict[str, Any] = json.loads(line)
            return event
    raise AssertionError("the script exited without starting an embedded server")




def _end_leftovers(script: asyncio.subprocess.Process, started: dict[str, Any]) -> None:
    """Whatever a failed run left behind: the script, the server, its store."""
    if script.returncode is None:
        script.kill()
    if "pid" in started and not process_exited(started["pid"], 0):
        os.kill(started["pid"], signal.SIGKILL)
    if "store_dir" in started:
        shutil.rmtree(started["store_dir"], ignore_errors=True)



