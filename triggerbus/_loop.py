"""Which event loop triggerbus's own loops run on.

A runtime on a bus spends a quarter of its CPU in the event loop's machinery (docs/performance.md),
so the worker CLI and the background loop behind the sync API run on uvloop when it is installed
(``pip install 'triggerbus[fast]'``), unless ``TRIGGERBUS_EVENT_LOOP=asyncio`` asks otherwise. An
application's own loop stays its own choice.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from triggerbus.errors import ConfigurationError

EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of event loops: uvloop's if chosen (or, for ``auto``, if it imports)."""
    if choice not in EVENT_LOOPS:
        raise ConfigurationError(
            f"TRIGGERBUS_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, not {choice!r}"
        )
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                "TRIGGERBUS_EVENT_LOOP=uvloop but uvloop is not installed; "
                "pip install 'triggerbus[fast]'"
            ) from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
