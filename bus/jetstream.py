"""The I/O seam above nats-py: publish, KV compare-and-set, pull deliveries, subscriptions.

Everything above ``bus/`` talks to NATS through ``Bus``; no nats type and no nats error leaves
this module (errors go through ``translate_nats_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.client import KV_PRE_TEMPLATE, JetStreamContext
from nats.js.kv import KeyValue

from triggerbus.bus._errors import (
    call_retrying,
    transient,
    translate_nats_errors,
    unanswered,
)
from triggerbus.bus.connection import ConnectOptions, connect
from triggerbus.bus.provision import (
    ConsumerPolicy,
    StoragePolicy,
    ensure_consumer,
    provision,
)
from triggerbus.bus.pull import Permits, StandingPull
from triggerbus.bus.replies import JS_API, PublishAcks
from triggerbus.bus.subjects import Subjects
from triggerbus.errors import BusError, BusUnavailableError, RevisionConflictError

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_VALID_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_UNAVAILABLE_PAUSE = 0.5
"""Seconds a consumer loop pauses after a failed fetch before asking again."""

log = structlog.get_logger()


@dataclass
class Delivery:
    """One message from a durable consumer, with the calls that settle it."""

    _msg: Msg

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._msg.headers or {})

    @property
    def num_delivered(self) -> int:
        """From the ack subject's own token: nats-py's ``metadata`` builds a datetime and three
        objects per message, and the hosts read only this, on every delivery."""
        return _num_delivered(self._msg)

    @property
    def stream_sequence(self) -> int:
        return self._msg.metadata.sequence.stream

    async def ack(self) -> None:
        with translate_nats_errors(subject=self.subject):
            await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        with translate_nats_errors(subject=self.subject):
            await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        with translate_nats_errors(subject=self.subject):
            await self._msg.in_progress()

    async def term(self) -> None:
        with translate_nats_errors(subject=self.subject):
            await self._msg.term()


_ACK_V1_TOKENS = 9
"""``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``."""
_ACK_V2_MIN_TOKENS = 11
"""The later form adds the domain and account hash after ``ACK`` (and may end in a token)."""


def _num_delivered(msg: Msg) -> int:
    reply = msg.reply
    tokens = reply.split(".") if reply else []
    field = ""
    if tokens[:2] == ["$JS", "ACK"]:
        if len(tokens) == _ACK_V1_TOKENS:
            field = tokens[4]
        elif len(tokens) >= _ACK_V2_MIN_TOKENS:
            field = tokens[6]
    if field.isdigit():
        return int(field)
    return msg.metadata.num_delivered  # nats-py's parse, and its error for a non-JetStream one


class PullConsumer:
    """A durable pull consumer: ``deliver`` keeps handlers fed through standing pull
    requests; ``fetch`` returns what is ready, waiting up to ``wait`` (through nats-py's pull
    subscription, bound on first use: hosts that only ``deliver`` never need its inbox)."""

    def __init__(self, js: JetStreamContext, nc: Client, *, stream: str, durable: str) -> None:
        self._js = js
        self._nc = nc
        self._stream = stream
        self._durable = durable
        self._sub: JetStreamContext.PullSubscription | None = None
        self.name = f"{stream}/{durable}"
        self._next_subject = f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}"

    async def deliver(
        self,
        capacity: int,
        stopping: asyncio.Event,
        dispatch: Callable[[Delivery, Permits], None],
    ) -> None:
        """Hand each message to ``dispatch`` as it arrives, with at most ``capacity`` held.

        ``dispatch`` must not block; its handler calls ``release()`` on the permits it was
        given once the message is settled. Returns when ``stopping`` is set (or the connection
        closed for good, which sets it).
        """
        feed = StandingPull(self._nc, self._next_subject, self.name, capacity=capacity)
        await feed.run(stopping, lambda msg, permits: dispatch(Delivery(msg), permits))

    async def fetch_until(
        self, batch: int, stopping: asyncio.Event, *, wait: float = 5.0
    ) -> list[Delivery]:
        """Fetch up to ``batch`` messages, giving up as soon as ``stopping`` is set.

        A bus that is unavailable for a while (the server restarts, the client reconnects on
        its own) is waited out rather than raised, so a long-running host survives it; a
        connection closed for good sets ``stopping``.
        """
        stop = asyncio.ensure_future(stopping.wait())
        fetch = asyncio.ensure_future(self.fetch(batch, wait))
        try:
            await asyncio.wait({stop, fetch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not fetch.done():
                # Abandoned: settle it here so its error is not left unread. Messages it may
                # have pulled are redelivered after ack_wait.
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
        if fetch.cancelled():
            return []
        error = fetch.exception()
        if error is None:
            return fetch.result()
        if stopping.is_set():
            return []
        if self._nc.is_closed:
            stopping.set()
            return []
        if isinstance(error, BusUnavailableError | BusError):
            log.warning("consumer_fetch_failed", consumer=self.name, error=str(error))
            await asyncio.sleep(_UNAVAILABLE_PAUSE)
            return []
        raise error

    async def fetch(self, batch: int, wait: float) -> list[Delivery]:
        try:
            with translate_nats_errors(subject=self.name):
                if self._sub is None:
                    self._sub = await self._js.pull_subscribe_bind(self._durable, self._stream)
                msgs = await self._sub.fetch(batch, timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):
            return []  # nothing arrived within ``wait``: the normal idle case
        except Exception as exc:
            if isinstance(exc.__cause__, nats.errors.TimeoutError):
                return []
            raise
        return [Delivery(msg) for msg in msgs]

    async def pending(self) -> int:
        """Messages not yet delivered: the backlog an autoscaler would read."""
        with translate_nats_errors(subject=self.name):
            info = await self._js.consumer_info(self._stream, self._durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def close(self) -> None:
        if self._sub is None:
            return
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error:
            pass


class PipelinedPublish:
    """A publish already sent whose ack nobody has waited for yet."""

    __slots__ = ("_bus", "_future", "_headers", "_payload", "_subject")

    def __init__(
        self,
        bus: Bus,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        future: asyncio.Future[Msg] | None,
    ) -> None:
        self._bus = bus
        self._subject = subject
        self._payload = payload
        self._headers = headers
        self._future = future

    async def settled(self) -> int:
        """The stream sequence once stored; a failed first attempt is retried like ``publish``
        (the message id makes a copy the stream already holds count once)."""
        if self._future is not None:
            try:
                return PublishAcks.pub_ack(await self._future, self._subject).seq
            except nats.errors.Error as exc:
                if not transient(exc):
                    with translate_nats_errors(subject=self._subject):
                        raise
        return await self._bus.publish(
            self._subject,
            self._payload,
            msg_id=self._headers[MSG_ID_HEADER],
            headers=self._headers,
        )


class Subscription:
    """A core NATS subscription read one message at a time."""

    def __init__(self, sub: nats.aio.subscription.Subscription) -> None:
        self._sub = sub

    async def next(self) -> tuple[bytes, dict[str, str]]:
        """Wait for the next message; the caller bounds the wait with ``asyncio.timeout``."""
        with translate_nats_errors(subject=self._sub.subject):
            msg = await self._sub.next_msg(timeout=None)  # type: ignore[arg-type]
        return msg.data, dict(msg.headers or {})

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error:
            pass


class Bus:
    """One NATS connection, its JetStream context and the executions bucket."""

    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self._kv: KeyValue | None = None
        self._kv_prefix = KV_PRE_TEMPLATE.format(bucket=subjects.executions_bucket)
        self._acks = PublishAcks(nc)
        self._readers: set[asyncio.Queue[tuple[int, bytes] | None]] = set()
        self._watchers: set[KeyValue.KeyWatcher] = set()
        self._closing = False

    @classmethod
    async def open(
        cls,
        options: ConnectOptions,
        subjects: Subjects,
        *,
        storage: StoragePolicy | None = None,
    ) -> Bus:
        """Connect, check the server, and provision streams and bucket idempotently."""
        nc = await connect(options)
        bus = cls(nc, subjects)
        try:
            await bus._acks.start()
            await provision(bus.js, subjects, storage)
            with translate_nats_errors(subject=subjects.executions_bucket):
                bus._kv = await bus.js.key_value(subjects.executions_bucket)
        except BaseException:
            await bus.close()
            raise
        return bus

    async def close(self) -> None:
        for reader in self._readers:
            reader.put_nowait(None)  # a stream reader waiting on this connection gives up
        # A KV watcher's queue is not told when its connection closes: stopped here, a watch
        # ends (as its callers expect) instead of leaving its task suspended forever. One
        # still being set up sees ``_closing`` and ends too.
        self._closing = True
        await asyncio.gather(*(w.stop() for w in list(self._watchers)), return_exceptions=True)
        if self.nc.is_closed:
            await self._acks.stop()
            return
        try:
            await self.nc.drain()
        except nats.errors.Error:
            await self.nc.close()
        finally:
            await self._acks.stop()

    @property
    def url(self) -> str:
        server = self.nc.connected_url
        return server.geturl() if server else ""

    # --- publishing ---------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Publish into a stream and wait for the store's ack; returns the stream sequence.

        Transient failures (a stream electing a leader, a reconnect) are retried for up to
        ``RETRY_WINDOW`` seconds before the error is raised.
        """
        all_headers = dict(headers or {})
        if msg_id:
            all_headers[MSG_ID_HEADER] = msg_id
        # With an id, a retry the stream already holds is dropped as a duplicate, so even a
        # timed-out attempt may be repeated; without one, only an attempt nobody answered.
        ack = await call_retrying(
            lambda: self._acks.publish(subject, payload, all_headers or None),
            retry_if=transient if msg_id else unanswered,
            subject=subject,
        )
        return ack.seq

    async def publish_pipelined(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> PipelinedPublish:
        """Publish into a stream without waiting for the ack: ``settled()`` on the result waits
        for it (retrying as ``publish`` does). Publishes on one connection are stored in the
        order they were sent, so a run of these keeps its order unless one needs a retry."""
        all_headers = {**(headers or {}), MSG_ID_HEADER: msg_id}
        try:
            future = await self._acks.send(subject, payload, all_headers)
        except nats.errors.Error:
            future = None  # not even sent: settled() sends it the retrying way
        return PipelinedPublish(self, subject, payload, all_headers, future)

    async def publish_once(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Publish with de-duplication; False when the stream already held ``msg_id``."""
        all_headers = {**(headers or {}), MSG_ID_HEADER: msg_id}
        ack = await call_retrying(
            lambda: self._acks.publish(subject, payload, all_headers), subject=subject
        )
        return not ack.duplicate

    async def publish_core(
        self, subject: str, payload: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Fire-and-forget publish; used for replies and close notifications."""
        with translate_nats_errors(subject=subject):
            await self.nc.publish(subject, payload, headers=dict(headers) if headers else None)

    async def first_message(
        self, stream: str, subject: str, *, from_sequence: int = 1
    ) -> tuple[int, bytes] | None:
        """The oldest message ``stream`` still holds on ``subject`` at or after
        ``from_sequence``, as (sequence, data), or ``None``.

        On a work-queue stream that walks the subject's queue from its head: acked messages are
        gone. Asked of the stream's leader (not a direct get from a replica that may lag), so
        every message whose publish was acknowledged is seen.
        """
        stored = await call_retrying(
            lambda: self._acks.get_next(stream, subject, from_sequence), subject=subject
        )
        if stored is None:
            return None
        return stored.seq, stored.data

    # --- the executions bucket -----------------------------------------------------------------

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "Bus.open() provisions the bucket"
        return self._kv

    async def load(self, key: str) -> tuple[bytes, int] | None:
        """The value and revision at ``key``, or ``None``."""
        try:
            entry = await call_retrying(lambda: self.kv.get(key), key=key)
        except Exception as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return None
            raise
        if entry.value is None:
            return None
        return entry.value, int(entry.revision or 0)

    async def store(self, key: str, payload: bytes, *, revision: int | None) -> int:
        """Write ``key`` if its revision is still ``revision`` (``None``: if absent).

        A write that timed out may have been applied; its retry then finds its own revision and
        raises a conflict, which the caller resolves by reloading, as for any other writer.

        Raises:
            RevisionConflictError: somebody else wrote first.
        """
        if not _VALID_KEY.fullmatch(key) or key[0] == "." or key[-1] == ".":
            raise BusError(f"invalid KV key {key!r}", subject=self.subjects.executions_bucket)
        # KV's own compare-and-set (what ``kv.update`` sends), through the lean publish path.
        subject = self._kv_prefix + key
        headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision or 0)}
        try:
            ack = await call_retrying(
                lambda: self._acks.publish(subject, payload, headers), key=key
            )
        except RevisionConflictError:
            if revision is not None:
                raise
            # Absent is "last sequence 0", but a deleted key leaves a tombstone: kv.create
            # checks for one and writes over it, or raises the same conflict.
            written = await call_retrying(lambda: self.kv.create(key, payload), key=key)
            return int(written)
        return ack.seq

    async def watch(self, key: str) -> AsyncIterator[tuple[bytes, int]]:
        """The value and revision at ``key``, its current one first (when it has one), then
        every later one, for as long as the caller iterates: a change waited on without
        reading the store over and over. Deletes are skipped. The caller closes it
        (``contextlib.aclosing``), which stops the watch's consumer; closing the bus ends it."""
        if not _VALID_KEY.fullmatch(key):
            raise BusError(f"invalid KV key {key!r}", subject=self.subjects.executions_bucket)
        if self._closing:
            return
        watcher = await call_retrying(lambda: self.kv.watch(key, ignore_deletes=True), key=key)
        self._watchers.add(watcher)
        try:
            if self._closing:  # the bus began closing while the watch was being set up
                return
            async for entry in watcher:
                if entry is not None and entry.value:  # None: the end of the current values
                    yield entry.value, int(entry.revision or 0)
        finally:
            self._watchers.discard(watcher)
            with contextlib.suppress(Exception):  # a connection already gone stopped it too
                await watcher.stop()

    async def scan(self, key_filter: str) -> AsyncIterator[tuple[str, bytes, int]]:
        """Every key matching ``key_filter`` (KV wildcards) with its current value and
        revision, once each, then the end: one ordered consumer over the bucket, not a read
        per key. For an operator's listing: values written during the scan may or may not be
        in it."""
        watcher = await call_retrying(
            lambda: self.kv.watch(key_filter, ignore_deletes=True), key=key_filter
        )
        try:
            with translate_nats_errors(key=key_filter):
                async for entry in watcher:
                    if entry is None:  # the end of the current values
                        return
                    if entry.value:
                        yield entry.key, entry.value, int(entry.revision or 0)
        finally:
            with contextlib.suppress(Exception):  # a connection already gone stopped it too
                await watcher.stop()

    # --- consuming ----------------------------------------------------------------------------

    async def pull_consumer(
        self,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        policy: ConsumerPolicy | None = None,
    ) -> PullConsumer:
        """Ensure the durable consumer exists; nothing is subscribed until it is used."""
        await ensure_consumer(
            self.js, stream=stream, durable=durable, filter_subject=filter_subject, policy=policy
        )
        return PullConsumer(self.js, self.nc, stream=stream, durable=durable)

    async def subscribe(self, subject: str) -> Subscription:
        with translate_nats_errors(subject=subject):
            sub = await self.nc.subscribe(subject)
        return Subscription(sub)

    def new_inbox(self) -> str:
        return self.nc.new_inbox()

    async def read_stream(
        self, subject: str, *, start_sequence: int = 0
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Replay then follow one subject of a limits stream, in order, as (sequence, data).

        Uses an ephemeral ordered consumer: never a durable one per execution. Deliveries go
        through a callback into a plain queue: nats-py's ``next_msg`` costs a task per message.
        """
        received: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()

        async def on_message(msg: Msg) -> None:
            received.put_nowait((msg.metadata.sequence.stream, msg.data))

        with translate_nats_errors(subject=subject):
            if start_sequence > 0:
                sub = await self.js.subscribe(
                    subject,
                    cb=on_message,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    config=_start_at(start_sequence),
                )
            else:
                sub = await self.js.subscribe(
                    subject, cb=on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
                )
        self._readers.add(received)
        try:
            while True:
                item = received.get_nowait() if not received.empty() else await received.get()
                if item is None:
                    raise BusUnavailableError(
                        f"the NATS connection closed while reading {subject!r}", url=self.url
                    )
                yield item
        finally:
            self._readers.discard(received)
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, asyncio.CancelledError):
                pass


def _start_at(sequence: int) -> nats.js.api.ConsumerConfig:
    return nats.js.api.ConsumerConfig(opt_start_seq=sequence)
