"""The lifecycle both hosts share: run once, signal readiness, stop on request."""

from __future__ import annotations

import asyncio

from triggerbus.errors import LifecycleError


class HostLifecycle:
    """``run()`` may be called once; ``wait_ready()`` returns once it consumes; ``shutdown()``
    (idempotent) asks it to stop taking work."""

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._started = False

    async def wait_ready(self) -> None:
        """Wait until the host is bound to its consumers and fetching."""
        await self._ready.wait()

    def shutdown(self) -> None:
        """Stop fetching; what is already taken finishes. Idempotent."""
        self._stopping.set()

    def _claim_run(self) -> None:
        if self._started:
            raise LifecycleError(
                f"{type(self).__name__}.run() was already called; create a new host"
            )
        self._started = True
