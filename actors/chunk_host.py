"""The chunk actor's host: competing consumers on each chunk's durable pull consumer.

Stateless: every replica in every process binds to the same durable consumer, so adding a
process adds capacity. An invocation is acked only after everything the handler did (state
writes, emits, stream items, and finally its result or error) is stored on the bus; a process
that dies mid-chunk leaves the invocation to be redelivered to another replica.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from triggerbus._sendable import JSON_ABLE, encode_sent
from triggerbus.actors._lifecycle import HostLifecycle
from triggerbus.actors.hosted import MISMATCH_REDELIVERIES, HostedFlow, mismatch_delay
from triggerbus.actors.runtime_data import TriggerFlowRuntimeData
from triggerbus.bus.jetstream import MSG_ID_HEADER, Bus, Delivery, PipelinedPublish, PullConsumer
from triggerbus.bus.provision import ConsumerPolicy
from triggerbus.bus.pull import Permits
from triggerbus.bus.replies import ReplyRouter
from triggerbus.contracts.codec import NotSerializable, WireError, decode, encode, encode_value
from triggerbus.contracts.messages import (
    ChunkCompleted,
    ChunkFailed,
    DeadLetter,
    EmitEvent,
    InvokeChunk,
    PauseForInterrupt,
    Reply,
    StateWritten,
    StreamEnded,
    StreamItem,
    invoke_decoder,
    reply_decoder,
)
from triggerbus.errors import LifecycleError, chunk_failed_class
from triggerbus.observability.logging import bound_log_context
from triggerbus.observability.telemetry import (
    Attempt,
    AttemptInput,
    DeadLetterInput,
    PublishInput,
    Telemetry,
    current,
)

if TYPE_CHECKING:
    from triggerbus.actors.execution_host import ExecutionHost

log = structlog.get_logger()

PAUSE_ANSWER_WAIT = 10.0
"""Seconds a pausing chunk waits for the actor's answer before sending the pause again."""
CRASH_REDELIVERIES = 5
"""Deliveries beyond a chunk's attempts (``retries + 1``) allowed for workers that died
mid-chunk; past them the invocation is dead-lettered and the execution fails, so a chunk that
kills its worker every time cannot loop forever."""


@dataclass(frozen=True)
class ChunkHostStatistics:
    in_flight: int
    completed: int
    failed: int
    dead_lettered: int
    redeliveries: int


