"""With no NATS configured, a script starts its own nats-server and runs as it did on Agently:
the README's demo command and a plain sync script, run as real processes."""

from __future__ import annotations

import ast
import textwrap

from tests._helpers import run_python, without_triggerbus_settings


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
