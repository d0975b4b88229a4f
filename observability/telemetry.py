"""The one seam the hosts call around handle and publish: traces, metrics and Event Center records.

The hosts never touch OpenTelemetry. They call, with one ``*Input`` struct each:

- the chunk host: ``attempt(AttemptInput)`` around one chunk attempt; the attempt's
  ``publish(PublishInput)`` around every message the attempt sends, and ``finished(...)``;
- the execution host: ``mailbox(MailboxInput)`` around one mailbox message; the handling's
  ``transition(before, after)`` (which records the trace context in the snapshot), its
  ``publish(PublishInput)`` around every outbox publish, and ``observe(...)`` for the actor's
  observations;
- a client (the Execution handle): ``publish(PublishInput)`` around a start or an emit.

``publish`` is a context manager yielding the headers to send (``None``: none). With tracing
off (no ``OTEL_*`` exporter configured, or ``OTEL_SDK_DISABLED=true``) every one of these
returns a shared object that builds no span and injects nothing; the Event Center still gets
its events, which is what the logs are made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.metadata
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import structlog
from opentelemetry import trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import SpanKind, Status, StatusCode

from triggerbus.contracts.messages import EmitEvent, InvokeChunk
from triggerbus.contracts.snapshot import Snapshot
from triggerbus.observability import events
from triggerbus.observability._records import (
    LinkRecord,
    ProducerRecord,
    producer_attributes,
    producer_name,
)
from triggerbus.observability._spans import RecordedSpan, newest
from triggerbus.observability.logging import log_event
from triggerbus.observability.metrics import Metrics, export_interval, metrics_from_env
from triggerbus.observability.tracing import (
    CHILD_FLAGS,
    HANDLED_PARENT,
    JOIN_PREFIX,
    Parent,
    Tracing,
    execution_context,
    execution_trace,
    inject_parent,
    inject_span,
    join_links,
    link_record,
    otel_links,
    parent_of,
    random_span_id,
    record_arrival,
    span_hex,
    trace_hex,
    tracing_from_env,
)

log = structlog.get_logger()

Headers = contextlib.AbstractContextManager[dict[str, str] | None]
"""What ``publish`` returns: a context manager yielding the headers to send (None: none)."""
_NO_HEADERS: Headers = contextlib.nullcontext(None)


# --- inputs: one struct per intercepted call, so fields can be added without breaking anyone ----
# (msgspec structs, not frozen dataclasses: built for every publish and message, and a frozen
# dataclass's ``__init__`` sets each field through ``object.__setattr__``, ~5x the cost.)


class PublishInput(msgspec.Struct, frozen=True):
    """A message about to be published. ``message`` is the contract struct (never recorded)."""

    flow: str
    subject: str
    message: Any


class AttemptInput(msgspec.Struct, frozen=True):
    """One delivery of a chunk invocation to this replica."""

    flow: str
    chunk: str
    subject: str
    consumer: str
    headers: Mapping[str, str]
    invocation: InvokeChunk
    attempt: int


class MailboxInput(msgspec.Struct, frozen=True):
    """One mailbox message taken by an execution host (``message`` is decoded)."""

    flow: str
    execution_id: str
    headers: Mapping[str, str]
    message: Any = None


class DeadLetterInput(msgspec.Struct, frozen=True):
    flow: str
    chunk: str
    reason: str
    subject: str = ""
    execution_id: str = ""
    step: int | None = None


# --- the seam ----------------------------------------------------------------------------------


class Telemetry:
    """A process's traces and metrics (each optional) and its Event Center."""

    def __init__(
        self,
        *,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
        center: events.EventCenter | None = None,
        backlog_interval: float = 15.0,
    ) -> None:
        self.tracing = tracing
        self.metrics = metrics
        self.center = center or events.center
        self.backlog_interval = backlog_interval
        self._unsubscribe = [self.center.subscribe(log_event)]
        if metrics is not None:
            self._unsubscribe.append(self.center.subscribe(metrics.on_event))

    @property
    def tracing_enabled(self) -> bool:
        return self.tracing is not None

    # client side --------------------------------------------------------------------------------

    def publish(self, input: PublishInput) -> Headers:
        """Around a client's publish: the caller's current span is the parent."""
        if self.tracing is None:
            return _NO_HEADERS
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return _NO_HEADERS  # no trace to join: the execution's own trace takes the message
        return _publish(self.tracing, Parent.of(context), input, ())

    # chunk side ---------------------------------------------------------------------------------

    def attempt(self, input: AttemptInput) -> Attempt:
        return Attempt(self, input)

    def dead_lettered(self, input: DeadLetterInput) -> None:
        self.center.publish(
            events.ChunkDeadLettered(
                flow=input.flow,
                execution_id=input.execution_id,
                at=time.time(),
                chunk=input.chunk,
                reason=input.reason,
                subject=input.subject,
                step=input.step,
            )
        )

    async def watch_backlog(
        self,
        flow: str,
        consumers: Mapping[str, tuple[str, Callable[[], Awaitable[int]]]],
        stopping: asyncio.Event,
    ) -> None:
        """Sample each chunk consumer's pending count for the backlog gauge until ``stopping``.

        ``consumers`` maps chunk name to (consumer name, a coroutine function returning the
        pending count). Returns at once when metrics are off.
        """
        if self.metrics is None or not consumers:
            return
        while not stopping.is_set():
            for chunk, (consumer, pending) in consumers.items():
                try:
                    self.metrics.record_backlog(flow, chunk, consumer, await pending())
                except Exception as exc:  # a sample lost is not worth a host
                    log.debug("backlog_sample_failed", chunk=chunk, error=str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.backlog_interval):
                    await stopping.wait()

    # execution side -----------------------------------------------------------------------------

    def mailbox(self, input: MailboxInput) -> Handling:
        if self.tracing is None:
            return _UntracedHandling(self, input)
        return _TracedHandling(self, self.tracing, input)

    def replay(self, flow: str, snapshot: Snapshot) -> Handling:
        """The handling for re-publishing a stored outbox: parented to the execution span."""
        handling = self.mailbox(MailboxInput(flow=flow, execution_id=snapshot.execution_id,
                                             headers={}))  # fmt: skip
        handling.resume(snapshot)
        return handling

    # lifecycle ----------------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 5_000) -> None:
        if self.tracing is not None:
            self.tracing.force_flush(timeout_millis)
        if self.metrics is not None:
            self.metrics.force_flush(timeout_millis)

    def shutdown(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self.tracing is not None:
            self.tracing.shutdown()
        if self.metrics is not None:
            self.metrics.shutdown()


# --- chunk attempts ----------------------------------------------------------------------------


class Attempt:
    """One chunk attempt: its consumer span (when tracing), its events, its publishes."""

    __slots__ = ("_finished", "_ids", "_input", "_scope", "_span", "_started", "_telemetry")

    def __init__(self, telemetry: Telemetry, input: AttemptInput) -> None:
        self._telemetry = telemetry
        self._input = input
        self._span: RecordedSpan | None = None
        self._scope: object | None = None
        self._ids = ("", "")
        self._started = 0.0
        self._finished = False

    def __enter__(self) -> Attempt:
        input = self._input
        tracing = self._telemetry.tracing
        if tracing is not None:
            invocation = input.invocation
            self._span = tracing.child_span(
                f"process {input.chunk}",
                parent_of(input.headers),
                SpanKind.CONSUMER,
                {
                    "messaging.system": "nats",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": input.subject,
                    "messaging.consumer.group.name": input.consumer,
                    "messaging.message.id": invocation.id,
                    "triggerbus.flow": input.flow,
                    "triggerbus.execution_id": invocation.execution_id,
                    "triggerbus.chunk": input.chunk,
                    "triggerbus.step": invocation.step,
                    "triggerbus.attempt": input.attempt,
                },
            )
            self._scope = attach(trace.set_span_in_context(self._span))
        if input.attempt > 1:
            self._event(events.ChunkRetried, attempt=input.attempt)
        self._event(events.ChunkStarted, attempt=input.attempt)
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._scope is not None:
            detach(self._scope)
        if self._span is not None:
            if exc is not None:
                self._span.record_exception(exc)
                self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            elif not self._finished:
                self._span.set_status(Status(StatusCode.ERROR, "attempt left unfinished"))
            self._span.end()

    def publish(self, input: PublishInput) -> Headers:
        """Around a message this attempt sends: emits get a producer span."""
        span, tracing = self._span, self._telemetry.tracing
        if span is None or tracing is None:
            return _NO_HEADERS
        if isinstance(input.message, InvokeChunk | EmitEvent):
            parent = Parent(span.trace_id, span.span_id, span.flags, span.trace_state, False)
            return _Producer(tracing, parent, input, ())
        # The attempt's outcome and its other messages name the attempt's span itself.
        return contextlib.nullcontext(inject_span(span, {}))

    def finished(self, *, error_type: str = "", message: str = "") -> float:
        """The attempt's outcome is stored; returns its duration in seconds."""
        self._finished = True
        duration = time.perf_counter() - self._started
        if error_type:
            self._event(events.ChunkFailed, attempt=self._input.attempt, duration=duration,
                        error_type=error_type, message=message)  # fmt: skip
            if self._span is not None:
                self._span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))
                self._span.set_attribute("error.type", error_type)
        else:
            self._event(events.ChunkSucceeded, attempt=self._input.attempt, duration=duration)
        return duration

    def _event(self, kind: type[events.Event], **fields: Any) -> None:
        input = self._input
        trace_id, span_id = self._ids
        if self._span is not None and not trace_id:
            span = self._span
            trace_id, span_id = self._ids = trace_hex(span.trace_id), span_hex(span.span_id)
        self._telemetry.center.publish(
            kind(
                flow=input.flow,
                execution_id=input.invocation.execution_id,
                at=time.time(),
                trace_id=trace_id,
                span_id=span_id,
                chunk=input.chunk,
                step=input.invocation.step,
                **fields,
            )
        )