class ChunkHost(HostLifecycle):
    """Hosts replicas of chosen chunks of one flow until shut down.

    Args:
        bus: An open bus.
        flow: The flow whose chunks to host.
        replies: The process's reply router, for awaited emits.
        chunks: Names of the chunks to host; ``None`` hosts every chunk.
        concurrency: How many invocations of each chunk run at once in this process.
        consumer_policy: Ack wait, redelivery bound and backoff of the chunk consumers.
        telemetry: Traces, metrics and Event Center records around each attempt and publish;
            the process's (configured by ``OTEL_*``) by default.
        executions: The execution host of this process for the same flow, if any: outcomes
            are handed to it directly instead of through the mailbox (actors/hand_off.py).
    """

    def __init__(
        self,
        bus: Bus,
        flow: HostedFlow,
        replies: ReplyRouter,
        *,
        chunks: list[str] | None = None,
        concurrency: int = 16,
        consumer_policy: ConsumerPolicy | None = None,
        telemetry: Telemetry | None = None,
        executions: ExecutionHost | None = None,
    ) -> None:
        unknown = sorted(set(chunks or []) - set(flow.handlers))
        if unknown:
            raise LifecycleError(
                f"flow {flow.name!r} has no chunk named {', '.join(map(repr, unknown))}; "
                f"its chunks are {sorted(flow.handlers)}"
            )
        self._bus = bus
        self._flow = flow
        self._replies = replies
        self._chunks = list(flow.handlers) if chunks is None else list(chunks)
        self._concurrency = max(1, concurrency)
        self._policy = consumer_policy or ConsumerPolicy()
        self._telemetry = telemetry or current()
        self._executions = executions
        self._consumer_names: dict[str, str] = {}
        super().__init__()
        self._in_flight = 0
        self._completed = 0
        self._failed = 0
        self._dead_lettered = 0
        self._redeliveries = 0

    @property
    def chunks(self) -> list[str]:
        return list(self._chunks)

    def statistics(self) -> ChunkHostStatistics:
        return ChunkHostStatistics(
            in_flight=self._in_flight,
            completed=self._completed,
            failed=self._failed,
            dead_lettered=self._dead_lettered,
            redeliveries=self._redeliveries,
        )

    async def run(self) -> None:
        """Consume until ``shutdown()``; then let running invocations finish."""
        self._claim_run()
        consumers = [await self._bind(chunk) for chunk in self._chunks]
        self._ready.set()
        try:
            async with asyncio.TaskGroup() as group:
                for chunk, consumer in zip(self._chunks, consumers, strict=True):
                    group.create_task(self._consume(chunk, consumer, group))
                backlog = {
                    chunk: (self._consumer_names[chunk], consumer.pending)
                    for chunk, consumer in zip(self._chunks, consumers, strict=True)
                }
                group.create_task(
                    self._telemetry.watch_backlog(self._flow.name, backlog, self._stopping)
                )
        finally:
            for consumer in consumers:
                await consumer.close()

    async def _bind(self, chunk: str) -> PullConsumer:
        spec = self._flow.index.chunks[chunk]
        subjects = self._bus.subjects
        self._consumer_names[chunk] = subjects.run_consumer(self._flow.name, spec.token)
        return await self._bus.pull_consumer(
            stream=subjects.run_stream,
            durable=self._consumer_names[chunk],
            filter_subject=subjects.run(self._flow.name, spec.token),
            policy=self._policy,
        )

    async def _consume(self, chunk: str, consumer: PullConsumer, group: asyncio.TaskGroup) -> None:
        def dispatch(delivery: Delivery, permits: Permits) -> None:
            group.create_task(self._handle_then_release(chunk, delivery, permits))

        await consumer.deliver(self._concurrency, self._stopping, dispatch)

    async def _handle_then_release(self, chunk: str, delivery: Delivery, permits: Permits) -> None:
        self._in_flight += 1
        try:
            await self._handle(chunk, delivery)
        except Exception:
            # One message fails alone: handed back, it is redelivered soon (backing off with
            # each attempt); if even the nak fails, ack_wait brings it back.
            log.exception("chunk_delivery_crashed", chunk=chunk, subject=delivery.subject)
            try:
                await delivery.nak(delay=min(self._policy.ack_wait, 0.5 * delivery.num_delivered))
            except Exception as exc:
                log.warning("chunk_delivery_nak_failed", subject=delivery.subject, error=repr(exc))
        finally:
            self._in_flight -= 1
            permits.release()

    async def _handle(self, chunk: str, delivery: Delivery) -> None:
        try:
            invocation = decode(invoke_decoder, delivery.data)
        except WireError as exc:
            await self._dead_letter(delivery, chunk, exc.reason)
            await delivery.ack()
            return
        if delivery.num_delivered > 1:
            self._redeliveries += 1
        with bound_log_context(
            flow=self._flow.name,
            execution_id=invocation.execution_id,
            chunk=invocation.chunk,
            step=invocation.step,
            attempt=delivery.num_delivered,
        ):
            if invocation.fingerprint != self._flow.fingerprint or invocation.chunk != chunk:
                await self._refuse_mismatch(chunk, delivery, invocation)
                return
            attempt = AttemptInput(
                flow=self._flow.name,
                chunk=chunk,
                subject=delivery.subject,
                consumer=self._consumer_names.get(chunk, chunk),
                headers=delivery.headers,
                invocation=invocation,
                attempt=delivery.num_delivered,
            )
            with self._telemetry.attempt(attempt) as observed:
                await self._run(invocation, delivery, observed)

    async def _run(self, invocation: InvokeChunk, delivery: Delivery, observed: Attempt) -> None:
        spec = self._flow.index.chunks[invocation.chunk]
        attempt = delivery.num_delivered
        effects: list[str] = []  # mailbox messages the handler sent without waiting
        if attempt > spec.retries + 1 + CRASH_REDELIVERIES:
            outcome: _Returned | _Raised = _Raised(
                "ChunkRedeliveredError",
                f"chunk {invocation.chunk!r} was delivered {attempt} times without an outcome "
                "(each time its worker died, or its host failed handling it: see "
                "chunk_delivery_crashed in the workers' logs); giving up",
                "",
            )
        else:
            port = _Port(self._bus, self._replies, self._flow.name, observed)
            if invocation.stream_to is not None:  # a sub-flow's chunk: items go to the parent
                port.stream_target = invocation.stream_to.stream_target()
            resources = self._flow.resources_for(invocation.execution_id, invocation.resources)
            data = TriggerFlowRuntimeData(invocation, port, resources=resources)
            handler = self._flow.handlers[invocation.chunk]
            async with _heartbeat(delivery, self._policy.ack_wait):
                outcome = await _call(handler, data, port, time_limit=spec.timeout)
                await port.drain()
            effects = port.effects
            if isinstance(outcome, _Raised) and attempt <= spec.retries:
                # Attempts remain: hand it back for later. Its effects were sent with ids
                # that the next attempt repeats, so they are applied once.
                delay = spec.backoff[min(attempt, len(spec.backoff)) - 1] if spec.backoff else 0.0
                log.warning(
                    "chunk_attempt_retrying",
                    error_type=outcome.error_type,
                    error=outcome.message,
                    delay=delay,
                    retries=spec.retries,
                )
                observed.finished(error_type=outcome.error_type, message=outcome.message)
                await delivery.nak(delay=delay)
                return
        if isinstance(outcome, _Raised) and (spec.retries or attempt > spec.retries + 1):
            # Retries spent (or the worker kept dying): the invocation goes to the dead
            # letters with its error, then the execution hears of the failure.
            await self._dead_letter(
                delivery,
                invocation.chunk,
                f"retries exhausted after {attempt} attempts: {outcome.error_type}: "
                f"{outcome.message}",
                invocation,
            )
        mailbox = self._bus.subjects.mailbox(self._flow.name, invocation.execution_id)
        message = _outcome_message(invocation, outcome, effects)
        finished = False

        def finish() -> None:
            # Once: when the transition is stored if handed off (the Event Center then sees
            # the attempt end before what its outcome caused), else after the ack below.
            nonlocal finished
            if not finished:
                finished = True
                self._finished(observed, message)

        with observed.publish(PublishInput(self._flow.name, mailbox, message)) as headers:
            data = encode(message)
            # An outcome whose effects went through the mailbox follows them there, in order.
            if effects or not await self._hand_off(
                delivery, mailbox, data, message.id, headers, finish
            ):
                await self._bus.publish(mailbox, data, msg_id=message.id, headers=headers)
        await delivery.ack()
        finish()

    def _finished(self, observed: Attempt, message: ChunkCompleted | ChunkFailed) -> None:
        if isinstance(message, ChunkCompleted):
            self._completed += 1
            observed.finished()
        else:
            self._failed += 1
            observed.finished(error_type=message.error_type, message=message.message)

    async def _hand_off(
        self,
        delivery: Delivery,
        mailbox: str,
        data: bytes,
        message_id: str,
        headers: dict[str, str] | None,
        on_stored: Callable[[], None],
    ) -> bool:
        """Whether this process's execution host took the outcome (stored its transition).

        The invocation stays unacked until then, so it keeps its heartbeat: a transition held
        up longer than ``ack_wait`` (a busy lane, a bus retrying) must not get it redelivered.
        """
        if self._executions is None:
            return False
        headers = {**(headers or {}), MSG_ID_HEADER: message_id}
        async with _heartbeat(delivery, self._policy.ack_wait):
            return await self._executions.take(mailbox, data, headers, on_stored)

    async def _refuse_mismatch(
        self, chunk: str, delivery: Delivery, invocation: InvokeChunk
    ) -> None:
        log.error(
            "fingerprint_mismatch",
            expected=invocation.fingerprint,
            actual=self._flow.fingerprint,
            hint="this process defines the flow differently from the process that started the "
            "execution; deploy the same flow module everywhere",
        )
        if delivery.num_delivered < MISMATCH_REDELIVERIES:
            await delivery.nak(delay=mismatch_delay(delivery.num_delivered))
            return
        await self._dead_letter(delivery, chunk, "fingerprint mismatch", invocation)
        failed = ChunkFailed(
            id=f"{invocation.execution_id}:{invocation.step}:done",
            execution_id=invocation.execution_id,
            step=invocation.step,
            error_type="FingerprintMismatchError",
            message=f"no process with flow fingerprint {invocation.fingerprint} took the chunk",
        )
        mailbox = self._bus.subjects.mailbox(self._flow.name, invocation.execution_id)
        await self._bus.publish(mailbox, encode(failed), msg_id=failed.id)
        await delivery.ack()

    async def _dead_letter(
        self, delivery: Delivery, chunk: str, reason: str, invocation: InvokeChunk | None = None
    ) -> None:
        self._dead_lettered += 1
        self._telemetry.dead_lettered(
            DeadLetterInput(
                flow=self._flow.name,
                chunk=chunk,
                reason=reason,
                subject=delivery.subject,
                execution_id=invocation.execution_id if invocation else "",
                step=invocation.step if invocation else None,
            )
        )
        letter = DeadLetter(
            subject=delivery.subject,
            reason=reason,
            data=delivery.data.decode("utf-8", errors="replace"),
            headers=delivery.headers,
            chunk=chunk,
            execution_id=invocation.execution_id if invocation else "",
        )
        token = self._flow.index.chunks[chunk].token if chunk in self._flow.index.chunks else chunk
        subject = self._bus.subjects.dead_letter(self._flow.name, token)
        await self._bus.publish(subject, encode(letter))


