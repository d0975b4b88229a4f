"""Every message that crosses the bus.

Subjects (see bus/subjects.py for the only place they are spelled):

- execution mailbox ``<p>.<flow>.exec.<execution_id>``: the ``MailboxMessage`` union, tagged by
  ``kind``; the execution actor is its only consumer.
- chunk invocations ``<p>.<flow>.run.<chunk>``: ``InvokeChunk``.
- runtime stream ``<p>.<flow>.stream.<execution_id>``: ``StreamItem`` and ``StreamEnded``.
- close notifications ``<p>.<flow>.closed.<execution_id>``: ``ExecutionClosed``.
- replies to ``reply_to`` subjects: ``Reply``.
- dead letters ``<p>.<flow>.dlq.<chunk|exec>``: ``DeadLetter``.

Values (``value``, ``result``, state) are any JSON value. Ids are deterministic,
``<execution>:<step>:<n>``, and double as ``Nats-Msg-Id`` so duplicates are dropped twice over:
by JetStream's window and by the execution actor's applied-id set.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from triggerbus.contracts._base import Wire
from triggerbus.contracts.graph import TriggerType

StateOp = Literal["set", "append", "delete"]


# --- execution mailbox ---------------------------------------------------------------------


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A failure as it travels: which chunk, the original type and message, the traceback."""

    chunk: str = ""
    error_type: str
    message: str
    traceback: str = ""


CONTRACT_ERROR = "ContractError"
"""The ``error_type`` of a refused message that is itself wrong (it does not decode, its
subject and ``execution_id`` disagree, its flow fingerprint differs)."""

EXECUTION_NOT_FOUND = "ExecutionNotFoundError"
"""The ``error_type`` of a refusal because the execution does not exist: a message other than
``start`` or ``state`` for an id that was never started."""


def refuses_unknown_execution(error: ErrorInfo | None) -> bool:
    """Whether ``error`` says the execution does not exist.

    A host of the previous release (still answering during a rolling upgrade) sent this as a
    ``ContractError`` whose message starts ``no execution``; that form is read too.
    """
    if error is None:
        return False
    return error.error_type == EXECUTION_NOT_FOUND or (
        error.error_type == CONTRACT_ERROR and error.message.startswith("no execution")
    )


class ParentRef(msgspec.Struct, frozen=True, kw_only=True):
    """The execution (and its waiting step) that started a sub-flow execution."""

    flow: str
    execution_id: str
    step: int
    stream_flow: str = ""
    stream_execution_id: str = ""
    """Whose runtime stream the child's items go to: the parent's own unless it is itself a
    sub-flow, then its root's."""

    def stream_target(self) -> tuple[str, str]:
        return (self.stream_flow or self.flow, self.stream_execution_id or self.execution_id)


class StartExecution(Wire, tag="start"):
    """Create and start an execution. ``fingerprint`` may be empty for publishers that do not
    know the graph (another language); the host then uses its own."""

    id: str
    execution_id: str
    value: Any = None
    fingerprint: str = ""
    concurrency: int | None = None
    auto_close: bool = True
    auto_close_timeout: float | None = 10.0
    skip_exceptions: bool = False
    resources: dict[str, Any] = {}
    reply_to: str | None = None
    sent_at: float = 0.0
    state: dict[str, Any] = {}
    parent: ParentRef | None = None
    flow_data: dict[str, Any] = {}
    flow_data_revision: int = 0


class ChunkCompleted(Wire, tag="chunk_completed"):
    """A chunk attempt returned ``result``."""

    id: str
    execution_id: str
    step: int
    result: Any = None
    sent_at: float = 0.0
    effects: list[str] = []
    """Ids of the mailbox messages the attempt sent without waiting for them to be applied;
    the outcome is applied only after them."""


class ChunkFailed(Wire, tag="chunk_failed"):
    """A chunk attempt raised, and will not be retried."""

    id: str
    execution_id: str
    step: int
    error_type: str
    message: str
    traceback: str = ""
    sent_at: float = 0.0
    effects: list[str] = []
    """As ``ChunkCompleted.effects``."""


