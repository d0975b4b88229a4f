"""One wildcard inbox per connection for every awaited reply, instead of a subscription or a
request per call: :class:`ReplyRouter` for replies to emits, :class:`PublishAcks` for the acks
of JetStream publishes."""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.api
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from triggerbus.bus._errors import translate_nats_errors

log = structlog.get_logger()

ACK_TIMEOUT = 5.0
"""Seconds a publish waits for the stream's ack (nats-py's JetStream default)."""


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


class PublishAcks:
    """One wildcard inbox for the acks of every JetStream publish made on a connection (and
    the replies of the one JetStream API call on a hot path, reading a stream's next message).

    nats-py's ``js.publish`` is a generic request: a fresh inbox token, a future, an
    ``asyncio.wait_for`` timer, and ``json.loads`` plus a dataclass for the PubAck, on every
    call. Here a publish is a core publish with ``reply=<inbox>.<n>``; the ack resolves a
    future from a dict; all deadlines share one timer (they expire in the order they were
    set, since every publish gets the same timeout); the PubAck is decoded by msgspec. What
    the caller sees is unchanged: the PubAck, or the nats-py error ``js.publish`` would have
    raised (``NoStreamResponseError``, ``APIError`` and its subclasses, ``TimeoutError``), for
    :func:`~triggerbus.bus._errors.call_retrying` to retry or translate.
    """

    def __init__(self, nc: Client, *, timeout: float = ACK_TIMEOUT) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = nc.new_inbox() + "."
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._counter = itertools.count(1)
        self._sub: nats.aio.subscription.Subscription | None = None

    async def start(self) -> None:
        with translate_nats_errors(subject=self._prefix):
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def stop(self) -> None:
        """Fail what is still waiting (the connection is going away) and unsubscribe."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        if self._sub is not None and not self._nc.is_closed:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> PubAck:
        """Publish into a stream and wait for its ack; raises nats-py errors like ``js.publish``."""
        return self.pub_ack(await self.request(subject, payload, headers), subject)

    async def send(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[Msg]:
        """Publish now and return the future of its one reply, without waiting for it; the
        reply (or the timeout) resolves the future even if nobody awaits it."""
        token, future = self._open()
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._close(token)
            raise
        return future

    @staticmethod
    def pub_ack(msg: Msg, subject: str) -> PubAck:
        """The PubAck a stream answered with, or the nats-py error ``js.publish`` raises."""
        data = msg.data
        if not data:
            if msg.headers and msg.headers.get(nats.js.api.Header.STATUS) == _NO_RESPONDERS:
                raise nats.js.errors.NoStreamResponseError
            raise nats.js.errors.APIError(description=f"empty publish ack on {subject}")
        ack = _PUB_ACK.decode(data)
        if ack.error is not None:
            _raise_api_error(ack.error)
        return ack

    async def get_next(self, stream: str, subject: str, from_sequence: int) -> StoredMsg | None:
        """The first message of ``stream`` on ``subject`` at or after ``from_sequence``, asked of
        the stream's leader (``$JS.API.STREAM.MSG.GET``, as ``js.get_msg(next=True)``), or None.
        """
        msg = await self.request(
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            _ENCODER.encode(_NextBySubject(seq=from_sequence, next_by_subj=subject)),
            None,
        )
        if not msg.data:
            if msg.headers and msg.headers.get(nats.js.api.Header.STATUS) == _NO_RESPONDERS:
                raise nats.js.errors.ServiceUnavailableError
            raise nats.js.errors.APIError(description=f"empty reply from {stream}")
        reply = _MSG_GET.decode(msg.data)
        if reply.error is not None:
            if reply.error.code == _NOT_FOUND:
                return None
            _raise_api_error(reply.error)
        return reply.message

    async def request(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Msg:
        """Publish with a reply subject under this inbox and wait for the one reply."""
        token, future = self._open()
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            return await future
        finally:
            self._close(token)

    def _open(self) -> tuple[str, asyncio.Future[Msg]]:
        token = str(next(self._counter))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = future
        self._deadlines.append((loop.time() + self._timeout, token))
        if self._timer is None:
            self._timer = loop.call_at(self._deadlines[0][0], self._expire)
        return token, future

    def _close(self, token: str) -> None:
        self._pending.pop(token, None)
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._pending:
            deadlines.popleft()  # keep the queue short when acks come back in order

    def statistics(self) -> AckStatistics:
        return AckStatistics(waiting=len(self._pending))

    async def _on_ack(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _expire(self) -> None:
        """The one timer: fail every publish whose deadline passed, re-arm for the next."""
        self._timer = None
        deadlines, pending = self._deadlines, self._pending
        now = asyncio.get_running_loop().time()
        while deadlines:
            deadline, token = deadlines[0]
            future = pending.get(token)
            if future is None or future.done():
                deadlines.popleft()  # answered (or abandoned) before its deadline
                continue
            if deadline > now:
                break
            deadlines.popleft()
            del pending[token]
            future.set_exception(nats.errors.TimeoutError())
        if deadlines:
            self._timer = asyncio.get_running_loop().call_at(deadlines[0][0], self._expire)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """A JetStream publish ack (unknown fields, e.g. ``domain``, are skipped)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


class StoredMsg(msgspec.Struct):
    """A message read from a stream (its payload arrives base64-encoded)."""

    seq: int
    data: bytes = b""
    subject: str = ""


class _NextBySubject(msgspec.Struct):
    seq: int
    next_by_subj: str


class _MsgGetReply(msgspec.Struct):
    message: StoredMsg | None = None
    error: _ApiError | None = None


@dataclass(frozen=True)
class AckStatistics:
    waiting: int


def _raise_api_error(error: _ApiError) -> None:
    # from_error raises the subclass for the code (ServiceUnavailableError for 503, ...)
    nats.js.errors.APIError.from_error(
        {"code": error.code, "err_code": error.err_code, "description": error.description}
    )


JS_API = "$JS.API"
"""The JetStream API prefix of the default domain (what ``nc.jetstream()`` uses)."""
_PUB_ACK = msgspec.json.Decoder(PubAck)
_MSG_GET = msgspec.json.Decoder(_MsgGetReply)
_ENCODER = msgspec.json.Encoder()
_NO_RESPONDERS = "503"
_NOT_FOUND = 404
