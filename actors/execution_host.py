"""The execution actor's host: mailbox consumer, per-execution lanes, KV compare-and-set, outbox.

Messages of one execution run one at a time in a lane; different executions run side by side.
Each transition is stored with compare-and-set on the revision the host last saw, so a second
host working on the same execution fails its write, reloads and applies again. The outbox is
performed only after the write, and re-performed (same message ids) by whoever later finds a
stored outbox it cannot vouch for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from triggerbus.actors._lifecycle import HostLifecycle
from triggerbus.actors.execution import Transition, apply, fail_oversized
from triggerbus.actors.hand_off import HandOff
from triggerbus.actors.hosted import MISMATCH_REDELIVERIES, HostedFlow, mismatch_delay
from triggerbus.bus.jetstream import Bus, Delivery, PipelinedPublish, PullConsumer
from triggerbus.bus.provision import ConsumerPolicy
from triggerbus.bus.pull import Permits
from triggerbus.bus.subjects import EXECUTION_ID, MAILBOX_DLQ
from triggerbus.contracts.codec import WireError, decode, encode
from triggerbus.contracts.messages import (
    CONTRACT_ERROR,
    DeadLetter,
    ErrorInfo,
    MailboxMessage,
    Reply,
    StartExecution,
    TimerFired,
    mailbox_decoder,
)
from triggerbus.contracts.outbox import (
    AppendStream,
    Invoke,
    NotifyClosed,
    Observe,
    OutboxCommand,
    ScheduleTimer,
    SendMailbox,
    SendReply,
)
from triggerbus.contracts.snapshot import Snapshot, snapshot_decoder
from triggerbus.errors import PayloadTooLargeError, RevisionConflictError
from triggerbus.observability.logging import bound_log_context
from triggerbus.observability.telemetry import (
    Handling,
    MailboxInput,
    PublishInput,
    Telemetry,
    current,
)

log = structlog.get_logger()

MAX_CAS_RETRIES = 16
OVERTAKE_RETRY_DELAY = 0.2
"""Seconds a chunk outcome waits before it is offered again when older messages of its
execution are still in the mailbox."""
TIMER_BATCH = 64
TIMER_RESOLUTION = 0.005
"""Seconds early a timer may fire rather than be handed back once more."""
TIMER_POLICY = ConsumerPolicy(ack_wait=30.0, max_deliver=-1, max_ack_pending=1_000_000)
"""Timers wait as delayed naks, which count as pending acks: allow many at once."""
CACHE_SIZE = 10_000
_loose = msgspec.json.Decoder()


@dataclass(frozen=True)
class ExecutionHostStatistics:
    in_flight: int
    cached_snapshots: int
    applied: int
    conflicts: int
    dead_lettered: int
    timers: int
    """Timers this host moved into mailboxes when they were due."""
    handed_off: int = 0
    """Chunk outcomes applied straight from this process's chunk host (actors/hand_off.py)."""


ObserveHook = Callable[[str, str, dict[str, Any]], None]