# --- running a handler ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Returned:
    value: Any


@dataclass(frozen=True)
class _Raised:
    error_type: str
    message: str
    traceback: str


async def _call(
    handler: Callable[..., Any],
    data: TriggerFlowRuntimeData,
    port: _Port,
    *,
    time_limit: float | None = None,
) -> _Returned | _Raised:
    deadline = asyncio.timeout(time_limit) if time_limit is not None else None
    try:
        try:
            if deadline is None:
                value = await _run_handler(handler, data)
            else:
                async with deadline:
                    value = await _run_handler(handler, data)
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise  # the handler's own TimeoutError, reported as it is
            return _Raised(
                "TimeoutError",
                f"chunk {data.chunk_name!r} did not finish within its timeout of {time_limit} s",
                "",
            )
        encode_value(value)
    except NotSerializable as exc:
        return _Raised(
            "ValueNotSerializableError",
            f"chunk {data.chunk_name!r} returned a value of type {type(value).__name__} that "
            f"cannot be sent over the bus ({exc}); return JSON-able data ({JSON_ABLE})",
            "",
        )
    except Exception as exc:
        return _Raised(type(exc).__name__, str(exc), traceback.format_exc())
    return _Returned(value)


async def _run_handler(handler: Callable[..., Any], data: TriggerFlowRuntimeData) -> Any:
    if inspect.iscoroutinefunction(handler):
        return await handler(data)
    # A sync handler's thread cannot be stopped: on timeout the attempt fails and the thread
    # runs on to its end, its late effects ignored or applied as the execution stands.
    value = await asyncio.to_thread(handler, data)
    if inspect.isawaitable(value):
        value = await value
    return value


