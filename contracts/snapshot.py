"""The execution snapshot: everything needed to continue an execution, stored in KV.

The execution actor is its single writer. In-flight work is a tree of nodes: an emission's
children are the handlers it triggered; a chunk node finishes only when the emission of its
result has finished. An awaited emit is answered when its node finishes, which is what makes
``await data.async_emit(...)`` return the whole cascade's results, as TriggerFlow does.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from triggerbus.contracts.graph import TriggerType
from triggerbus.contracts.messages import ErrorInfo, ParentRef, ResumeContext
from triggerbus.contracts.outbox import StoredOutbox

Status = Literal["created", "running", "waiting", "completed", "failed", "cancelled"]
Lifecycle = Literal["open", "sealed", "closed"]
NodeKind = Literal["emission", "chunk", "operator"]


class Node(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One unit of in-flight work.

    ``slots`` holds the results of finished children in handler order; ``pending`` counts the
    children still running. ``ready`` is false while a chunk node waits for its chunk to return,
    and while a fan-out operator still has branches to release.

    Stored without its default fields (``omit_defaults``): every node in flight is in every
    snapshot write, and a burst of outside emits leaves hundreds in flight at once; written
    whole, an emission's node took about 330 bytes, two thirds of them defaults. Readers fill
    the defaults back in, older releases' included.
    """

    id: int
    kind: NodeKind
    parent: int | None = None
    slot: int = 0
    pending: int = 0
    ready: bool = True
    slots: list[Any] = []
    result: Any = None
    operator: str = ""
    chunk: str = ""
    reply_to: str | None = None
    reply_id: str = ""
    started: bool = False
    layers: tuple[str, ...] = ()
    queued: list[Any] = []
    effects: list[str] = []
    """On a chunk node: ids of the mailbox messages its attempts sent that have been applied."""
    interrupt: str = ""
    """Set on a chunk node that paused (``pause_for``): when it returns, it finishes without
    emitting its trigger; the interrupt's resume continues the flow."""


class Interrupt(msgspec.Struct, frozen=True, kw_only=True):
    """A ``pause_for`` waiting for (or answered by) ``continue_with``: Agently's interrupt
    record, less its exchange/provider fields."""

    id: str
    type: str = "pause"
    payload: Any = None
    resume_event: str | None = None
    resume_to: str | dict[str, str] = "next"
    status: Literal["waiting", "resumed", "cancelled"] = "waiting"
    source_execution_id: str = ""
    source_flow_name: str = ""
    source_operator_id: str = ""
    source_chunk: str = ""
    source_step: int = 0
    source_signal: dict[str, Any] | None = None
    continuation_event: str | None = None
    resume_count: int = 0
    max_resumes: int | None = None
    created_at: float = 0.0
    resumed_at: float | None = None
    resume_value: Any = None
    resume_request_id: str | None = None
    resumed_by: str | None = None
    resume_requests: dict[str, Any] = {}
    """``resume_request_id`` -> the value it carried, so a repeat is recognised."""


class QueuedInvocation(msgspec.Struct, frozen=True, kw_only=True):
    """A chunk invocation held back by the execution's concurrency cap."""

    node: int
    operator: str
    value: Any = None
    trigger_event: str = ""
    trigger_type: TriggerType = "event"
    layers: tuple[str, ...] = ()
    resume: ResumeContext | None = None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one execution, versioned by ``v``."""

    v: int = 1
    flow: str
    execution_id: str
    fingerprint: str
    status: Status = "created"
    lifecycle: Lifecycle = "open"
    state: dict[str, Any] = {}
    result: Any = None
    has_result: bool = False
    error: ErrorInfo | None = None
    next_node: int = 1
    nodes: dict[int, Node] = {}
    joins: dict[str, Any] = {}
    applied: list[str] = []
    concurrency: int | None = None
    running: list[int] = []
    queue: list[QueuedInvocation] = []
    auto_close: bool = True
    auto_close_timeout: float | None = 10.0
    skip_exceptions: bool = False
    timer_generation: int = 0
    close_requested: bool = False
    close_reason: str = ""
    close_waiters: list[str] = []
    stream_ended: bool = False
    resources: dict[str, Any] = {}
    created_at: float = 0.0
    started_at: float = 0.0
    closed_at: float = 0.0
    start_reply_to: str | None = None
    outbox: StoredOutbox = StoredOutbox()
    answers: dict[str, Any] = {}
    """The results of recent awaited emits and state writes by message id, so a repeated chunk
    attempt that sends the same request again is answered instead of applied twice."""
    trace: dict[str, str] = {}
    """The execution's trace context, fixed at its start (observability/tracing.py)."""
    parent: ParentRef | None = None
    """Set on a sub-flow's execution: whom to notify on close and whose stream gets items."""
    flow_data: dict[str, Any] = {}
    flow_data_revision: int = 0
    """The flow data (shared by the flow's executions) as of the newest change seen, which
    chunks dispatched from now on read."""
    interrupts: dict[str, Interrupt] = {}
    """Every interrupt of this execution by id; status ``waiting`` while any is waiting."""


snapshot_decoder = msgspec.json.Decoder(Snapshot)