# --- mailbox messages --------------------------------------------------------------------------


_NO_IDS = ("", "")
"""The trace and span ids of an event nobody traced."""


class Handling:
    """One mailbox message on an execution host (base: tracing off)."""

    def __init__(self, telemetry: Telemetry, input: MailboxInput) -> None:
        self._telemetry = telemetry
        self._input = input
        self._snapshot: Snapshot | None = None

    def __enter__(self) -> Handling:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def resume(self, snapshot: Snapshot) -> None:
        """Handle on behalf of a stored snapshot (a re-published outbox)."""
        self._snapshot = snapshot

    def transition(self, before: Snapshot | None, after: Snapshot) -> Snapshot:
        """The snapshot to store for this transition (tracing adds its context)."""
        self._snapshot = after
        return after

    def publish(self, input: PublishInput) -> Headers:
        return _NO_HEADERS

    def observe(self, name: str, attributes: dict[str, Any]) -> None:
        snapshot = self._snapshot
        trace_id, span_id = self._hex()
        event = events.from_actor(
            name,
            attributes,
            flow=self._input.flow,
            execution_id=self._input.execution_id,
            at=time.time(),
            trace_id=trace_id,
            span_id=span_id,
            started_at=snapshot.started_at if snapshot is not None else 0.0,
        )
        if event is not None:
            self._telemetry.center.publish(event)

    def _hex(self) -> tuple[str, str]:
        """The trace and span ids events carry, as hex (empty when not traced)."""
        return _NO_IDS


