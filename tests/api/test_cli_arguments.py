"""The CLI refuses numbers that would misconfigure a process, before it connects anywhere.

``--concurrency 0`` used to fall back to the default 16 (``0 or default``) and a negative count
was taken as it was: a worker that reported ready and never ran a chunk.
"""

from __future__ import annotations

import os

import pytest

from tests._helpers import run_python

FLOW = "tests.flows.echo:flow"
REFUSED = {
    "concurrency 0": (["worker", FLOW, "--concurrency", "0"], "--concurrency: must be at least 1"),
    "concurrency -3": (["worker", FLOW, "--concurrency", "-3"], "must be at least 1, got -3"),
    "concurrency two": (["worker", FLOW, "--concurrency", "two"], "must be a whole number"),
    "grace -1": (["worker", FLOW, "--shutdown-grace", "-1"], "must be 0 or more seconds"),
    "timeout nan": (["resume", FLOW, "e", "i", "--timeout", "nan"], "0 or more seconds"),
    "limit 0": (["dlq", "list", "--limit", "0"], "--limit: must be at least 1"),
}


@pytest.mark.parametrize(("args", "said"), REFUSED.values(), ids=REFUSED.keys())
def test_a_number_that_would_misconfigure_the_process_is_refused(
    args: list[str], said: str
) -> None:
    # An unreachable server: a command that got past its arguments would fail differently.
    env = {**os.environ, "TRIGGERBUS_NATS_URL": "nats://127.0.0.1:9"}
    done = run_python("-m", "triggerbus", *args, env=env)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
