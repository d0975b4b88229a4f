"""structlog, configured once by an entry point: JSON off a terminal, readable on one.

Library modules only call ``structlog.get_logger()``. The CLI and worker call
``configure_logging``; a plain script that uses the embedded runtime gets
``configure_default_logging`` on first use, which leaves a configuration the application made
alone and is quiet below warnings, so an Agently script prints what it printed before.

The hosts bind ``flow``, ``execution_id``, ``chunk``, ``step`` and ``attempt`` at the message
boundary; :func:`add_trace_ids` adds the current span's ``trace_id`` and ``span_id``, so a log
line leads to its trace. :func:`log_event` is the Event Center's logging subscriber: chunk
attempts and execution lifecycle events become log lines.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal, TextIO

import structlog
from opentelemetry import trace

from triggerbus.observability import events
from triggerbus.observability.events import Event
from triggerbus.observability.tracing import HANDLED_PARENT

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def configure_logging(
    *, level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for a triggerbus process.

    Args:
        level: Lowest level written: debug, info, warning, error.
        fmt: ``json`` (one object per line), ``console`` (aligned, colourless when piped) or
            ``auto``: console on a terminal, JSON otherwise.
        stream: Where lines go; standard error by default.
    """
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def configure_default_logging(level: str = "warning") -> None:
    """Quiet defaults for library use, unless the application configured structlog itself."""
    if structlog.is_configured():
        return
    configure_logging(level=level)


def add_trace_ids(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A processor: the current span's ``trace_id`` and ``span_id`` (hex), when there is one,
    else those of the mailbox message an execution host is handling."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", f"{context.trace_id:032x}")
        event_dict.setdefault("span_id", f"{context.span_id:016x}")
        return event_dict
    parent = HANDLED_PARENT.get()
    if parent is not None:
        event_dict.setdefault("trace_id", f"{parent.trace_id:032x}")
        event_dict.setdefault("span_id", f"{parent.span_id:016x}")
    return event_dict


class bound_log_context:
    """Bind ``fields`` to structlog's context-local context for a block, then restore them.

    What ``structlog.contextvars.bound_contextvars`` does, by token: that one reads every
    context variable of the current context to save the old values and runs as a generator;
    this sets each field's variable and resets it to what it was, once per chunk attempt and
    per mailbox message on the hosts' hot path.
    """

    __slots__ = ("_fields", "_tokens")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._tokens: Mapping[str, contextvars.Token[Any]] = {}

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(**self._fields)

    def __exit__(self, *exc: object) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)


log = structlog.get_logger("triggerbus.events")

_COMMON = frozenset({"flow", "execution_id", "at", "trace_id", "span_id", "chunk", "step"})


def _enabled(level: int) -> bool:
    """Whether structlog's configured wrapper writes lines at ``level``: asked per event (the
    configuration can change), because a filtered call through the lazy proxy still costs a
    bind (~5 us), and most events here are debug or info lines that a library's default
    (warning) drops."""
    is_enabled_for = getattr(structlog.get_config()["wrapper_class"], "is_enabled_for", None)
    if is_enabled_for is None:
        return True  # an application's own wrapper: let it decide
    try:
        # structlog's filtering wrappers compare the level with a constant, never ``self``.
        return bool(is_enabled_for(None, level))
    except Exception:  # a wrapper that does use ``self``: let it decide per call
        return True


def _started(event: Any) -> None:
    log.debug("chunk_attempt_started")


def _succeeded(event: Any) -> None:
    log.info("chunk_attempt_succeeded", duration_ms=round(event.duration * 1000, 3))


def _failed(event: Any) -> None:
    log.warning(
        "chunk_attempt_failed",
        duration_ms=round(event.duration * 1000, 3),
        error_type=event.error_type,
        error=event.message,
    )


def _retried(event: Any) -> None:
    log.info("chunk_attempt_retried", attempt=event.attempt)


def _dead_lettered(event: Any) -> None:
    log.error("invocation_dead_lettered", chunk=event.chunk, reason=event.reason,
              subject=event.subject)  # fmt: skip


def _observed(event: Event) -> None:
    fields = {
        # structlog reserves "event" for the line's name
        ("event_name" if name == "event" else name): getattr(event, name)
        for name in event.__struct_fields__
        if name not in _COMMON
    }
    if hasattr(event, "chunk"):
        fields["chunk"] = event.chunk  # type: ignore[attr-defined]
    if hasattr(event, "step"):
        fields["step"] = event.step  # type: ignore[attr-defined]
    log.debug(event.__struct_config__.tag or "observed", **fields)


_LINES: dict[type, tuple[int, Callable[[Any], None]]] = {
    events.ChunkStarted: (logging.DEBUG, _started),
    events.ChunkSucceeded: (logging.INFO, _succeeded),
    events.ChunkFailed: (logging.WARNING, _failed),
    events.ChunkRetried: (logging.INFO, _retried),
    events.ChunkDeadLettered: (logging.ERROR, _dead_lettered),
}


def log_event(event: Event) -> None:
    """The Event Center's logging subscriber (the host already bound flow, execution, chunk).

    Chunk attempts get lines of their own levels; every other event is a debug line.
    """
    level, write = _LINES.get(event.__class__, (logging.DEBUG, _observed))
    if level >= logging.WARNING or _enabled(level):
        write(event)