class _UntracedHandling(Handling):
    pass


class _TracedHandling(Handling):
    def __init__(self, telemetry: Telemetry, tracing: Tracing, input: MailboxInput) -> None:
        super().__init__(telemetry, input)
        self._tracing = tracing
        self._message = parent_of(input.headers)  # parsed once per message
        self._parent: Parent | None = self._message
        self._links: list[LinkRecord] = []
        self._token: contextvars.Token[Parent | None] | None = None
        self._ids: tuple[Parent | None, tuple[str, str]] = (None, _NO_IDS)
        self._written: tuple[Parent | None, dict[str, str]] = (None, {})

    def __enter__(self) -> Handling:
        # For the trace ids of log lines written while handling (``add_trace_ids``); not an
        # OpenTelemetry context: the actor runs no user code that starts spans, and attaching
        # one (a Context copy and a token per message) was a measured part of tracing's cost.
        if self._parent is not None:
            self._token = HANDLED_PARENT.set(self._parent)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            HANDLED_PARENT.reset(self._token)

    def resume(self, snapshot: Snapshot) -> None:
        super().resume(snapshot)
        own = execution_context(snapshot.trace)
        if own is not None:
            self._parent = own

    def transition(self, before: Snapshot | None, after: Snapshot) -> Snapshot:
        stored = after.trace  # copied below only when this transition changes it
        started_here = False
        if not stored and after.status != "created":
            stored = execution_trace(
                self._input.headers, self._input.execution_id, self._tracing.sampled
            )
            started_here = True
        own = execution_context(stored)
        message = self._message
        self._links = []
        if own is None:
            parent = message
        elif message is not None and message.trace_id == own.trace_id and not started_here:
            parent = message
        else:
            parent = own
            if message is not None and message.trace_id != own.trace_id:
                self._links.append(link_record(message, _ORIGIN))
        self._parent = parent
        before_joins = before.joins if before is not None else {}
        if parent is not None and (before_joins or after.joins):
            # The trace fields are copied only when an arrival changes them, and a join left
            # as it was is the same object (joins are copied on write), so no comparing it.
            for key, value in after.joins.items():
                previous = before_joins.get(key)
                if previous is not value and previous != value:
                    if stored is after.trace:
                        stored = dict(stored)
                    record_arrival(stored, key, parent)
            for key in before_joins:
                if key not in after.joins:
                    self._links.extend(join_links(stored, key, own or parent))
                    if stored is after.trace:
                        stored = dict(stored)
                    stored.pop(JOIN_PREFIX + key, None)
        if stored is not after.trace and stored != after.trace:
            after = msgspec.structs.replace(after, trace=stored)
        self._snapshot = after
        return after

    def publish(self, input: PublishInput) -> Headers:
        if self._parent is None:
            return _NO_HEADERS
        message = input.message
        if isinstance(message, InvokeChunk | EmitEvent):
            links = self._links if isinstance(message, InvokeChunk) else ()
            return _Producer(self._tracing, self._parent, input, links, user_context=False)
        return contextlib.nullcontext(self._headers())

    def observe(self, name: str, attributes: dict[str, Any]) -> None:
        super().observe(name, attributes)
        snapshot = self._snapshot
        if name != "execution_closed" or snapshot is None or not snapshot.trace:
            return
        error = snapshot.error
        self._tracing.export_execution_span(
            snapshot.trace,
            name=f"execution {self._input.flow}",
            attributes={
                "triggerbus.flow": self._input.flow,
                "triggerbus.execution_id": self._input.execution_id,
                "triggerbus.status": str(attributes.get("status", snapshot.status)),
                "triggerbus.close_reason": str(attributes.get("reason", "")),
                **({"error.type": error.error_type} if error is not None else {}),
            },
            started_at=snapshot.started_at or snapshot.created_at,
            closed_at=snapshot.closed_at or time.time(),
            error=f"{error.error_type}: {error.message}" if error is not None else None,
        )

    def _hex(self) -> tuple[str, str]:
        """The parent's ids as hex, formatted once per parent (every event carries them)."""
        cached = self._ids
        if cached[0] is not self._parent:
            parent = self._parent
            hex_ids = (
                (trace_hex(parent.trace_id), span_hex(parent.span_id))
                if parent is not None
                else _NO_IDS
            )
            cached = self._ids = (parent, hex_ids)
        return cached[1]

    def _headers(self) -> dict[str, str]:
        """Headers naming the parent, for a message that gets no span of its own (written
        once per parent: a transition's replies, stream items and close notice share it)."""
        parent = self._parent
        assert parent is not None
        cached = self._written
        if cached[0] is not parent:
            cached = self._written = (parent, inject_parent(parent, {}, user_context=False))
        return dict(cached[1])


