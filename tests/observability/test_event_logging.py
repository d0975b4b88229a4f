"""The Event Center's logging subscriber writes debug-level events only when debug is on."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from triggerbus.observability import events
from triggerbus.observability.logging import configure_logging, log_event


@pytest.fixture(autouse=True)
def _restore_structlog():
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize(("level", "written"), [("debug", True), ("info", False)])
def test_debug_events_follow_the_configured_level(level: str, written: bool) -> None:
    out = io.StringIO()
    configure_logging(level=level, fmt="json", stream=out)
    log_event(events.ExecutionStarted(flow="f", execution_id="e1", at=1.0))
    started = events.ChunkStarted(flow="f", execution_id="e1", at=1.0, chunk="c", step=1, attempt=1)
    log_event(started)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    names = [line["event"] for line in lines]
    assert names == (["execution_started", "chunk_attempt_started"] if written else [])


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("info", ["chunk_attempt_succeeded", "chunk_attempt_retried", "chunk_attempt_failed",
                  "invocation_dead_lettered"]),
        ("warning", ["chunk_attempt_failed", "invocation_dead_lettered"]),
        ("error", ["invocation_dead_lettered"]),
    ],
)  # fmt: skip
def test_each_attempt_event_is_a_line_at_its_own_level(level: str, expected: list[str]) -> None:
    out = io.StringIO()
    configure_logging(level=level, fmt="json", stream=out)
    common = {"flow": "f", "execution_id": "e1", "at": 1.0, "chunk": "c", "step": 1}
    log_event(events.ChunkSucceeded(**common, attempt=1, duration=0.5))
    log_event(events.ChunkRetried(**common, attempt=2))
    log_event(events.ChunkFailed(**common, attempt=2, duration=0.1, error_type="E", message="m"))
    log_event(events.ChunkDeadLettered(flow="f", execution_id="e1", at=1.0, chunk="c",
                                       reason="spent", subject="s"))  # fmt: skip
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == expected
    if "chunk_attempt_succeeded" in expected:
        assert lines[0]["duration_ms"] == 500.0


def test_a_bound_log_context_binds_for_its_block_and_restores_what_was_there() -> None:
    from structlog.contextvars import bind_contextvars, get_contextvars, unbind_contextvars

    from triggerbus.observability.logging import bound_log_context

    before = get_contextvars()
    bind_contextvars(flow="outer")
    try:
        with bound_log_context(flow="inner", execution_id="e1"):
            assert get_contextvars() == {**before, "flow": "inner", "execution_id": "e1"}
        assert get_contextvars() == {**before, "flow": "outer"}
    finally:
        unbind_contextvars("flow")
    assert get_contextvars() == {k: v for k, v in before.items() if k != "flow"}