class EmitEvent(Wire, tag="emit"):
    """Emit an event into the execution. With ``reply_to`` the sender awaits the cascade and is
    answered with the handlers' results; ``step`` names the chunk step that emitted, if any."""

    id: str
    execution_id: str
    event: str
    value: Any = None
    trigger_type: TriggerType = "event"
    step: int | None = None
    layers: tuple[str, ...] = ()
    reply_to: str | None = None
    sent_at: float = 0.0


class StateWritten(Wire, tag="state"):
    """A chunk or client changed execution state; ``emit`` fires ``runtime_data`` listeners."""

    id: str
    execution_id: str
    op: StateOp
    key: str
    value: Any = None
    emit: bool = True
    step: int | None = None
    layers: tuple[str, ...] = ()
    reply_to: str | None = None
    sent_at: float = 0.0


class CloseExecution(Wire, tag="close"):
    """Seal the execution, let in-flight work finish, then close it.

    An execution waiting on an interrupt refuses to close (``pending_interrupts="reject"``)
    unless told to cancel its interrupts (``"cancel"``): it then closes as ``cancelled``."""

    id: str
    execution_id: str
    reason: str = "manual"
    reply_to: str | None = None
    sent_at: float = 0.0
    pending_interrupts: Literal["reject", "cancel"] = "reject"


class SealExecution(Wire, tag="seal"):
    """Seal (``sealed``) or unseal the execution. A sealed execution ignores events and state
    writes from outside; work already in flight continues."""

    id: str
    execution_id: str
    sealed: bool = True
    reason: str = "manual"
    reply_to: str | None = None
    sent_at: float = 0.0


class FlowDataChanged(Wire, tag="flow_data"):
    """Flow data (shared by every execution of the flow) changed; fires ``when({"flow_data":
    key})`` listeners with the key's new value."""

    id: str
    execution_id: str
    key: str
    value: Any = None
    revision: int = 0
    data: dict[str, Any] = {}
    """The whole flow data at ``revision``; chunks dispatched later read it."""
    sent_at: float = 0.0


class SubFlowClosed(Wire, tag="sub_flow_closed"):
    """A child execution started by a ``to_sub_flow`` step closed; ``step`` is the parent's
    node that waits for it."""

    id: str
    execution_id: str
    step: int
    child_execution_id: str
    status: str
    snapshot: dict[str, Any] = {}
    error: ErrorInfo | None = None
    sent_at: float = 0.0


class TimerFired(Wire, tag="timer"):
    """A timer the actor asked for has expired; ``generation`` tells a stale one apart.

    The same message waits on the timers stream until ``due_at`` (wall-clock seconds), then
    an execution host moves it into the mailbox."""

    id: str
    execution_id: str
    timer: str
    generation: int
    sent_at: float = 0.0
    due_at: float = 0.0


class SignalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What triggered a chunk: enough to run it again (``resume_to="self"``)."""

    trigger_event: str
    trigger_type: TriggerType = "event"
    value: Any = None
    layers: tuple[str, ...] = ()


class PauseForInterrupt(Wire, tag="pause"):
    """A running chunk (``step``) asks to wait for outside input (``data.pause_for``).

    ``resume_to`` is ``"next"`` (the chunk's downstream receives the resume value as its
    result), ``"self"`` (the chunk runs again with ``data.is_resume``) or ``{"event": name}``.
    ``resume_count`` is how often the chunk was resumed to itself before this pause."""

    id: str
    execution_id: str
    step: int
    interrupt_id: str
    type: str = "pause"
    payload: Any = None
    resume_to: str | dict[str, str] = "next"
    resume_event: str | None = None
    max_resumes: int | None = 1
    resume_count: int = 0
    source_signal: SignalRecord | None = None
    reply_to: str | None = None
    sent_at: float = 0.0


class ResumeInterrupt(Wire, tag="resume"):
    """Continue a waiting execution (``continue_with``): answer interrupt ``interrupt_id``
    with ``value``. A repeated ``resume_request_id`` with the same value is answered again
    and applied once."""

    id: str
    execution_id: str
    interrupt_id: str
    value: Any = None
    resume_request_id: str | None = None
    actor: str | None = None
    reply_to: str | None = None
    sent_at: float = 0.0
    settle: bool = False
    """Answer once the continuation's cascade has settled (it paused again, ran to its end,
    or failed: the failure is the answer), as TriggerFlow's ``continue_with`` returns;
    otherwise (the default, and what a reader that predates the field does) as soon as the
    resume is stored. The answer's value is then the cascade's result, not the record."""


MailboxMessage = StartExecution | ChunkCompleted | ChunkFailed | EmitEvent | StateWritten | (
    CloseExecution | TimerFired | SealExecution | FlowDataChanged | SubFlowClosed
) | PauseForInterrupt | ResumeInterrupt


# --- chunk invocation ------------------------------------------------------------------------


class ResumeContext(msgspec.Struct, frozen=True, kw_only=True):
    """``data.resume``: the interrupt being continued and the value it was answered with."""

    interrupt_id: str
    value: Any = None
    interrupt: dict[str, Any] = {}
    origin_signal: dict[str, Any] | None = None
    resume_count: int = 0


class InvokeChunk(Wire, tag="invoke"):
    """Run one chunk once. ``state`` is the execution state as of dispatch."""

    id: str
    flow: str
    execution_id: str
    fingerprint: str
    chunk: str
    step: int
    value: Any = None
    trigger_event: str = ""
    trigger_type: TriggerType = "event"
    layers: tuple[str, ...] = ()
    state: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    sent_at: float = 0.0
    flow_data: dict[str, Any] = {}
    stream_to: ParentRef | None = None
    """Where stream items go instead of this execution's stream (a sub-flow's parent)."""
    resume: ResumeContext | None = None
    """Set when this run continues an interrupt (``data.is_resume``, ``data.resume``)."""



# --- runtime stream --------------------------------------------------------------------------


class StreamItem(Wire, tag="item"):
    """One product event a chunk put into the runtime stream."""

    id: str
    execution_id: str
    value: Any = None


class StreamEnded(Wire, tag="end"):
    """No more items will follow: ``stop_stream`` was called or the execution closed."""

    id: str
    execution_id: str
    reason: str = "stopped"


StreamMessage = StreamItem | StreamEnded


# --- notifications and replies ---------------------------------------------------------------


class ExecutionClosed(Wire, tag="closed"):
    """The execution closed; ``snapshot`` is its close snapshot (state plus ``$final_result``).

    The meta fields spare a waiting handle a read of the stored snapshot; ``revision`` (the
    stored snapshot's, set by the host that wrote it) is 0 when unknown."""

    execution_id: str
    status: str
    snapshot: dict[str, Any]
    error: ErrorInfo | None = None
    started_at: float = 0.0
    closed_at: float = 0.0
    close_reason: str = ""
    revision: int = 0


class Reply(Wire, tag="reply"):
    """An answer on a ``reply_to`` subject: a value, or an error to raise at the caller."""

    ok: bool
    value: Any = None
    error: ErrorInfo | None = None
    ignored: str = ""
    """Why the request changed nothing (``"sealed"``, ``"closed"``), so the caller can warn."""
    status: str = ""
    """The execution's status when the answer was given (``running``, ``waiting``, ...), so
    the caller knows, without a store read, that an emit's cascade paused; empty in a repeat's
    answer and from actors that predate the field."""


class FlowDataUpdated(Wire, tag="flow_data_updated"):
    """Broadcast on the flow's core-NATS flow-data subject after a change is stored in KV:
    ``data`` is the whole flow data at ``revision``. Execution hosts turn it into
    ``FlowDataChanged`` messages for the live executions they hold; chunk hosts keep ``data``
    as the flow data their chunks read."""

    flow: str
    op: StateOp
    key: str
    value: Any = None
    data: dict[str, Any] = {}
    revision: int = 0
    emit: bool = True


class DeadLetter(Wire, tag="dead_letter"):
    """A message that could not be handled, kept with the reason so nothing vanishes."""

    subject: str
    reason: str
    data: str
    headers: dict[str, str] = {}
    execution_id: str = ""
    chunk: str = ""


# --- decoders, built once --------------------------------------------------------------------

mailbox_decoder = msgspec.json.Decoder(MailboxMessage)
invoke_decoder = msgspec.json.Decoder(InvokeChunk)
stream_decoder = msgspec.json.Decoder(StreamMessage)
closed_decoder = msgspec.json.Decoder(ExecutionClosed)
reply_decoder = msgspec.json.Decoder(Reply)
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
flow_data_decoder = msgspec.json.Decoder(FlowDataUpdated)