# --- publishing ---------------------------------------------------------------------------------


class _Producer:
    """A producer span around one publish; yields the headers naming it (a small class rather
    than a generator context manager: it runs for every traced publish).

    Nothing makes a producer span current or asks it anything while it is open, so when the
    recorder takes records and the sampler follows the parent, it is no span object at all:
    the message's fields, one :class:`ProducerRecord` when it ends (a ``RecordedSpan`` only
    if the publish fails, to record the exception as any span does).
    """

    __slots__ = ("_input", "_links", "_parent", "_recorder", "_span", "_span_id", "_start",
                 "_tracing", "_user_context")  # fmt: skip

    def __init__(
        self,
        tracing: Tracing,
        parent: Parent,
        input: PublishInput,
        links: Sequence[LinkRecord],
        *,
        user_context: bool = True,
    ) -> None:
        self._tracing = tracing
        self._parent = parent
        self._input = input
        self._links = links
        self._user_context = user_context
        self._recorder = tracing.record_sink()
        self._span: RecordedSpan | None = None
        if self._recorder is None:
            name, attributes = self._name_and_attributes()
            self._span = tracing.start_span(
                name, parent=parent, kind=SpanKind.PRODUCER, attributes=attributes,
                links=otel_links(links, parent),
            )  # fmt: skip
            return
        # The span's own context: what start_span gives a child that follows its parent.
        self._span_id = random_span_id()
        self._start = time.time_ns()

    def __enter__(self) -> dict[str, str] | None:
        if self._span is not None:
            return inject_span(self._span, {})
        parent = self._parent
        own = Parent(parent.trace_id, self._span_id, parent.flags & CHILD_FLAGS, parent.state)
        return inject_parent(own, {}, user_context=self._user_context)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        if span is None:
            parent = self._parent
            if exc is None:
                if parent.flags & 1:
                    self._record(parent)
                return
            name, attributes = self._name_and_attributes()
            span = self._tracing.start_span(
                name, parent=parent, kind=SpanKind.PRODUCER, attributes=attributes,
                links=otel_links(self._links, parent), start_ns=self._start,
                ids=(parent.trace_id, self._span_id), sampled=bool(parent.flags & 1),
            )  # fmt: skip
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()

    def _fields(self) -> tuple[str, str, int | None]:
        """The operation, its target and the step."""
        message = self._input.message
        if isinstance(message, InvokeChunk):
            return "invoke", message.chunk, message.step
        return "emit", message.event, message.step

    def _name_and_attributes(self) -> tuple[str, dict[str, Any]]:
        input = self._input
        operation, target, step = self._fields()
        attributes = producer_attributes(operation, target, input.subject, input.message.id,
                                         input.flow, input.message.execution_id, step)  # fmt: skip
        return producer_name(operation, target), attributes

    def _record(self, parent: Parent) -> None:
        recorder = self._recorder
        assert recorder is not None
        links: tuple[LinkRecord, ...] = ()
        dropped = 0
        if self._links:
            kept, dropped = newest(self._links, recorder.limits.max_links)
            links = tuple(kept)
        input = self._input
        message = input.message
        operation, target, step = self._fields()
        recorder.append_record(
            ProducerRecord(operation, target, input.subject, message.id, input.flow,
                           message.execution_id, step, parent.trace_id.to_bytes(16, "big"),
                           self._span_id.to_bytes(8, "big"), parent.state,
                           parent.span_id.to_bytes(8, "big"), parent.remote, self._start,
                           time.time_ns(), links, dropped)
        )  # fmt: skip