def _outcome_message(
    invocation: InvokeChunk, outcome: _Returned | _Raised, effects: list[str]
) -> ChunkCompleted | ChunkFailed:
    done_id = f"{invocation.execution_id}:{invocation.step}:done"
    if isinstance(outcome, _Returned):
        return ChunkCompleted(
            id=done_id,
            execution_id=invocation.execution_id,
            step=invocation.step,
            result=outcome.value,
            sent_at=time.time(),
            effects=effects,
        )
    return ChunkFailed(
        id=done_id,
        execution_id=invocation.execution_id,
        step=invocation.step,
        error_type=outcome.error_type,
        message=outcome.message,
        traceback=outcome.traceback,
        sent_at=time.time(),
        effects=effects,
    )


class _heartbeat:
    """Tells JetStream the invocation is still being worked on, so a slow chunk is not
    redelivered while its worker is alive.

    A timer, not a task: nearly every attempt ends before the first beat, and a task per
    attempt cost its creation, a first run and a cancellation awaited on the way out, on the
    path from one step to the next.
    """

    def __init__(self, delivery: Delivery, ack_wait: float) -> None:
        self._delivery = delivery
        self._interval = max(0.5, ack_wait / 3)
        self._timer: asyncio.TimerHandle | None = None
        self._beating: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._due)

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        beating, self._beating = self._beating, None
        if beating is not None and not beating.done():
            beating.cancel()
            try:
                await beating
            except asyncio.CancelledError:
                pass

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        if self._beating is None or self._beating.done():  # one beat at a time
            self._beating = loop.create_task(self._beat())
        self._timer = loop.call_later(self._interval, self._due)

    async def _beat(self) -> None:
        try:
            await self._delivery.in_progress()
        except Exception:
            log.warning("heartbeat_failed", subject=self._delivery.subject)


