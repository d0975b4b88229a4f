"""One wildcard inbox per process for every awaited reply, instead of a subscription per call."""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from triggerbus.bus._errors import translate_nats_errors

log = structlog.get_logger()


class ReplyRouter:
    """Hands out reply subjects and resolves the future waiting on each."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._futures: dict[str, asyncio.Future[bytes]] = {}
        self._counter = itertools.count(1)
        self._sub: nats.aio.subscription.Subscription | None = None

    async def start(self) -> None:
        with translate_nats_errors(subject=self._prefix):
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_message)

    async def stop(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    def open(self) -> tuple[str, asyncio.Future[bytes]]:
        """A fresh reply subject and the future its first message resolves."""
        token = str(next(self._counter))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        return f"{self._prefix}.{token}", future

    def discard(self, subject: str) -> None:
        self._futures.pop(subject.rsplit(".", 1)[-1], None)

    async def _on_message(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._futures.pop(token, None)
        if future is None:
            log.debug("reply_unclaimed", subject=msg.subject)
            return
        if not future.done():
            future.set_result(msg.data)
