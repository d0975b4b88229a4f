"""Sync twins of the async API run on one background event loop owned by the process.

A sync call cannot borrow the caller's loop (there is none, or it is busy waiting on us), and
the runtime it uses (connection, hosted chunks) must outlive the call, so every sync call goes
to the same long-lived loop thread.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import structlog

from triggerbus._hosting_loops import hosts_actors
from triggerbus.errors import LifecycleError

T = TypeVar("T")
log = structlog.get_logger()

EXIT_CLOSE_SECONDS = 5.0
"""How long the interpreter's exit waits for the sync runtime to close before going on."""

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            from triggerbus._loop import loop_factory
            from triggerbus._runtime import current_settings

            loop = loop_factory(current_settings().event_loop)()
            thread = threading.Thread(
                target=loop.run_forever, name="triggerbus-sync-loop", daemon=True
            )
            thread.start()
            _loop = loop
            # atexit runs the last registered first: registered after the embedded server's
            # own hook (its module is imported above), so the connection closes while the
            # server still runs, instead of losing it and logging the loss at every exit.
            atexit.register(_close_at_exit, loop)
        return _loop


def _close_at_exit(loop: asyncio.AbstractEventLoop) -> None:
    """Close the background loop's runtime (its hosts, then its connection) and stop it."""
    if loop.is_closed() or not loop.is_running():
        return
    from triggerbus._runtime import close_runtime

    closing = asyncio.run_coroutine_threadsafe(close_runtime(), loop)
    try:
        closing.result(timeout=EXIT_CLOSE_SECONDS)
    except Exception as exc:  # exiting anyway: say why the close was cut short
        closing.cancel()
        log.warning("sync_runtime_close_failed", error=repr(exc), waited_s=EXIT_CLOSE_SECONDS)
    loop.call_soon_threadsafe(loop.stop)


def close_background_runtime(timeout: float = EXIT_CLOSE_SECONDS) -> None:
    """Close the background loop's runtime, if it has one, and leave the loop running: the
    next sync call opens a new runtime with the settings configured then (a test suite
    pointing each case at its own server needs that)."""
    loop = _loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    from triggerbus._runtime import close_runtime

    asyncio.run_coroutine_threadsafe(close_runtime(), loop).result(timeout)


def _refuse_inside_loop(what: str) -> None:
    """Refuse a sync call that would hold a running loop hosting actors; let one through
    (it runs on the background loop, holding the caller's) when the loop hosts nothing.

    A loop that runs this process's execution actors or chunks would never answer a call
    that holds it. One that hosts nothing can be held, as TriggerFlow's sync calls hold theirs:
    the call's flow is then hosted on the background loop. A warning says so, once per
    process: a server's loop held for a whole execution serves nobody meanwhile.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if hosts_actors(loop):
        raise LifecycleError(
            f"{what} is the sync form and this event loop hosts this process's actors or "
            "chunks (an async call started them here): holding it for their answer would "
            "wait forever; use its async_ twin with await"
        )
    if not _warned:
        _warned.append(what)
        log.warning("sync_call_holds_event_loop", call=what,
                    hint="sync calls inside a running event loop run on triggerbus's own "
                    "loop while this one waits; in async code prefer the async_ twins "
                    "(said once)")  # fmt: skip


_warned: list[str] = []
"""The first sync call that held a running loop (the warning is given once)."""


def _sync_name(coroutine: Coroutine[Any, Any, Any]) -> str:
    owner, _, name = getattr(coroutine, "__qualname__", "").rpartition(".")
    if not name:
        return "this call"
    name = name.removeprefix("async_")
    return f"{owner}.{name}()" if owner else f"{name}()"


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the background loop and wait for its result, unless it would
    hold a running loop that hosts actors (``_refuse_inside_loop``)."""
    try:
        # Named as the caller wrote it: the sync method, not the async twin it wraps.
        _refuse_inside_loop(_sync_name(coroutine))
    except LifecycleError:
        coroutine.close()
        raise
    return run_detached(coroutine)


def run_detached(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the background loop, with that loop's own connection, and wait
    for its result, inside a running event loop too: the caller's thread (and its loop) wait,
    as TriggerFlow holds its loop for a sync call.

    Called directly only for a coroutine that needs nothing from the caller's loop, whatever
    that loop hosts: a store read, an append to a runtime stream. One that waited on work
    hosted on that loop (an emit's cascade, a result not yet reached) would wait for a loop
    that waits for it; ``run_sync`` refuses those there.
    """
    return asyncio.run_coroutine_threadsafe(coroutine, _background_loop()).result()


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def future_of(task: asyncio.Task[T]) -> concurrent.futures.Future[T]:
    """A task of the background loop as a future sync code can wait on (``result(timeout)``)."""

    async def outcome() -> T:
        return await task

    return asyncio.run_coroutine_threadsafe(outcome(), task.get_loop())


def iterate_sync(iterator: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async iterator from sync code, one item per round trip to the loop."""
    _refuse_inside_loop("get_runtime_stream()")
    loop = _background_loop()

    async def next_item() -> tuple[bool, T | None]:
        try:
            return True, await iterator.__anext__()
        except StopAsyncIteration:
            return False, None

    try:
        while True:
            more, item = asyncio.run_coroutine_threadsafe(next_item(), loop).result()
            if not more:
                return
            yield item  # type: ignore[misc]
    finally:
        # A caller that stops early (break, an error) must not leave the async iterator, and
        # the reader it holds, suspended on the loop until the process ends.
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            asyncio.run_coroutine_threadsafe(aclose(), loop).result()