# --- the port: a handler's effects, in order ------------------------------------------------------

Outgoing = EmitEvent | StateWritten | StreamItem | StreamEnded | PauseForInterrupt


STREAM_WINDOW = 128
"""Stream items a chunk may have sent but not yet seen stored."""


class _ItemSend:
    """A prepared stream item. Called through the port's chain it is sent in its turn; sent
    directly when nothing is queued ahead of it."""

    def __init__(
        self,
        send: Callable[[_ItemSend], Awaitable[None]],
        start: Callable[[], Awaitable[PipelinedPublish]],
    ) -> None:
        self._send = send
        self.start = start

    def __call__(self) -> Awaitable[None]:
        return self._send(self)


class _Port:
    """Sends a handler's effects in the order it made them.

    Sync calls from an async handler cannot wait, so they go into a chain that later awaited
    sends and the final result queue behind; ``drain()`` waits for the whole chain.
    """

    def __init__(self, bus: Bus, replies: ReplyRouter, flow: str, observed: Attempt) -> None:
        self._bus = bus
        self._replies = replies
        self._flow = flow
        self._observed = observed
        self._loop = asyncio.get_running_loop()
        self._tail: asyncio.Future[None] | None = None
        self.stream_target: tuple[str, str] | None = None
        # Stream items sent in order whose acks are collected later (see _send_item).
        self._items: collections.deque[PipelinedPublish] = collections.deque()
        self.effects: list[str] = []

    @property
    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def run_blocking(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def send_nowait(self, message: Outgoing) -> None:
        # Prepared (and so refused, if it must be) before it is named as an effect: an
        # outcome naming a message that was never sent would wait for it forever.
        prepared = self._prepare(message)
        self._note_effect(message)
        self._chain(prepared)

    async def send(self, message: Outgoing) -> None:
        prepared = self._prepare(message)
        self._note_effect(message)
        if isinstance(prepared, _ItemSend) and (self._tail is None or self._tail.done()):
            # Nothing is queued ahead of it: send it now, without a chain link, a task or a
            # wait for its ack, so a burst of items goes out in a few socket writes.
            await self._send_item(prepared)
            return
        await self._chain(prepared)

    async def request(self, message: EmitEvent | StateWritten) -> Any:
        reply_to, future = self._replies.open()
        addressed = _with_reply(message, reply_to)
        try:
            # A repeated attempt sends the same message id; JetStream would drop it unanswered
            # within its duplicate window, so the transport id is this send's own. The actor
            # still recognises the message id and answers without applying it again.
            transport_id = f"{message.id}@{uuid.uuid4().hex[:12]}"
            await self._chain(self._prepare(addressed, msg_id=transport_id))
            reply = decode(reply_decoder, await future)
        finally:
            self._replies.discard(reply_to)
        if not reply.ok and reply.error is not None:
            # The handler's own type when it is a built-in, as Agently raises it at the emitter.
            raise chunk_failed_class(reply.error.error_type)(
                f"the execution failed while this emit was in flight: chunk "
                f"{reply.error.chunk!r} raised {reply.error.error_type}: {reply.error.message}",
                flow=self._flow,
                execution_id=message.execution_id,
                chunk=reply.error.chunk,
                error_type=reply.error.error_type,
                error_message=reply.error.message,
                remote_traceback=reply.error.traceback,
            )
        return reply.value

    async def ask(self, message: PauseForInterrupt) -> Reply:
        """Send a pause and wait for the actor's answer.

        Each send gets an id of its own: a redelivered attempt repeats its effects' ids, and
        JetStream would drop this one unanswered. The actor recognises a repeated pause by its
        interrupt id and step and answers it again, so a send whose answer is lost (a host
        that died after storing it) is simply sent again.
        """
        while True:
            reply_to, future = self._replies.open()
            addressed = msgspec.structs.replace(
                message, id=f"{message.id}:{uuid.uuid4().hex[:12]}", reply_to=reply_to
            )
            try:
                await self._chain(self._prepare(addressed))
                async with asyncio.timeout(PAUSE_ANSWER_WAIT):
                    return decode(reply_decoder, await future)
            except TimeoutError:
                log.warning("pause_unanswered", interrupt=message.interrupt_id)
            finally:
                self._replies.discard(reply_to)

    def change_flow_data(self, op: str, key: str, value: Any, emit: bool) -> Any:
        from triggerbus.actors.flow_data import change_flow_data

        async def change() -> None:
            await change_flow_data(self._bus, self._flow, op, key, value, emit=emit)  # type: ignore[arg-type]

        return self._chain(change)

    async def drain(self) -> None:
        if self._tail is not None:
            await self._tail
        await self._settle_items()

    def _prepare(
        self, message: Outgoing, *, msg_id: str | None = None
    ) -> Callable[[], Awaitable[None]]:
        """Encode now, so a value that cannot travel raises inside the handler that made it."""
        payload = encode_sent(message)
        subjects = self._bus.subjects
        if isinstance(message, StreamItem | StreamEnded):
            flow, execution_id = self.stream_target or (self._flow, message.execution_id)
            subject = subjects.stream(flow, execution_id)
        else:
            subject = subjects.mailbox(self._flow, message.execution_id)

        observed = PublishInput(self._flow, subject, message)

        if isinstance(message, StreamItem):

            async def start() -> PipelinedPublish:
                with self._observed.publish(observed) as headers:
                    return await self._bus.publish_pipelined(
                        subject, payload, msg_id=message.id, headers=headers
                    )

            return _ItemSend(self._send_item, start)

        async def publish() -> None:
            with self._observed.publish(observed) as headers:
                await self._bus.publish(
                    subject, payload, msg_id=msg_id or message.id, headers=headers
                )

        async def publish_after_items() -> None:
            # Anything else waits until every earlier stream item is stored: an end marker
            # stays last, and a message that leads to another chunk's items stays behind these.
            await self._settle_items()
            await publish()

        return publish_after_items

    def _note_effect(self, message: Outgoing) -> None:
        """Mailbox messages sent without waiting for their application: the outcome names
        them, and the actor applies it only after them."""
        if isinstance(message, EmitEvent | StateWritten):
            self.effects.append(message.id)

    async def _send_item(self, item: _ItemSend) -> None:
        """Send a stream item now and collect its ack later: at most ``STREAM_WINDOW`` wait,
        the oldest first (an ack already in costs no suspension)."""
        items = self._items
        while len(items) >= STREAM_WINDOW:
            await items.popleft().settled()
        items.append(await item.start())

    async def _settle_items(self) -> None:
        items = self._items
        while items:
            await items[0].settled()
            items.popleft()

    def _chain(self, send: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        previous = self._tail

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.shield(previous)
            await send()

        # Owned by this port: drain() awaits the tail, and every link awaits the one before.
        self._tail = asyncio.ensure_future(after_previous(), loop=self._loop)
        return self._tail


def _with_reply(message: EmitEvent | StateWritten, reply_to: str) -> EmitEvent | StateWritten:
    import msgspec

    return msgspec.structs.replace(message, reply_to=reply_to)