class ExecutionHost(HostLifecycle):
    """Hosts the execution actors of one flow.

    Args:
        bus: An open bus.
        flow: The flow whose executions to host.
        capacity: Mailbox messages in flight in this host at once.
        clock: Wall-clock seconds; injected so tests control time.
        on_observe: Receives the actor's observation events as they are. Tests use it, and
            so does the local runtime, to know which executions it started are still open
            before it hosts a changed definition of the flow (``_runtime._Hosting``); the
            Event Center gets them typed through ``telemetry``.
        telemetry: Traces, metrics and Event Center records around each message and publish;
            the process's (configured by ``OTEL_*``) by default.
        after_store: Called after each snapshot write, before its outbox is published; tests
            use it to kill the process in exactly that window.
    """

    def __init__(
        self,
        bus: Bus,
        flow: HostedFlow,
        *,
        capacity: int = 256,
        clock: Callable[[], float] = time.time,
        on_observe: ObserveHook | None = None,
        consumer_policy: ConsumerPolicy | None = None,
        after_store: Callable[[], None] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry = telemetry or current()
        self._after_store = after_store
        self._bus = bus
        self._flow = flow
        self._capacity = capacity
        self._clock = clock
        self._on_observe = on_observe
        self._policy = consumer_policy or ConsumerPolicy(ack_wait=30.0, max_deliver=-1)
        self._cache: OrderedDict[str, tuple[Snapshot, int]] = OrderedDict()
        self._lanes: dict[str, asyncio.Queue[_Queued]] = {}
        super().__init__()
        self._group: asyncio.TaskGroup | None = None
        self._context: contextvars.Context | None = None
        self._handed_off = 0
        self._in_flight = 0
        self._applied = 0
        self._conflicts = 0
        self._dead_lettered = 0
        self._timers = 0

    def statistics(self) -> ExecutionHostStatistics:
        return ExecutionHostStatistics(
            in_flight=self._in_flight,
            cached_snapshots=len(self._cache),
            applied=self._applied,
            conflicts=self._conflicts,
            dead_lettered=self._dead_lettered,
            timers=self._timers,
            handed_off=self._handed_off,
        )

    async def run(self) -> None:
        self._claim_run()
        self._context = contextvars.copy_context()
        subjects = self._bus.subjects
        consumer = await self._bus.pull_consumer(
            stream=subjects.exec_stream,
            durable=subjects.exec_consumer(self._flow.name),
            filter_subject=subjects.mailboxes(self._flow.name),
            policy=self._policy,
        )
        timers = await self._bus.pull_consumer(
            stream=subjects.timer_stream,
            durable=subjects.timer_consumer(self._flow.name),
            filter_subject=subjects.timers(self._flow.name),
            policy=TIMER_POLICY,
        )
        flow_data = await self._bus.subscribe(subjects.flow_data(self._flow.name))
        self._ready.set()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                relay = group.create_task(self._relay_flow_data(flow_data))
                group.create_task(self._run_timers(timers))
                await self._consume(consumer, group)
                relay.cancel()
                # Stopping: timers stay in their stream for another host (or this one, when
                # it comes back); lanes drain by themselves.
        finally:
            self._group = None
            await flow_data.close()
            await timers.close()
            await consumer.close()

    async def _relay_flow_data(self, subscription: Any) -> None:
        """Turn each flow-data broadcast into a ``FlowDataChanged`` for every live execution
        this host holds; ids carry the revision, so a change relayed by two hosts counts once."""
        from triggerbus.contracts.messages import FlowDataChanged, flow_data_decoder

        while True:
            data, _ = await subscription.next()
            try:
                update = decode(flow_data_decoder, data)
            except WireError as exc:
                log.warning("flow_data_update_refused", reason=exc.reason)
                continue
            if not update.emit:
                continue
            live = [e for e, (snap, _) in self._cache.items() if snap.lifecycle != "closed"]
            for execution_id in live:
                changed = FlowDataChanged(
                    id=f"{execution_id}:flow_data:{update.revision}",
                    execution_id=execution_id,
                    key=update.key,
                    value=update.value,
                    revision=update.revision,
                    data=update.data,
                    sent_at=self._clock(),
                )
                subject = self._bus.subjects.mailbox(self._flow.name, execution_id)
                try:
                    await self._bus.publish(subject, encode(changed), msg_id=changed.id)
                except Exception:
                    # One execution's delivery fails alone; the others still get the change.
                    log.exception("flow_data_relay_failed", execution_id=execution_id)

    async def take(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        on_stored: Callable[[], None] | None = None,
    ) -> bool:
        """Apply a chunk outcome from this process's chunk host as if the mailbox had
        delivered it (actors/hand_off.py says why). True once its transition is stored and
        its outbox sent (or it turned out a duplicate, or was refused and dead-lettered);
        False when the caller must publish it to the mailbox instead. ``on_stored`` is called
        once the transition is stored, before its outbox is sent."""
        group = self._group
        if group is None or self._stopping.is_set():
            return False
        hand_off = HandOff(subject, data, headers, on_stored)
        try:
            self._enqueue(hand_off, group, hand_off.release)
        except RuntimeError:  # the host's task group is shutting down after a failure
            return False
        taken = await hand_off.taken
        self._handed_off += taken
        return taken

    async def _consume(self, consumer: PullConsumer, group: asyncio.TaskGroup) -> None:
        def dispatch(delivery: Delivery, permits: Permits) -> None:
            self._enqueue(delivery, group, permits.release)

        await consumer.deliver(self._capacity, self._stopping, dispatch)

    def _enqueue(
        self, delivery: Delivery | HandOff, group: asyncio.TaskGroup, done: Callable[[], None]
    ) -> None:
        execution_id = self._bus.subjects.execution_id_of(delivery.subject)
        lane = self._lanes.get(execution_id)
        if lane is None:
            lane = asyncio.Queue()
            # The host's own context, not the caller's: a hand-off's chunk host has its log
            # context bound, which must not follow the lane's later messages.
            context = self._context.copy() if self._context is not None else None
            group.create_task(self._run_lane(execution_id, lane), context=context)
            self._lanes[execution_id] = lane  # only once a task runs it
        lane.put_nowait((delivery, done))

    async def _run_lane(self, execution_id: str, lane: asyncio.Queue[_Queued]) -> None:
        try:
            while not lane.empty():
                delivery, done = lane.get_nowait()
                self._in_flight += 1
                try:
                    with bound_log_context(flow=self._flow.name, execution_id=execution_id):
                        await self._handle(execution_id, delivery)
                except Exception:
                    # One message fails alone: it is handed back for a prompt retry. The cached
                    # snapshot may be ahead of what was published (a write whose outbox did not
                    # go out), so the next message reloads it and re-performs its outbox.
                    log.exception("mailbox_message_crashed", subject=delivery.subject)
                    self._cache.pop(execution_id, None)
                    await _hand_back(delivery, self._policy.ack_wait)
                finally:
                    self._in_flight -= 1
                    done()
        finally:
            self._lanes.pop(execution_id, None)
            while not lane.empty():  # only when cancelled: give back what never ran
                _, done = lane.get_nowait()
                done()

    # --- one message ---------------------------------------------------------------------------

    async def _handle(self, execution_id: str, delivery: Delivery | HandOff) -> None:
        try:
            message = decode(mailbox_decoder, delivery.data)
        except WireError as exc:
            await self._refuse(delivery, exc.reason, reply_to=_loose_reply_to(delivery.data))
            return
        if not EXECUTION_ID.fullmatch(execution_id):
            await self._refuse(
                delivery,
                f"execution id {execution_id!r} must be 1-200 letters, digits, '-' or '_'",
                reply_to=getattr(message, "reply_to", None),
            )
            return
        if message.execution_id != execution_id:
            await self._refuse(
                delivery,
                f"execution_id {message.execution_id!r} does not match the subject's "
                f"{execution_id!r}",
                reply_to=getattr(message, "reply_to", None),
            )
            return
        if isinstance(message, StartExecution) and message.fingerprint not in (
            "",
            self._flow.fingerprint,
        ):
            await self._mismatch(delivery, message, message.fingerprint)
            return
        observed = MailboxInput(self._flow.name, execution_id, delivery.headers, message)
        with self._telemetry.mailbox(observed) as handling:
            await self._transition(execution_id, delivery, message, handling)

    async def _transition(
        self,
        execution_id: str,
        delivery: Delivery | HandOff,
        message: MailboxMessage,
        handling: Handling,
    ) -> None:
        # A start for an execution this host has not seen is nearly always a new one: write it
        # without reading first (the write is a create, so an existing one fails it and is read).
        assume_new = isinstance(message, StartExecution) and execution_id not in self._cache
        for _ in range(MAX_CAS_RETRIES):
            loaded = None if assume_new else await self._snapshot(execution_id)
            snapshot, revision = loaded if loaded else (None, None)
            if snapshot is not None and snapshot.fingerprint != self._flow.fingerprint:
                await self._mismatch(delivery, message, snapshot.fingerprint)
                return
            transition = apply(self._flow.index, snapshot, message, now=self._clock())
            if transition.rejected:
                await self._refuse(
                    delivery,
                    transition.rejected,
                    reply_to=getattr(message, "reply_to", None),
                    error_type=transition.rejected_as,
                )
                return
            if transition.deferred:
                # A chunk's outcome overtook effects its attempt sent (a redelivered state
                # write, or one another host is applying): try again shortly, from the store.
                log.debug("chunk_outcome_deferred", message_id=message.id)
                self._cache.pop(execution_id, None)
                await delivery.nak(delay=OVERTAKE_RETRY_DELAY)
                return
            if transition.duplicate:
                await self._on_duplicate(message, loaded)
                for command in transition.outbox:
                    if isinstance(command, SendReply):  # the actor's answer to a repeat
                        await self._reply(command.reply_to, command.message)
                await delivery.ack()
                return
            transition = _traced(handling, snapshot, transition)
            try:
                try:
                    stored = await self._store(execution_id, transition, revision)
                except PayloadTooLargeError as exc:
                    transition = self._oversized(snapshot, message, handling, exc)
                    if transition.rejected:
                        await self._refuse(delivery, transition.rejected,
                                           reply_to=getattr(message, "reply_to", None),
                                           error_type=transition.rejected_as)  # fmt: skip
                        return
                    stored = await self._store(execution_id, transition, revision)
            except RevisionConflictError:
                if not assume_new:  # a create that finds the execution is no conflict
                    self._conflicts += 1
                assume_new = False
                self._cache.pop(execution_id, None)
                continue
            if isinstance(delivery, HandOff):
                delivery.stored()
            if self._after_store is not None:
                self._after_store()  # fault injection: the window between write and publish
            await self._perform(execution_id, transition.outbox, handling, revision=stored)
            await delivery.ack()
            self._applied += 1
            return
        raise RevisionConflictError(
            f"gave up after {MAX_CAS_RETRIES} conflicting writes", key=execution_id
        )

    def _oversized(
        self,
        snapshot: Snapshot | None,
        message: MailboxMessage,
        handling: Handling,
        exc: PayloadTooLargeError,
    ) -> Transition:
        """The transition to store when ``message``'s made a snapshot too large for the bus:
        retried, it would fail the same way forever, so the execution fails and closes."""
        reason = (
            f"applying {type(message).__name__} {message.id!r} made the execution's snapshot "
            "larger than the NATS server accepts (its max_payload): the execution's state, or "
            "its fan-out, outgrew what one message can carry"
        )
        log.error("execution_snapshot_too_large", message_id=message.id, error=str(exc),
                  hint="keep large values out of execution state; check the flow for a "
                  "chunk that triggers itself")  # fmt: skip
        transition = fail_oversized(
            self._flow.index, snapshot, message, now=self._clock(), reason=reason
        )
        return transition if transition.rejected else _traced(handling, snapshot, transition)

    async def _snapshot(self, execution_id: str) -> tuple[Snapshot, int] | None:
        cached = self._cache.get(execution_id)
        if cached is not None:
            self._cache.move_to_end(execution_id)
            return cached
        key = self._bus.subjects.execution_key(self._flow.name, execution_id)
        loaded = await self._bus.load(key)
        if loaded is None:
            return None
        snapshot = decode(snapshot_decoder, loaded[0])
        # Cold load: the last writer may have died before publishing its outbox. Publishing
        # again is safe: every message keeps its id.
        if snapshot.outbox.commands:
            replaying = self._telemetry.replay(self._flow.name, snapshot)
            await self._perform(
                execution_id, snapshot.outbox.commands, replaying, replay=True, revision=loaded[1]
            )
        self._remember(execution_id, snapshot, loaded[1])
        return snapshot, loaded[1]

    async def _store(self, execution_id: str, transition: Transition, revision: int | None) -> int:
        """Write the transition's snapshot; returns its new revision."""
        assert transition.snapshot is not None
        key = self._bus.subjects.execution_key(self._flow.name, execution_id)
        new_revision = await self._bus.store(key, encode(transition.snapshot), revision=revision)
        if transition.snapshot.lifecycle == "closed" or _parked(transition.snapshot):
            # Closed, or waiting on an interrupt with nothing in flight: KV is the truth and
            # no process keeps it in memory; a resume (any time, any host) loads it cold.
            self._cache.pop(execution_id, None)
        else:
            self._remember(execution_id, transition.snapshot, new_revision)
        return new_revision

    def _remember(self, execution_id: str, snapshot: Snapshot, revision: int) -> None:
        self._cache[execution_id] = (snapshot, revision)
        self._cache.move_to_end(execution_id)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _on_duplicate(
        self, message: MailboxMessage, loaded: tuple[Snapshot, int] | None
    ) -> None:
        log.debug("duplicate_message", message_id=message.id)
        if loaded is not None and loaded[0].outbox.message_id == message.id:
            snapshot, revision = loaded
            replaying = self._telemetry.replay(self._flow.name, snapshot)
            await self._perform(
                snapshot.execution_id,
                snapshot.outbox.commands,
                replaying,
                replay=True,
                revision=revision,
            )

    # --- the outbox ----------------------------------------------------------------------------

    async def _perform(
        self,
        execution_id: str,
        commands: list[OutboxCommand],
        handling: Handling,
        *,
        replay: bool = False,
        revision: int = 0,
    ) -> None:
        """Publish a stored transition's messages; ``revision`` is the stored snapshot's."""
        subjects = self._bus.subjects
        flow = self._flow.name
        sends: list[tuple[str, Any]] = []
        observed: list[Observe] = []
        after: list[OutboxCommand] = []
        for command in commands:
            match command:
                case ScheduleTimer():
                    sends.append(self._timer(execution_id, command))
                case Invoke(chunk_token=token, message=invoke):
                    sends.append((subjects.run(flow, token), invoke))
                case AppendStream(message=item, flow=stream_flow):
                    # A sub-flow's items go to its parent's stream (``stream_flow`` is set).
                    sends.append((subjects.stream(stream_flow or flow, item.execution_id), item))
                case SendMailbox(flow=other_flow, message=message):
                    sends.append((subjects.mailbox(other_flow, message.execution_id), message))
                case Observe():
                    if not replay:
                        observed.append(command)
                case _:
                    after.append(command)
        # The transition is stored: observe it before what it sends can be handled (an
        # invoked chunk may start before its invocation's ack is in).
        for command in observed:
            self._observe(execution_id, command.name, command.attributes, handling)
        if sends:
            await self._send(handling, sends)
        for command in after:
            match command:
                case SendReply(reply_to=reply_to, message=reply):
                    await self._reply(reply_to, reply, handling)
                case NotifyClosed(message=closed):
                    closed = msgspec.structs.replace(closed, revision=revision)
                    subject = subjects.closed(flow, execution_id)
                    with handling.publish(PublishInput(flow, subject, closed)) as headers:
                        await self._bus.publish_core(subject, encode(closed), headers=headers)

    async def _send(self, handling: Handling, sends: list[tuple[str, Any]]) -> None:
        """Publish ``sends`` (subject, message) without waiting between them; return when
        every one is stored. A fan-out's invocations go out in one burst, with no task each."""
        with contextlib.ExitStack() as spans:
            pending: list[PipelinedPublish] = []
            for subject, message in sends:
                headers = spans.enter_context(
                    handling.publish(PublishInput(self._flow.name, subject, message))
                )
                pending.append(
                    await self._bus.publish_pipelined(
                        subject, encode(message), msg_id=message.id, headers=headers
                    )
                )
            for publish in pending:
                await publish.settled()

    async def _reply(self, reply_to: str, reply: Reply, handling: Handling | None = None) -> None:
        if handling is None:
            await self._bus.publish_core(reply_to, encode(reply))
            return
        with handling.publish(PublishInput(self._flow.name, reply_to, reply)) as headers:
            await self._bus.publish_core(reply_to, encode(reply), headers=headers)

    def _observe(
        self, execution_id: str, name: str, attributes: dict[str, Any], handling: Handling
    ) -> None:
        handling.observe(name, attributes)
        if self._on_observe is not None:
            self._on_observe(name, execution_id, attributes)

    # --- timers --------------------------------------------------------------------------------

    def _timer(self, execution_id: str, command: ScheduleTimer) -> tuple[str, TimerFired]:
        """The timer's message and subject. It is stored in JetStream, not kept in memory:
        any host fires it when it is due, so it outlives the process that set it (and a
        restart of the server)."""
        fired = TimerFired(
            id=f"{execution_id}:timer:{command.timer}:{command.generation}",
            execution_id=execution_id,
            timer=command.timer,
            generation=command.generation,
            due_at=command.due_at or self._clock() + command.delay,
        )
        return self._bus.subjects.timer(self._flow.name, execution_id), fired

    async def _run_timers(self, consumer: PullConsumer) -> None:
        """Move each timer into its execution's mailbox when it is due; one that is not yet
        due is handed back to the server with a nak delayed until then."""
        while not self._stopping.is_set():
            for delivery in await consumer.fetch_until(TIMER_BATCH, self._stopping):
                try:
                    await self._timer_delivered(delivery)
                except Exception:
                    log.exception("timer_delivery_crashed", subject=delivery.subject)
                    await _hand_back(delivery, TIMER_POLICY.ack_wait)

    async def _timer_delivered(self, delivery: Delivery) -> None:
        try:
            fired = decode(mailbox_decoder, delivery.data)
        except WireError as exc:
            await self._refuse(delivery, exc.reason, reply_to=None)
            return
        if not isinstance(fired, TimerFired):
            await self._refuse(delivery, f"a {type(fired).__name__} is not a timer", reply_to=None)
            return
        remaining = fired.due_at - self._clock()
        if remaining > TIMER_RESOLUTION:
            await delivery.nak(delay=remaining)
            return
        mailbox = self._bus.subjects.mailbox(self._flow.name, fired.execution_id)
        await self._bus.publish(
            mailbox, encode(msgspec.structs.replace(fired, sent_at=self._clock())), msg_id=fired.id
        )
        await delivery.ack()
        self._timers += 1

    # --- refusals --------------------------------------------------------------------------------

    async def _refuse(
        self,
        delivery: Delivery | HandOff,
        reason: str,
        *,
        reply_to: str | None,
        error_type: str = CONTRACT_ERROR,
    ) -> None:
        """Bad input: answer where someone waits, dead-letter it with the reason, settle it."""
        self._dead_lettered += 1
        log.error(
            "mailbox_message_refused",
            reason=reason,
            error_type=error_type,
            subject=delivery.subject,
        )
        if reply_to:
            error = ErrorInfo(error_type=error_type, message=reason)
            await self._reply(reply_to, Reply(ok=False, error=error))
        letter = DeadLetter(
            subject=delivery.subject,
            reason=reason,
            data=delivery.data.decode("utf-8", errors="replace"),
            headers=delivery.headers,
            execution_id=self._bus.subjects.execution_id_of(delivery.subject),
        )
        await self._bus.publish(
            self._bus.subjects.dead_letter(self._flow.name, MAILBOX_DLQ), encode(letter)
        )
        await delivery.ack()

    async def _mismatch(
        self, delivery: Delivery | HandOff, message: MailboxMessage, expected: str
    ) -> None:
        log.error(
            "fingerprint_mismatch",
            expected=expected,
            actual=self._flow.fingerprint,
            hint="this process defines the flow differently from the execution's; deploy the "
            "same flow module everywhere",
        )
        if delivery.num_delivered < MISMATCH_REDELIVERIES:
            await delivery.nak(delay=mismatch_delay(delivery.num_delivered))
            return
        await self._refuse(
            delivery,
            f"flow fingerprint mismatch: execution has {expected}, "
            f"this host {self._flow.fingerprint}",
            reply_to=getattr(message, "reply_to", None),
        )


_Queued = tuple[Delivery | HandOff, Callable[[], None]]
"""A lane's message and what to call once it is handled: a delivery's permit release, or a
hand-off's release (which gives back one left unsettled)."""


def _traced(handling: Handling, before: Snapshot | None, transition: Transition) -> Transition:
    """``transition`` with the snapshot tracing stores (its trace context recorded in it)."""
    assert transition.snapshot is not None
    traced = handling.transition(before, transition.snapshot)
    if traced is transition.snapshot:  # untraced, or nothing to record
        return transition
    return transition.with_snapshot(traced)


async def _hand_back(delivery: Delivery | HandOff, ack_wait: float) -> None:
    """Ask for a redelivery soon (backing off with each attempt) rather than after ack_wait;
    if even that fails, ack_wait brings it back."""
    try:
        await delivery.nak(delay=min(ack_wait, 0.5 * delivery.num_delivered))
    except Exception as exc:
        log.warning("mailbox_message_nak_failed", subject=delivery.subject, error=repr(exc))


def _parked(snapshot: Snapshot) -> bool:
    """Waiting for ``continue_with`` and nothing else: no node in flight, nothing queued."""
    return snapshot.status == "waiting" and not snapshot.nodes and not snapshot.queue


def _loose_reply_to(data: bytes) -> str | None:
    """Find a reply subject in a message too broken to decode, so its sender hears why."""
    try:
        value = _loose.decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(value, dict):
        reply_to = value.get("reply_to")
        if isinstance(reply_to, str) and reply_to and " " not in reply_to:
            return reply_to
    return None
