"""The Event Center: typed observation events, published in-process to subscribers.

Subscribers are the structlog logger (``observability/logging.py``), the OpenTelemetry metrics
(``observability/metrics.py``) and any hook a user registers with :func:`subscribe`. Events are
observation only: none of them travels on the bus, and nothing a chunk puts into the runtime
stream becomes an event (the runtime stream carries product events; see docs/design.md).

Each process sees the events of what it hosts: an execution host sees ``execution_*``,
``chunk_invoked``, ``event_emitted``, ``state_written``; a chunk worker sees the attempts it
runs (``chunk_started``, ``chunk_succeeded``, ``chunk_failed``, ``chunk_retried``,
``chunk_dead_lettered``).

Subscribers run synchronously on the host's event loop, inside the message being handled (so
log context and the current span are the message's): keep them quick, hand slow work to a
queue. A subscriber that raises is logged and skipped; it never fails the message.

    from triggerbus.observability import events

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.ChunkFailed):
            alert(event.chunk, event.error_type)

    unsubscribe = events.subscribe(on_event)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import structlog

log = structlog.get_logger()

__all__ = [
    "ChunkDeadLettered",
    "ChunkFailed",
    "ChunkInvoked",
    "ChunkRetried",
    "ChunkStarted",
    "ChunkSucceeded",
    "EmitIgnored",
    "Event",
    "EventCenter",
    "EventEmitted",
    "ExecutionClosed",
    "ExecutionFailed",
    "ExecutionResumed",
    "ExecutionStarted",
    "ExecutionWaiting",
    "Interrupted",
    "Observed",
    "StateWritten",
    "Subscriber",
    "center",
    "subscribe",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every observation event.

    Attributes:
        flow: The flow's name.
        execution_id: The execution the event belongs to.
        at: Wall-clock seconds when the event happened.
        trace_id: The execution's trace (32 hex digits), empty when tracing is off.
        span_id: The span the event happened in (16 hex digits), empty when tracing is off.
    """

    flow: str
    execution_id: str
    at: float
    trace_id: str = ""
    span_id: str = ""


# --- the execution (published by the execution host) ---------------------------------------


class ExecutionStarted(Event, tag="execution_started"):
    """The execution received its start and began running."""


class ExecutionWaiting(Event, tag="execution_waiting"):
    """The execution waits for an outside answer (an interrupt)."""


class ExecutionResumed(Event, tag="execution_resumed"):
    """A waiting execution was resumed."""


class Interrupted(Event, tag="interrupt"):
    """A chunk raised an interrupt; ``attributes`` are the actor's record of it."""

    attributes: dict[str, Any] = {}


class ExecutionFailed(Event, tag="execution_failed"):
    """A chunk failed and the execution stops."""

    chunk: str = ""
    error_type: str = ""


class ExecutionClosed(Event, tag="execution_closed"):
    """The execution closed; ``status`` is completed, failed or cancelled."""

    status: str
    reason: str = ""
    started_at: float = 0.0


class ChunkInvoked(Event, tag="chunk_invoked"):
    """The execution dispatched a chunk invocation (step ``step``)."""

    chunk: str
    step: int


class EventEmitted(Event, tag="event_emitted"):
    """An event was emitted into the execution."""

    event: str
    trigger_type: str = "event"


class EmitIgnored(Event, tag="emit_ignored"):
    """An emit arrived after the execution was sealed or closed."""

    event: str
    lifecycle: str = ""


class StateWritten(Event, tag="state_written"):
    """The execution's state changed (values are not recorded)."""

    key: str
    op: str


class Observed(Event, tag="observed"):
    """An observation the execution actor made that has no type of its own yet."""

    name: str
    attributes: dict[str, Any] = {}


# --- chunk attempts (published by the chunk host that runs them) ------------------------------


class ChunkStarted(Event, tag="chunk_started"):
    """A replica began attempt ``attempt`` of a chunk invocation."""

    chunk: str
    step: int
    attempt: int = 1


class ChunkSucceeded(Event, tag="chunk_succeeded"):
    """An attempt returned; its result is stored in the mailbox."""

    chunk: str
    step: int
    attempt: int = 1
    duration: float = 0.0


class ChunkFailed(Event, tag="chunk_failed"):
    """An attempt raised; the error is stored in the mailbox."""

    chunk: str
    step: int
    attempt: int = 1
    duration: float = 0.0
    error_type: str = ""
    message: str = ""


class ChunkRetried(Event, tag="chunk_retried"):
    """An invocation arrived again (a retry or a redelivery); ``attempt`` counts from 1."""

    chunk: str
    step: int
    attempt: int


class ChunkDeadLettered(Event, tag="chunk_dead_lettered"):
    """An invocation went to the dead-letter stream instead of running."""

    chunk: str
    reason: str
    subject: str = ""
    step: int | None = None


Subscriber = Callable[[Event], None]


class EventCenter:
    """Hands each event to every subscriber, in the order they subscribed."""

    def __init__(self) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; returns a function that removes it again."""
        self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("event_subscriber_failed", subscriber=repr(subscriber))


center = EventCenter()
"""The process's Event Center; the hosts publish here."""


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Receive every observation event of this process; returns the unsubscribe function."""
    return center.subscribe(subscriber)


_BY_NAME: dict[str, type[Event]] = {
    "execution_started": ExecutionStarted,
    "execution_waiting": ExecutionWaiting,
    "execution_resumed": ExecutionResumed,
    "execution_failed": ExecutionFailed,
    "execution_closed": ExecutionClosed,
    "chunk_invoked": ChunkInvoked,
    "event_emitted": EventEmitted,
    "emit_ignored": EmitIgnored,
    "state_written": StateWritten,
}
_SKIPPED = frozenset({"chunk_succeeded", "chunk_failed"})
"""The actor's own records of a chunk's outcome: the chunk host already published the attempt."""


def from_actor(
    name: str,
    attributes: dict[str, Any],
    *,
    flow: str,
    execution_id: str,
    at: float,
    trace_id: str = "",
    span_id: str = "",
    started_at: float = 0.0,
) -> Event | None:
    """The typed event for one of the execution actor's ``Observe`` commands (None: skip it)."""
    if name in _SKIPPED:
        return None
    common = {
        "flow": flow,
        "execution_id": execution_id,
        "at": at,
        "trace_id": trace_id,
        "span_id": span_id,
    }
    kind = _BY_NAME.get(name)
    if kind is None:
        if name == "interrupt":
            return Interrupted(**common, attributes=dict(attributes))
        return Observed(**common, name=name, attributes=dict(attributes))
    fields = {k: v for k, v in attributes.items() if k in kind.__struct_fields__}
    fields.pop("flow", None)
    if kind is ExecutionClosed:
        fields["started_at"] = started_at
    try:
        return kind(**common, **fields)
    except (TypeError, msgspec.ValidationError):
        return Observed(**common, name=name, attributes=dict(attributes))