_ORIGIN = {"triggerbus.link": "origin"}
"""The link from an invocation to a message of another trace that caused it."""


def _publish(
    tracing: Tracing, parent: Parent, input: PublishInput, links: Sequence[LinkRecord]
) -> Headers:
    if isinstance(input.message, InvokeChunk | EmitEvent):
        return _Producer(tracing, parent, input, links)
    return contextlib.nullcontext(inject_parent(parent, {}))


# --- the process's telemetry -------------------------------------------------------------------

_lock = threading.Lock()
_current: Telemetry | None = None


def configure_telemetry(environ: Mapping[str, str] | None = None) -> Telemetry:
    """(Re)build the process's telemetry from ``OTEL_*`` (``os.environ`` by default).

    Entry points call it once; a process that never does gets it from the environment on
    first use. A previous configuration is flushed and shut down.
    """
    global _current
    env = os.environ if environ is None else environ
    version = _version()
    built = Telemetry(
        tracing=tracing_from_env(env, version=version),
        metrics=metrics_from_env(env, version=version),
        backlog_interval=min(15.0, export_interval(env)),
    )
    with _lock:
        previous, _current = _current, built
    if previous is not None:
        previous.shutdown()
    return built


def _version() -> str:
    try:
        return importlib.metadata.version("triggerbus")
    except importlib.metadata.PackageNotFoundError:
        return ""


def current() -> Telemetry:
    """The process's telemetry, built from the environment on first use."""
    telemetry = _current
    if telemetry is None:
        with _lock:
            telemetry = _current
        if telemetry is None:
            return configure_telemetry()
    return telemetry


def shutdown_telemetry() -> None:
    """Flush and stop exporting; the next use builds telemetry from the environment again."""
    global _current
    with _lock:
        previous, _current = _current, None
    if previous is not None:
        previous.shutdown()
