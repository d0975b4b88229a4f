"""structlog, configured once by an entry point: JSON off a terminal, readable on one.

Library modules only call ``structlog.get_logger()``. The CLI and worker call
``configure_logging``; a plain script that uses the embedded runtime gets
``configure_default_logging`` on first use, which leaves a configuration the application made
alone and is quiet below warnings, so an Agently script prints what it printed before.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

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
