"""Standing pull requests: deliveries pushed as soon as they are stored, credit topped up as
handlers finish.

A ``fetch`` cycle (ask, wait, return a batch, ask again) costs a request, a timer and a wake-up
per batch, and leaves a gap between batches in which a stored message waits for the next ask.
Here the consumer always has pull requests pending for every free handler slot, as the newer
NATS clients' "consume" does: a message is delivered the moment it is stored, and each finished
handler returns its slot. The server answers an expired request with a status (408, with the
count it left unfilled) and keeps sending idle heartbeats while one is pending; silence for two
heartbeats, or a reconnect, means the requests were lost (a restarted server forgets them) and
are asked for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from triggerbus.bus._errors import translate_nats_errors

log = structlog.get_logger()

EXPIRES = 10.0
"""Seconds one pull request stays pending on the server."""
HEARTBEAT = 2.0
"""Seconds between the server's idle heartbeats while a request is pending."""
RECHECK = 1.0
"""Longest pause, in seconds, between checks for lost requests (a reconnect, silence)."""
_STATUS = "Status"
_PENDING_MESSAGES = "Nats-Pending-Messages"
_HEARTBEAT_STATUS = "100"


class Permits(Protocol):
    """What a dispatched delivery's handler calls once it has settled the message."""

    def release(self) -> None: ...


class _PullRequest(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int
    idle_heartbeat: int


_encode = msgspec.json.Encoder().encode


class StandingPull:
    """Keeps ``capacity`` messages asked for, minus those in handlers' hands.

    Args:
        nc: The connection.
        next_subject: The consumer's ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``.
        name: For logs.
        capacity: Deliveries held at once (in handlers plus asked for). A soft bound: after a
            reconnect to a server that did keep the old requests, up to twice as many may come.
        expires, heartbeat: Of each pull request, in seconds.
        recheck: Longest pause between checks for lost requests (tests lengthen it to prove
            that a released slot is asked for without waiting for a check).
    """

    def __init__(
        self,
        nc: Client,
        next_subject: str,
        name: str,
        *,
        capacity: int,
        expires: float = EXPIRES,
        heartbeat: float = HEARTBEAT,
        recheck: float = RECHECK,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._nc = nc
        self._next = next_subject
        self.name = name
        self._capacity = capacity
        self._threshold = max(1, capacity // 2)
        self._expires = expires
        self._heartbeat = heartbeat
        self._recheck = min(heartbeat / 2, recheck)
        self._in_hand = 0
        self._requested = 0
        self._requested_at = 0.0
        self._heard_at = 0.0
        self._reconnects = 0
        self._wake = asyncio.Event()
        self._stopping = False

    def release(self) -> None:
        """A handler settled its message: its slot can be asked for again (at once when
        nothing is asked for, else once half the capacity is free)."""
        self._in_hand -= 1
        free = self._capacity - self._in_hand - self._requested
        if free >= self._threshold or (free > 0 and self._requested == 0):
            self._wake.set()

    async def run(
        self, stopping: asyncio.Event, dispatch: Callable[[Msg, Permits], None]
    ) -> None:
        """Deliver until ``stopping`` is set; messages that arrive after it are handed back."""

        async def on_message(msg: Msg) -> None:
            self._heard_at = time.monotonic()
            if not msg.reply:  # only the server's status messages come without an ack subject
                self._on_status(msg.headers or {})
                return
            if self._requested > 0:
                self._requested -= 1
            if self._stopping:
                await _hand_back(msg)
                return
            self._in_hand += 1
            dispatch(msg, self)

        inbox = self._nc.new_inbox()
        with translate_nats_errors(subject=inbox):
            sub = await self._nc.subscribe(inbox, cb=on_message)
        watcher = asyncio.get_running_loop().create_task(self._wake_on(stopping))
        try:
            while not stopping.is_set():
                if self._nc.is_closed:
                    stopping.set()
                    break
                self._forget_lost_requests()
                await self._top_up(inbox)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._recheck):
                        await self._wake.wait()
        finally:
            self._stopping = True
            watcher.cancel()
            await self._close(sub)

    async def _close(self, sub: Subscription) -> None:
        """Hand back what is queued (the callback naks it once stopping) and drop the inbox;
        pending requests die with its interest.

        Not ``sub.drain()``: its flush, cancelled by a host that is being cancelled, leaves a
        cancelled PONG future that makes nats-py's read loop stop on the PONG (nats.py #914).
        """
        try:
            for _ in range(sub.pending_msgs):
                await asyncio.sleep(0)  # one turn of the callback's task per queued message
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._wake.set()

    def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get(_STATUS, "")
        if status == _HEARTBEAT_STATUS:
            return
        # 408 (expired), 409 (leadership change, too many waiting, ...): the request is over;
        # what it left unfilled is ours to ask for again.
        left = headers.get(_PENDING_MESSAGES)
        if left is not None and left.isdigit():
            self._requested = max(0, self._requested - int(left))
        else:
            self._requested = 0
        if status in ("408", "404"):
            self._wake.set()  # a request ran its course: renew it now
            return
        # A refusal is asked again on the next check, not at once: a condition that persists
        # (too many waiting requests) must not become a loop of requests and refusals.
        # A 400 is a request this code got wrong (e.g. a heartbeat too long for its expiry).
        level = log.warning if status == "400" else log.info
        level("pull_request_ended", consumer=self.name, status=status,
              description=headers.get("Description", ""))  # fmt: skip

    def _forget_lost_requests(self) -> None:
        """Requests a restarted server or a dropped connection no longer holds."""
        if self._requested == 0:
            return
        reconnects = self._nc.stats["reconnects"]
        now = time.monotonic()
        silent = now - max(self._heard_at, self._requested_at) > 2 * self._heartbeat
        expired = now - self._requested_at > self._expires + self._heartbeat
        if reconnects != self._reconnects or silent or expired:
            log.debug("pull_requests_forgotten", consumer=self.name, requested=self._requested)
            self._requested = 0
        self._reconnects = reconnects

    async def _top_up(self, inbox: str) -> None:
        free = self._capacity - self._in_hand - self._requested
        if free <= 0 or (free < self._threshold and self._requested > 0):
            return
        request = _PullRequest(
            batch=free,
            expires=int(self._expires * 1e9),
            idle_heartbeat=int(self._heartbeat * 1e9),
        )
        try:
            await self._nc.publish(self._next, _encode(request), reply=inbox)
        except nats.errors.Error as exc:
            # Reconnecting: the next pass asks again.
            log.debug("pull_request_not_sent", consumer=self.name, error=str(exc))
            return
        self._requested += free
        self._requested_at = time.monotonic()
        self._reconnects = self._nc.stats["reconnects"]


async def _hand_back(msg: Msg) -> None:
    try:
        await msg.nak()
    except nats.errors.Error as exc:
        log.debug("delivery_hand_back_failed", subject=msg.subject, error=str(exc))
