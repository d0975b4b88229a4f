"""The execution actor: a pure reducer ``apply(snapshot, message) -> (snapshot', outbox)``.

No I/O, no clock, no randomness: the time comes in as ``now`` and every id derives from the
snapshot, so replaying the same messages gives the same snapshots and the same outboxes.
The host (actors/execution_host.py) stores the new snapshot with compare-and-set and only then
performs the outbox.

In-flight work is a tree of nodes (see contracts/snapshot.py). Internal operators (batch fan-out
and collect, ``when`` gates, the result sink) run right here; chunk operators become ``Invoke``
commands and come back as ``ChunkCompleted``/``ChunkFailed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, assert_never

import msgspec

from triggerbus.actors.graph_index import GraphIndex
from triggerbus.actors.state_paths import (
    apply_state_op,
    close_snapshot,
    copy_value,
    has_path,
)
from triggerbus.contracts.graph import START_EVENT, Operator, Signal
from triggerbus.contracts.messages import (
    CONTRACT_ERROR,
    EXECUTION_NOT_FOUND,
    ChunkCompleted,
    ChunkFailed,
    CloseExecution,
    EmitEvent,
    ErrorInfo,
    ExecutionClosed,
    FlowDataChanged,
    InvokeChunk,
    MailboxMessage,
    ParentRef,
    PauseForInterrupt,
    Reply,
    ResumeContext,
    ResumeInterrupt,
    SealExecution,
    StartExecution,
    StateWritten,
    StreamEnded,
    StreamItem,
    SubFlowClosed,
    TimerFired,
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
    StoredOutbox,
)
from triggerbus.contracts.snapshot import Interrupt, Node, QueuedInvocation, Snapshot

AUTO_CLOSE_TIMER = "auto_close"
APPLIED_IDS_KEPT = 4096
"""How many applied message ids a snapshot remembers; older duplicates fall to JetStream's
de-duplication window and to the node checks (a completed step cannot complete twice)."""


ANSWERS_KEPT = 256
"""How many answers to awaited requests a snapshot keeps for repeated chunk attempts."""


@dataclass(frozen=True)
class Transition:
    """The result of one message: the new snapshot (``None`` when rejected) and its outbox."""

    snapshot: Snapshot | None
    outbox: list[OutboxCommand]
    duplicate: bool = False
    rejected: str = ""
    deferred: bool = False
    """A chunk outcome arrived before effects its attempt sent: apply it again later."""
    rejected_as: str = CONTRACT_ERROR
    """The ``error_type`` a refusal is answered with; read only when ``rejected``."""

    def with_snapshot(self, snapshot: Snapshot) -> Transition:
        """This transition storing ``snapshot`` instead (``dataclasses.replace`` costs ten
        times as much, on a path taken by every traced message)."""
        return Transition(
            snapshot, self.outbox, self.duplicate, self.rejected, self.deferred, self.rejected_as
        )


def new_snapshot(index: GraphIndex, execution_id: str, *, now: float) -> Snapshot:
    """The snapshot of an execution that exists but has not received its start yet."""
    graph = index.graph
    return Snapshot(
        flow=graph.flow,
        execution_id=execution_id,
        fingerprint=graph.fingerprint,
        created_at=now,
    )


def apply(
    index: GraphIndex, snapshot: Snapshot | None, message: MailboxMessage, *, now: float
) -> Transition:
    """Apply one mailbox message. Never raises for bad input: a refusal is a ``rejected`` reason,
    answered as ``rejected_as``."""
    if snapshot is None:
        # State may be written before the start, as TriggerFlow allows; nothing else may.
        if not isinstance(message, StartExecution | StateWritten):
            # Readers of the previous release match this text (their hosts sent it as a
            # ContractError): keep it for a rolling upgrade.
            reason = f"no execution {message.execution_id!r}"
            return Transition(None, [], rejected=reason, rejected_as=EXECUTION_NOT_FOUND)
        snapshot = new_snapshot(index, message.execution_id, now=now)
    if message.id in snapshot.applied:
        if isinstance(message, EmitEvent | StateWritten) and message.reply_to:
            return _ask_again(index, snapshot, message, now)
        return Transition(snapshot, _answer_duplicate(snapshot, message), duplicate=True)
    if isinstance(message, ChunkCompleted | ChunkFailed) and _effects_pending(snapshot, message):
        return Transition(snapshot, [], deferred=True)
    work = _Work.begin(index, snapshot, now)
    _record_effect(work, message.id)
    match message:
        case StartExecution():
            _on_start(work, message)
        case ChunkCompleted():
            _on_chunk_completed(work, message)
        case ChunkFailed():
            _on_chunk_failed(work, message)
        case EmitEvent():
            _on_emit(work, message)
        case StateWritten():
            _on_state_written(work, message)
        case CloseExecution():
            _on_close(work, message)
        case TimerFired():
            _on_timer(work, message)
        case SealExecution():
            _on_seal(work, message)
        case FlowDataChanged():
            _on_flow_data(work, message)
        case SubFlowClosed():
            _on_sub_flow_closed(work, message)
        case PauseForInterrupt():
            _on_pause(work, message)
        case ResumeInterrupt():
            _on_resume(work, message)
        case _:
            assert_never(message)
    if not work.stale_timer:
        _settle_idle(work)
    return Transition(work.freeze(message.id), work.outbox)


def fail_oversized(
    index: GraphIndex,
    snapshot: Snapshot | None,
    message: MailboxMessage,
    *,
    now: float,
    reason: str,
) -> Transition:
    """What to store instead when applying ``message`` made a snapshot the bus cannot carry.

    No larger snapshot will ever fit, and retrying the message would fail the same way forever:
    the execution fails and closes (``SnapshotTooLargeError``, ``reason`` as its message),
    stored without what made it large (its state, nodes, queue, joins, answers and flow data),
    so that its close reaches the caller and its waiters.
    """
    base = snapshot or new_snapshot(index, message.execution_id, now=now)
    if base.lifecycle == "closed":
        return Transition(None, [], rejected=reason)  # nothing left to fail: refuse the message
    slim = msgspec.structs.replace(
        base, state={}, nodes={}, queue=[], running=[], joins={}, answers={}, flow_data={},
        outbox=StoredOutbox(), applied=base.applied[-ANSWERS_KEPT:],
    )  # fmt: skip
    work = _Work.begin(index, slim, now)
    if not work.get("started_at"):
        work.set(status="running", started_at=now)
    _fail(work, ErrorInfo(error_type="SnapshotTooLargeError", message=reason))
    return Transition(work.freeze(message.id), work.outbox)


def _effects_pending(snapshot: Snapshot, outcome: ChunkCompleted | ChunkFailed) -> bool:
    """Whether the outcome's attempt sent effects the actor has not applied yet (a redelivered
    state write, say, coming back behind the outcome)."""
    if not outcome.effects:
        return False
    node = snapshot.nodes.get(outcome.step)
    if node is None or node.kind != "chunk":
        return False  # finished or failed already: the outcome will be ignored anyway
    return not set(outcome.effects) <= set(node.effects)


def _record_effect(work: _Work, message_id: str) -> None:
    """Note on its chunk node that a message a chunk attempt sent (``<execution>:<step>:<n>``)
    has been applied, so the step's outcome can tell its effects are in."""
    prefix = f"{work.execution_id}:"
    if not message_id.startswith(prefix):
        return
    step_text, _, rest = message_id[len(prefix) :].partition(":")
    if not step_text.isdigit() or not rest or not rest.split("@")[0].isdigit():
        return
    node = work.nodes.get(int(step_text))
    if node is not None and node.kind == "chunk" and message_id not in node.effects:
        work.update(node, effects=[*node.effects, message_id])


def _answer_duplicate(snapshot: Snapshot, message: MailboxMessage) -> list[OutboxCommand]:
    """What a repeated message is told, applied once: a start that already ran is answered
    with the execution id; a pause or resume sent again with the interrupt as it stands."""
    reply_to = getattr(message, "reply_to", None)
    if not reply_to:
        return []
    if isinstance(message, StartExecution):
        return [SendReply(reply_to=reply_to, message=Reply(ok=True, value=message.execution_id))]
    if isinstance(message, PauseForInterrupt | ResumeInterrupt):
        interrupt = snapshot.interrupts.get(message.interrupt_id)
        value = msgspec.to_builtins(interrupt) if interrupt is not None else None
        return [SendReply(reply_to=reply_to, message=Reply(ok=interrupt is not None, value=value))]
    return []


def _ask_again(
    index: GraphIndex, snapshot: Snapshot, message: EmitEvent | StateWritten, now: float
) -> Transition:
    """A repeated chunk attempt sent an awaited request that was already applied: answer it
    from the stored answer, or redirect the pending answer to the new attempt's reply subject.
    The request itself is never applied twice."""
    assert message.reply_to
    if message.id in snapshot.answers:
        reply = SendReply(
            reply_to=message.reply_to, message=Reply(ok=True, value=snapshot.answers[message.id])
        )
        return Transition(snapshot, [reply], duplicate=True)
    pending = [n for n in snapshot.nodes.values() if n.reply_id == message.id and n.reply_to]
    if not pending:
        return Transition(snapshot, [], duplicate=True)
    work = _Work.begin(index, snapshot, now)
    work.update(pending[0], reply_to=message.reply_to)
    return Transition(work.freeze(message.id), work.outbox)


# --- the working copy ------------------------------------------------------------------------


def _copy_containers(value: Any, depth: int) -> Any:
    """``value`` with its dicts and lists copied ``depth`` levels down; deeper ones shared."""
    if depth <= 0:
        return value
    if value.__class__ is dict:
        return {k: _copy_containers(v, depth - 1) for k, v in value.items()}
    if value.__class__ is list:
        return [_copy_containers(v, depth - 1) for v in value]
    return value


@dataclass
class _Work:
    """A mutable copy of the snapshot for the length of one transition."""

    index: GraphIndex
    base: Snapshot
    now: float
    nodes: dict[int, Node]
    state: dict[str, Any]
    """Read it here; change it through :meth:`writable_state`."""
    joins: dict[str, Any]
    running: list[int]
    queue: list[QueuedInvocation]
    interrupts: dict[str, Interrupt]
    changes: dict[str, Any] = field(default_factory=dict)
    outbox: list[OutboxCommand] = field(default_factory=list)
    stale_timer: bool = False
    resume: ResumeContext | None = None
    """Set while a resume's continuation runs: chunks dispatched meanwhile see it."""
    state_shared: bool = True
    """Whether ``state`` is also the snapshot's, or an invocation's: copied before a change."""
    owned_joins: set[str] = field(default_factory=set)
    """Joins already copied in this transition (the others are still the snapshot's)."""

    @classmethod
    def begin(cls, index: GraphIndex, snapshot: Snapshot, now: float) -> _Work:
        return cls(
            index=index,
            base=snapshot,
            now=now,
            nodes=dict(snapshot.nodes),
            state=snapshot.state,
            joins=dict(snapshot.joins),
            running=list(snapshot.running),
            queue=list(snapshot.queue),
            interrupts=dict(snapshot.interrupts),
        )

    def get(self, name: str) -> Any:
        return self.changes.get(name, getattr(self.base, name))

    def writable_state(self) -> dict[str, Any]:
        """The state, to change in place.

        Copy on write: most steps change no state, and copying all of it into every
        transition and every invocation made a step's cost grow with the state's size.
        """
        if self.state_shared:
            self.state = copy_value(self.state)
            self.state_shared = False
        return self.state

    def writable_join(self, key: str, depth: int = 2) -> dict[str, Any] | None:
        """The join ``key``'s bookkeeping, to change in place; None when it has none.

        Copy on write: a fan-in's join holds every result that has arrived, so copying all
        joins into every transition made each arrival cost as much as all before it. The
        containers are copied on a join's first change, ``depth`` levels down (the join and
        its fields; a ``when`` join one more, the values of each trigger type); the results
        in them are shared, since nothing changes a result in place.
        """
        join = self.joins.get(key)
        if join is not None and key not in self.owned_joins:
            join = self.joins[key] = _copy_containers(join, depth)
            self.owned_joins.add(key)
        return join

    def shared_state(self) -> dict[str, Any]:
        """The state as it is now, for a message to carry (a later change copies it first)."""
        self.state_shared = True
        return self.state

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    @property
    def execution_id(self) -> str:
        return self.base.execution_id

    @property
    def closed(self) -> bool:
        return self.get("lifecycle") == "closed"

    @property
    def active(self) -> bool:
        """Started and not finished: running, or waiting on an interrupt."""
        return self.get("status") in ("running", "waiting")

    @property
    def waiting(self) -> list[str]:
        """Ids of the interrupts still waiting for ``continue_with``."""
        return [i for i, record in self.interrupts.items() if record.status == "waiting"]

    def new_node(self, **fields: Any) -> Node:
        node_id = self.get("next_node")
        self.set(next_node=node_id + 1)
        node = Node(id=node_id, **fields)
        self.nodes[node_id] = node
        return node

    def update(self, node: Node, **fields: Any) -> Node:
        node = msgspec.structs.replace(node, **fields)
        self.nodes[node.id] = node
        return node

    def observe(self, name: str, **attributes: Any) -> None:
        self.outbox.append(Observe(name=name, attributes=attributes))

    def reply(self, reply_to: str | None, message: Reply) -> None:
        if reply_to:
            message = msgspec.structs.replace(message, status=self.get("status"))
            self.outbox.append(SendReply(reply_to=reply_to, message=message))

    def remember_answer(self, message_id: str, value: Any) -> None:
        answers = dict(self.get("answers"))
        answers[message_id] = value
        while len(answers) > ANSWERS_KEPT:
            del answers[next(iter(answers))]
        self.set(answers=answers)

    def freeze(self, message_id: str) -> Snapshot:
        applied = [*self.base.applied, message_id][-APPLIED_IDS_KEPT:]
        return msgspec.structs.replace(
            self.base,
            **self.changes,
            nodes=self.nodes,
            state=self.state,
            joins=self.joins,
            running=self.running,
            queue=self.queue,
            interrupts=self.interrupts,
            applied=applied,
            outbox=StoredOutbox(message_id=message_id, commands=list(self.outbox)),
        )


# --- one function per message kind -----------------------------------------------------------


def _on_start(work: _Work, message: StartExecution) -> None:
    if work.get("status") != "created":
        work.reply(message.reply_to, Reply(ok=True, value=work.execution_id))
        return
    work.set(
        status="running",
        started_at=work.now,
        concurrency=message.concurrency,
        auto_close=message.auto_close,
        auto_close_timeout=message.auto_close_timeout,
        skip_exceptions=message.skip_exceptions,
        resources=message.resources,
        parent=message.parent,
        flow_data=message.flow_data,
        flow_data_revision=message.flow_data_revision,
    )
    for key, value in message.state.items():
        apply_state_op(work.writable_state(), "set", key, copy_value(value))
    work.observe("execution_started", flow=work.base.flow)
    _emit(
        work,
        Signal(type="event", name=START_EVENT),
        message.value,
        layers=(),
        reply_to=message.reply_to,
        reply_id=work.execution_id,
    )


def _on_chunk_completed(work: _Work, message: ChunkCompleted) -> None:
    node = _awaited_chunk(work, message.step)
    if node is None:
        return  # a late duplicate, a step never dispatched, or the execution failed
    _release_permit(work, node.id)
    if node.interrupt:
        # The chunk paused: its downstream runs when the interrupt is resumed, not now.
        work.observe("chunk_succeeded", chunk=node.chunk, step=node.id, paused=node.interrupt)
        _finish(work, work.update(node, ready=True, result=message.result, pending=0))
        return
    node = work.update(node, ready=True, result=message.result, pending=1)
    work.observe("chunk_succeeded", chunk=node.chunk, step=node.id)
    spec = work.index.chunks[node.chunk]
    child = _emit(
        work,
        Signal(type="event", name=spec.trigger),
        message.result,
        layers=node.layers,
        parent=node.id,
        slot=0,
    )
    del child


def _on_chunk_failed(work: _Work, message: ChunkFailed) -> None:
    node = _awaited_chunk(work, message.step)
    if node is None:
        return
    _release_permit(work, node.id)
    error = ErrorInfo(
        chunk=node.chunk,
        error_type=message.error_type,
        message=message.message,
        traceback=message.traceback,
    )
    work.observe("chunk_failed", chunk=node.chunk, step=node.id, error_type=message.error_type)
    if work.get("skip_exceptions"):
        node = work.update(node, ready=True, result=None)
        _finish(work, node)
        return
    _fail(work, error)


def _awaited_chunk(work: _Work, step: int) -> Node | None:
    """The chunk node a completion or failure may settle: dispatched and not yet returned.

    A step still held in the concurrency queue was never invoked, so nothing can have run it;
    settling it would leave a queued invocation pointing at a node that no longer exists.
    """
    node = work.nodes.get(step)
    if node is None or node.kind != "chunk" or node.ready or not node.started:
        return None
    return node


def _on_emit(work: _Work, message: EmitEvent) -> None:
    if work.closed or (message.step is None and work.get("lifecycle") == "sealed"):
        lifecycle = work.get("lifecycle")
        work.observe("emit_ignored", event=message.event, lifecycle=lifecycle)
        work.reply(message.reply_to, Reply(ok=True, value=None, ignored=lifecycle))
        return
    if message.reply_to and message.step is not None:
        _release_permit(work, message.step)
    work.observe("event_emitted", event=message.event, trigger_type=message.trigger_type)
    _emit(
        work,
        Signal(type=message.trigger_type, name=message.event),
        message.value,
        layers=message.layers,
        reply_to=message.reply_to,
        reply_id=message.id,
    )


def _on_state_written(work: _Work, message: StateWritten) -> None:
    if work.closed:
        work.reply(message.reply_to, Reply(ok=True, value=[], ignored="closed"))
        return
    sealed = work.get("lifecycle") == "sealed"
    if message.step is None and sealed and work.get("status") != "created":
        work.observe("state_write_ignored", key=message.key, lifecycle="sealed")
        work.reply(message.reply_to, Reply(ok=True, value=[], ignored="sealed"))
        return
    # Deleting a key that is not there changes nothing, and TriggerFlow fires no listener.
    changed = message.op != "delete" or has_path(work.state, message.key)
    new_value = apply_state_op(work.writable_state(), message.op, message.key, message.value)
    work.observe("state_written", key=message.key, op=message.op)
    if not message.emit or not changed or not work.active:
        work.reply(message.reply_to, Reply(ok=True, value=[]))
        return
    if message.reply_to and message.step is not None:
        _release_permit(work, message.step)
    _emit(
        work,
        Signal(type="runtime_data", name=message.key),
        new_value,
        layers=message.layers,
        reply_to=message.reply_to,
        reply_id=message.id,
    )


def _on_close(work: _Work, message: CloseExecution) -> None:
    if work.closed:
        work.reply(message.reply_to, Reply(ok=True, value=close_snapshot(work.base)))
        return
    waiting = work.waiting
    if waiting and message.pending_interrupts != "cancel":
        error = ErrorInfo(
            error_type="PendingInterruptsError",
            message=f"can not close execution {work.execution_id} while interrupts are "
            f"waiting: {sorted(waiting)}; resume them with continue_with(...) or close with "
            "pending_interrupts='cancel'",
        )
        work.observe("close_rejected", waiting=len(waiting))
        work.reply(message.reply_to, Reply(ok=False, error=error))
        return
    if waiting:
        _cancel(work, message)
        return
    waiters = list(work.get("close_waiters"))
    if message.reply_to:
        waiters.append(message.reply_to)
    work.set(
        close_requested=True,
        close_reason=message.reason,
        lifecycle="sealed",
        close_waiters=waiters,
    )
    if work.get("status") == "created":
        work.set(status="cancelled")
        _close(work, message.reason)


def _on_timer(work: _Work, message: TimerFired) -> None:
    if message.timer != AUTO_CLOSE_TIMER or message.generation != work.get("timer_generation"):
        # A timer from an earlier idle period. It must not re-arm the idle timer: the current
        # one is still pending, and re-arming on every stale firing would postpone the close
        # forever (each re-armed timer turns stale in its turn).
        work.stale_timer = True
        return
    if not work.closed and not work.nodes and not work.queue and not work.waiting:
        _close(work, "auto_close_idle_timeout")


def _on_seal(work: _Work, message: SealExecution) -> None:
    """Seal: events and state writes from outside are ignored; in-flight work continues and
    the execution does not close by idleness. Unseal reopens it (not once closing began)."""
    lifecycle = work.get("lifecycle")
    if lifecycle == "closed" or (not message.sealed and work.get("close_requested")):
        work.observe("seal_ignored", lifecycle=lifecycle, sealed=message.sealed)
        work.reply(message.reply_to, Reply(ok=True, value=lifecycle, ignored=lifecycle))
        return
    lifecycle = "sealed" if message.sealed else "open"
    work.set(lifecycle=lifecycle)
    if lifecycle == "sealed":
        # An armed idle timer goes stale: a sealed execution waits for its close.
        work.set(timer_generation=work.get("timer_generation") + 1)
    work.observe("execution_sealed" if message.sealed else "execution_unsealed",
                 reason=message.reason)
    work.reply(message.reply_to, Reply(ok=True, value=lifecycle))


def _on_flow_data(work: _Work, message: FlowDataChanged) -> None:
    """A flow-data change fires this execution's ``flow_data`` listeners once per revision."""
    if work.closed:
        return
    if message.revision > work.get("flow_data_revision"):
        work.set(flow_data=message.data, flow_data_revision=message.revision)
    if work.get("lifecycle") != "open" or not work.active:
        return
    work.observe("flow_data_changed", key=message.key, revision=message.revision)
    _emit(work, Signal(type="flow_data", name=message.key), message.value, layers=())


def _on_sub_flow_closed(work: _Work, message: SubFlowClosed) -> None:
    node = work.nodes.get(message.step)
    if node is None or node.kind != "operator" or node.ready or work.closed:
        return
    operator = work.index.operators.get(node.operator)
    if operator is None or operator.kind != "sub_flow":
        return
    if message.status == "failed" and message.error is not None:
        error = message.error
        work.observe("sub_flow_failed", child=message.child_execution_id)
        if work.get("skip_exceptions"):
            _finish(work, work.update(node, ready=True, result=None))
            return
        _fail(work, error)
        return
    value = _write_back(work, operator.options.get("write_back"), node.result, message.snapshot)
    node = work.update(node, ready=True, pending=1)
    _emit(
        work,
        Signal(type="event", name=str(operator.options["emit"])),
        value,
        layers=node.layers,
        parent=node.id,
    )


# --- emission and operators ------------------------------------------------------------------


def _emit(
    work: _Work,
    signal: Signal,
    value: Any,
    *,
    layers: tuple[str, ...],
    parent: int | None = None,
    slot: int = 0,
    reply_to: str | None = None,
    reply_id: str = "",
) -> int:
    """Run every handler of ``signal``; the emission node finishes when they all have."""
    handlers = work.index.handlers_for(signal)
    node = work.new_node(
        kind="emission",
        parent=parent,
        slot=slot,
        pending=len(handlers),
        slots=[None] * len(handlers),
        reply_to=reply_to,
        reply_id=reply_id,
    )
    for position, operator in enumerate(handlers):
        if work.closed:
            break
        _run_operator(work, operator, signal, value, layers, parent=node.id, slot=position)
    current = work.nodes.get(node.id)
    if current is not None and current.pending == 0:
        _finish(work, current)
    return node.id


def _run_operator(
    work: _Work,
    operator: Operator,
    signal: Signal,
    value: Any,
    layers: tuple[str, ...],
    *,
    parent: int,
    slot: int,
) -> None:
    match operator.kind:
        case "chunk":
            _run_chunk(work, operator, signal, value, layers, parent, slot)
        case "batch_fanout":
            _run_batch_fanout(work, operator, value, layers, parent, slot)
        case "batch_collect":
            _run_batch_collect(work, operator, signal, value, layers, parent, slot)
        case "when_gate":
            _run_when_gate(work, operator, signal, value, layers, parent, slot)
        case "result_sink":
            _run_result_sink(work, value, parent, slot)
        case "for_each_split":
            _run_for_each_split(work, operator, value, layers, parent, slot)
        case "for_each_collect":
            _run_for_each_collect(work, operator, value, layers, parent, slot)
        case "match_route":
            _run_match_route(work, operator, signal, value, layers, parent, slot)
        case "match_collect":
            _run_match_collect(work, operator, value, layers, parent, slot)
        case "collect_branch":
            _run_collect_branch(work, operator, value, layers, parent, slot)
        case "sub_flow":
            _run_sub_flow(work, operator, value, layers, parent, slot)
        case _:
            assert_never(operator.kind)


def _run_chunk(
    work: _Work,
    operator: Operator,
    signal: Signal,
    value: Any,
    layers: tuple[str, ...],
    parent: int | None,
    slot: int,
    *,
    reply_to: str | None = None,
    reply_id: str = "",
) -> None:
    chunk = str(operator.options["chunk"])
    node = work.new_node(
        kind="chunk",
        parent=parent,
        slot=slot,
        ready=False,
        operator=operator.id,
        chunk=chunk,
        layers=layers,
        reply_to=reply_to,
        reply_id=reply_id,
    )
    queued = QueuedInvocation(
        node=node.id,
        operator=operator.id,
        value=value,
        trigger_event=signal.name,
        trigger_type=signal.type,
        layers=layers,
        resume=work.resume,
    )
    cap = work.get("concurrency")
    if cap is not None and cap > 0 and len(work.running) >= cap:
        work.queue.append(queued)
        return
    _dispatch(work, queued)


def _dispatch(work: _Work, queued: QueuedInvocation) -> None:
    node = work.nodes[queued.node]
    spec = work.index.chunks[node.chunk]
    work.running.append(node.id)
    work.nodes[node.id] = msgspec.structs.replace(node, started=True)
    message = InvokeChunk(
        id=f"{work.execution_id}:{node.id}:0",
        flow=work.base.flow,
        execution_id=work.execution_id,
        fingerprint=work.base.fingerprint,
        chunk=node.chunk,
        step=node.id,
        value=queued.value,
        trigger_event=queued.trigger_event,
        trigger_type=queued.trigger_type,
        layers=queued.layers,
        state=work.shared_state(),
        resources=work.get("resources"),
        sent_at=work.now,
        stream_to=work.get("parent"),
        flow_data=work.get("flow_data"),
        resume=queued.resume,
    )
    work.outbox.append(Invoke(chunk_token=spec.token, message=message))
    work.observe("chunk_invoked", chunk=node.chunk, step=node.id)


def _release_permit(work: _Work, step: int) -> None:
    """A chunk that returned, failed or awaits an emit gives its slot to the next in queue."""
    if step not in work.running:
        return
    work.running.remove(step)
    cap = work.get("concurrency")
    while work.queue and (cap is None or cap <= 0 or len(work.running) < cap):
        _dispatch(work, work.queue.pop(0))


def _run_batch_fanout(
    work: _Work, operator: Operator, value: Any, layers: tuple[str, ...], parent: int, slot: int
) -> None:
    branches = [str(b) for b in operator.options["branches"]]
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    inner = (*layers, f"{operator.id}@{node.id}")
    cap = operator.options.get("concurrency")
    first = branches if not cap or cap <= 0 else branches[: int(cap)]
    rest = branches[len(first) :]
    node = work.update(
        node, ready=not rest, pending=len(first), result=value, layers=inner, queued=rest
    )
    for branch in first:
        _emit(work, Signal(type="event", name=branch), value, layers=inner, parent=node.id)
    current = work.nodes.get(node.id)
    if current is not None and current.pending == 0 and current.ready:
        _finish(work, current)


def _release_next_branch(work: _Work, node: Node) -> Node:
    """A batch or for_each with a concurrency cap releases one waiting branch (or item) per
    finished one."""
    if not node.queued:
        return node
    head, *remaining = node.queued
    node = work.update(node, pending=node.pending + 1, queued=remaining, ready=not remaining)
    operator = work.index.operators[node.operator]
    if operator.kind == "for_each_split":
        index, item = head
        signal = Signal(type="event", name=str(operator.options["send"]))
        _emit(work, signal, item, layers=(*node.layers, str(index)), parent=node.id)
    else:
        signal = Signal(type="event", name=str(head))
        _emit(work, signal, node.result, layers=node.layers, parent=node.id)
    return work.nodes.get(node.id, node)


def _run_batch_collect(
    work: _Work,
    operator: Operator,
    signal: Signal,
    value: Any,
    layers: tuple[str, ...],
    parent: int,
    slot: int,
) -> None:
    results_by_trigger: dict[str, str] = operator.options["results"]
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    if signal.name not in results_by_trigger:
        _finish(work, node)
        return
    key = f"{operator.id}|{'.'.join(layers) or '__root__'}"
    join = work.writable_join(key) or {
        "results": {name: None for name in operator.options["keys"]},
        "done": [],
    }
    join["results"][results_by_trigger[signal.name]] = value
    if signal.name not in join["done"]:
        join["done"].append(signal.name)
    work.joins[key] = join
    if len(join["done"]) < len(results_by_trigger):
        _finish(work, node)
        return
    del work.joins[key]
    node = work.update(node, pending=1)
    _emit(
        work,
        Signal(type="event", name=str(operator.options["emit"])),
        join["results"],
        layers=layers[:-1],
        parent=node.id,
    )


def _run_when_gate(
    work: _Work,
    operator: Operator,
    signal: Signal,
    value: Any,
    layers: tuple[str, ...],
    parent: int,
    slot: int,
) -> None:
    mode = operator.options["mode"]
    emit = Signal(type="event", name=str(operator.options["emit"]))
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    if mode in ("or", "simple_or"):
        payload = value if mode == "simple_or" else [signal.type, signal.name, value]
        node = work.update(node, pending=1)
        _emit(work, emit, payload, layers=layers, parent=node.id)
        return
    key = f"{operator.id}|{'.'.join(layers) or '__root__'}"
    join = work.writable_join(key, depth=3) or {"values": {}, "filled": []}
    join["values"].setdefault(signal.type, {})[signal.name] = value
    marker = f"{signal.type}\x1f{signal.name}"
    if marker not in join["filled"]:
        join["filled"].append(marker)
    work.joins[key] = join
    expected = operator.options["signals"]
    if len(join["filled"]) < len(expected):
        _finish(work, node)
        return
    del work.joins[key]
    ordered: dict[str, dict[str, Any]] = {}
    for trigger_type, name in expected:
        ordered.setdefault(trigger_type, {})[name] = join["values"][trigger_type][name]
    node = work.update(node, pending=1)
    _emit(work, emit, ordered, layers=layers, parent=node.id)


def _scope(operator_id: str, layers: tuple[str, ...]) -> str:
    return f"{operator_id}|{'.'.join(layers) or '__root__'}"


def _emit_on(
    work: _Work, node: Node, event: str, value: Any, layers: tuple[str, ...]
) -> None:
    """Let ``node`` continue with one emission of ``event`` as its only child."""
    node = work.update(node, pending=1)
    _emit(work, Signal(type="event", name=event), value, layers=layers, parent=node.id)


def _run_for_each_split(
    work: _Work, operator: Operator, value: Any, layers: tuple[str, ...], parent: int, slot: int
) -> None:
    """Send each item on its own layer; a list is split, anything else is one item."""
    options = operator.options
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    items = list(value) if isinstance(value, list) else [value]
    if not items:
        _emit_on(work, node, str(options["end"]), [], layers)
        return
    inner = (*layers, f"{operator.id}@{node.id}")
    work.joins[_scope(str(options["collect"]), inner)] = {
        "results": [None] * len(items),
        "filled": [False] * len(items),
    }
    cap = options.get("concurrency")
    first = len(items) if not cap or cap <= 0 else min(int(cap), len(items))
    rest = [[index, items[index]] for index in range(first, len(items))]
    node = work.update(node, ready=not rest, pending=first, layers=inner, queued=rest)
    send = Signal(type="event", name=str(options["send"]))
    for index in range(first):
        _emit(work, send, items[index], layers=(*inner, str(index)), parent=node.id)
    current = work.nodes.get(node.id)
    if current is not None and current.pending == 0 and current.ready:
        _finish(work, current)


def _run_for_each_collect(
    work: _Work, operator: Operator, value: Any, layers: tuple[str, ...], parent: int, slot: int
) -> None:
    """Keep an item's result; when every item of the run has one, continue with the list."""
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    join = work.writable_join(_scope(operator.id, layers[:-1])) if len(layers) >= 2 else None
    index = int(layers[-1]) if join is not None and layers[-1].isdigit() else -1
    if join is None or not 0 <= index < len(join["results"]):
        _finish(work, node)  # not an item of a live run (a repeated arrival after the end)
        return
    join["results"][index] = value
    join["filled"][index] = True
    if not all(join["filled"]):
        _finish(work, node)
        return
    del work.joins[_scope(operator.id, layers[:-1])]
    _emit_on(work, node, str(operator.options["end"]), join["results"], layers[:-2])


def _run_match_route(
    work: _Work,
    operator: Operator,
    signal: Signal,
    value: Any,
    layers: tuple[str, ...],
    parent: int,
    slot: int,
) -> None:
    """Pick the cases that hold and send the value down their branches.

    Value cases are compared here. When a case is a callable (user code), the match's judge
    chunk runs first and this operator is called again with its verdict.
    """
    options = operator.options
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    judge = str(options.get("judge") or "")
    if judge and signal.name == work.index.chunks[judge].trigger:
        verdict = value if isinstance(value, dict) else {}
        hits = [int(i) for i in verdict.get("hits", [])]
        value = verdict.get("value")
    elif judge:
        node = work.update(node, pending=1)
        judge_operator = work.index.chunk_operators[judge]
        _run_chunk(work, judge_operator, signal, value, layers, node.id, 0)
        return
    else:
        hits = []
        for index, case in enumerate(options["cases"]):
            if "value" in case and case["value"] == value:
                hits.append(index)
                if options["mode"] == "hit_first":
                    break
    inner = (*layers, f"{operator.id}@{node.id}")
    cases = options["cases"]
    if not hits:
        if options.get("else"):
            _emit_on(work, node, str(options["else"]), value, inner)
        else:
            _emit_on(work, node, str(options["result"]), value, layers)
        return
    if options["mode"] == "hit_first":
        _emit_on(work, node, str(cases[hits[0]]["signal"]), value, inner)
        return
    work.joins[_scope(str(options["collect"]), inner)] = {
        "results": [None] * len(hits),
        "filled": [False] * len(hits),
    }
    node = work.update(node, pending=len(hits))
    for position, index in enumerate(hits):
        case_signal = Signal(type="event", name=str(cases[index]["signal"]))
        _emit(work, case_signal, value, layers=(*inner, str(position)), parent=node.id)
    current = work.nodes.get(node.id)
    if current is not None and current.pending == 0:
        _finish(work, current)


def _run_match_collect(
    work: _Work, operator: Operator, value: Any, layers: tuple[str, ...], parent: int, slot: int
) -> None:
    """A branch ended: ``hit_all`` joins the hit branches in case order; otherwise the
    branch's value continues."""
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    if not layers:
        _finish(work, node)
        return
    result = str(operator.options["result"])
    key = _scope(operator.id, layers[:-1])
    join = work.writable_join(key) if operator.options.get("mode") == "hit_all" else None
    if join is not None and layers[-1].isdigit() and int(layers[-1]) < len(join["results"]):
        join["results"][int(layers[-1])] = value
        join["filled"][int(layers[-1])] = True
        if not all(join["filled"]):
            _finish(work, node)
            return
        del work.joins[key]
        _emit_on(work, node, result, join["results"], layers[:-2])
        return
    _emit_on(work, node, result, value, layers[:-1])


def _run_collect_branch(
    work: _Work, operator: Operator, value: Any, layers: tuple[str, ...], parent: int, slot: int
) -> None:
    """Fill this branch's slot of a named collection; emit once every branch has a value."""
    options = operator.options
    node = work.new_node(kind="operator", parent=parent, slot=slot, operator=operator.id)
    key = _scope(f"collect:{options['collection']}", layers)
    join = work.writable_join(key) or {"values": {}}
    join["values"][str(options["branch"])] = value
    work.joins[key] = join
    branches = [str(b) for b in options["branches"]]
    if any(branch not in join["values"] for branch in branches):
        _finish(work, node)
        return
    collected = {branch: join["values"][branch] for branch in branches}
    if options.get("mode") == "filled_then_empty":
        del work.joins[key]
    _emit_on(work, node, str(options["emit"]), collected, layers)


def _run_sub_flow(
    work: _Work, operator: Operator, value: Any, layers: tuple[str, ...], parent: int, slot: int
) -> None:
    """Start the child flow as its own execution; this node waits for its ``SubFlowClosed``."""
    options = operator.options
    node = work.new_node(
        kind="operator",
        parent=parent,
        slot=slot,
        operator=operator.id,
        ready=False,
        result=value,
        layers=layers,
    )
    child = f"{work.execution_id}-s{node.id}"
    capture = options.get("capture") or {}
    sources = {"value": value, "runtime_data": work.state, "resources": work.get("resources")}
    child_input = value
    child_state: dict[str, Any] = {}
    if "input" in capture:
        child_input = _bind(capture["input"], sources, child_input)
    for target, source in (capture.get("runtime_data") or {}).items():
        apply_state_op(child_state, "set", target, _read(source, sources))
    start = StartExecution(
        id=f"{child}:start",
        execution_id=child,
        value=child_input,
        fingerprint=str(options.get("fingerprint", "")),
        concurrency=options.get("concurrency"),
        auto_close=True,
        auto_close_timeout=0.0,
        skip_exceptions=work.get("skip_exceptions"),
        resources=work.get("resources"),
        state=child_state,
        parent=_child_parent_ref(work, node.id),
        sent_at=work.now,
    )
    work.outbox.append(SendMailbox(flow=str(options["flow"]), message=start))
    work.observe("sub_flow_started", child=child, flow=str(options["flow"]))


def _child_parent_ref(work: _Work, step: int) -> ParentRef:
    own: ParentRef | None = work.get("parent")
    stream_flow, stream_execution = own.stream_target() if own else ("", "")
    return ParentRef(
        flow=work.base.flow,
        execution_id=work.execution_id,
        step=step,
        stream_flow=stream_flow,
        stream_execution_id=stream_execution,
    )


_MISSING: Any = object()


def _read(path: str, sources: dict[str, Any]) -> Any:
    """``scope.a.b`` from the sources; a missing path reads as ``None``."""
    scope, _, rest = str(path).partition(".")
    current = sources.get(scope)
    for segment in rest.split(".") if rest else []:
        current = current.get(segment) if isinstance(current, dict) else None
    return copy_value(current)


def _bind(binding: Any, sources: dict[str, Any], base: Any) -> Any:
    """A ``value``/``input`` binding: one source path, or ``{target path: source path}``."""
    if isinstance(binding, str):
        return _read(binding, sources)
    result: dict[str, Any] = copy_value(base) if isinstance(base, dict) else {}
    for target, source in binding.items():
        apply_state_op(result, "set", target, _read(source, sources))
    return result


def _write_back(
    work: _Work, write_back: Any, parent_value: Any, snapshot: dict[str, Any]
) -> Any:
    """The value the parent continues with, and the state it takes back from the child.

    Without ``write_back`` the parent continues with the child's ``$final_result`` (or its
    close snapshot when it has none). ``result.x`` reads the child's final result first,
    then its snapshot.
    """
    final = snapshot.get("$final_result", _MISSING)
    if not write_back:
        return snapshot if final is _MISSING else final

    def result_source(path: str) -> Any:
        scope, _, rest = str(path).partition(".")
        if scope != "result":
            return None
        for root in ([final] if final is not _MISSING else []) + [snapshot]:
            current: Any = root
            found = True
            for segment in rest.split(".") if rest else []:
                if isinstance(current, dict) and segment in current:
                    current = current[segment]
                else:
                    found = False
                    break
            if found:
                return copy_value(current)
        return None

    value = parent_value
    binding = write_back.get("value")
    if isinstance(binding, str):
        value = result_source(binding)
    elif isinstance(binding, dict):
        value = copy_value(parent_value) if isinstance(parent_value, dict) else {}
        for target, source in binding.items():
            apply_state_op(value, "set", target, result_source(source))
    for target, source in (write_back.get("runtime_data") or {}).items():
        apply_state_op(work.writable_state(), "set", target, result_source(source))
    return value


def _run_result_sink(work: _Work, value: Any, parent: int, slot: int) -> None:
    if not work.get("has_result"):
        work.set(result=value, has_result=True)
    node = work.new_node(kind="operator", parent=parent, slot=slot)
    _finish(work, node)


# --- finishing, failing, closing ---------------------------------------------------------------


def _finish(work: _Work, node: Node) -> None:
    """Remove a finished node and hand its result up the tree, finishing parents in turn."""
    while True:
        work.nodes.pop(node.id, None)
        # An emission answers with its direct handlers' results, in registration order, or
        # None when nobody listened (as TriggerFlow's emit does).
        result = (node.slots or None) if node.kind == "emission" else node.result
        if node.kind == "operator":
            result = None
        if node.reply_to:
            work.reply(node.reply_to, Reply(ok=True, value=result))
            if node.reply_id:
                work.remember_answer(node.reply_id, result)
        if node.parent is None:
            return
        parent = work.nodes.get(node.parent)
        if parent is None:
            return
        slots = list(parent.slots)
        if node.slot < len(slots):
            slots[node.slot] = result
        parent = work.update(parent, slots=slots, pending=parent.pending - 1)
        if parent.kind == "operator" and parent.queued and not parent.ready:
            parent = _release_next_branch(work, parent)
        if parent.pending > 0 or not parent.ready or parent.id not in work.nodes:
            return
        node = parent


def _fail(work: _Work, error: ErrorInfo) -> None:
    """A chunk failed and exceptions are not skipped: stop everything and close as failed."""
    for node in work.nodes.values():
        if node.reply_to:
            work.reply(node.reply_to, Reply(ok=False, error=error))
    work.nodes.clear()
    work.queue.clear()
    work.running.clear()
    work.set(status="failed", error=error)
    work.observe("execution_failed", chunk=error.chunk, error_type=error.error_type)
    _close(work, "failed")


def _settle_idle(work: _Work) -> None:
    """When nothing is in flight: close if asked to, else arm the auto-close idle timer."""
    if work.closed or work.nodes or work.queue or work.get("status") != "running":
        return  # in flight, not started, finished, or waiting on an interrupt
    if work.get("close_requested"):
        _close(work, work.get("close_reason") or "manual")
        return
    if not work.get("auto_close") or work.get("lifecycle") == "sealed":
        return
    timeout = work.get("auto_close_timeout")
    if timeout is None:
        return
    if timeout <= 0:
        _close(work, "auto_close_idle_timeout")
        return
    generation = work.get("timer_generation") + 1
    work.set(timer_generation=generation)
    work.outbox.append(
        ScheduleTimer(
            timer=AUTO_CLOSE_TIMER,
            generation=generation,
            delay=timeout,
            due_at=work.now + timeout,
        )
    )


def _close(work: _Work, reason: str) -> None:
    status = work.get("status")
    if status == "running":
        status = "completed"
    for interrupt_id in work.waiting:
        work.interrupts[interrupt_id] = msgspec.structs.replace(
            work.interrupts[interrupt_id], status="cancelled"
        )
    work.set(status=status, lifecycle="closed", close_reason=reason, closed_at=work.now)
    snapshot = close_snapshot(
        msgspec.structs.replace(work.base, **work.changes, state=work.state)
    )
    error = work.get("error")
    for waiter in work.get("close_waiters"):
        work.reply(waiter, Reply(ok=True, value=snapshot))
    work.set(close_waiters=[])
    parent: ParentRef | None = work.get("parent")
    if not work.get("stream_ended") and parent is None:
        end = StreamEnded(id=f"{work.execution_id}:stream:end", execution_id=work.execution_id)
        work.outbox.append(AppendStream(message=end))
        work.set(stream_ended=True)
    closed = ExecutionClosed(
        execution_id=work.execution_id,
        status=status,
        snapshot=snapshot,
        error=error,
        started_at=work.get("started_at") or 0.0,
        closed_at=work.now,
        close_reason=reason,
    )
    work.outbox.append(NotifyClosed(message=closed))
    if parent is not None:
        notice = SubFlowClosed(
            id=f"{parent.execution_id}:{parent.step}:sub_flow_closed",
            execution_id=parent.execution_id,
            step=parent.step,
            child_execution_id=work.execution_id,
            status=status,
            snapshot=snapshot,
            error=error,
            sent_at=work.now,
        )
        work.outbox.append(SendMailbox(flow=parent.flow, message=notice))
    work.observe("execution_closed", status=status, reason=reason)


# --- human in the loop: pause_for / continue_with ------------------------------------------------


def _on_pause(work: _Work, message: PauseForInterrupt) -> None:
    """A running chunk waits for outside input: record the interrupt, status ``waiting``.

    The chunk node stays until the chunk returns, then finishes without emitting its trigger
    (``_on_chunk_completed``); ``continue_with`` continues the flow from the interrupt.
    """
    existing = work.interrupts.get(message.interrupt_id)
    if existing is not None and existing.source_step == message.step:
        # The same pause again (a redelivered attempt, or a send whose answer was lost):
        # answered with the interrupt as it stands, even if it was resumed meanwhile.
        work.reply(message.reply_to, Reply(ok=True, value=interrupt_record(existing)))
        return
    node = work.nodes.get(message.step)
    problem = ""
    if work.closed:
        problem = "the execution is closed"
    elif node is None or node.kind != "chunk" or not node.started or node.ready:
        problem = f"step {message.step} is not a running chunk"
    if not problem and existing is not None and existing.status == "waiting":
        problem = f"interrupt {message.interrupt_id!r} is already waiting"
    resume_to = message.resume_to
    if not problem and not _valid_resume_to(resume_to):
        problem = f"resume_to must be 'next', 'self' or {{'event': name}}, not {resume_to!r}"
    limit = message.max_resumes
    if not problem and resume_to == "self" and limit is not None and (
        message.resume_count >= limit
    ):
        problem = (
            f"self resume limit reached for interrupt {message.interrupt_id!r}: "
            f"resume_count={message.resume_count}, max_resumes={limit}"
        )
    if problem:
        error = ErrorInfo(error_type="InterruptError", message=f"can not pause: {problem}")
        work.reply(message.reply_to, Reply(ok=False, error=error))
        return
    assert node is not None
    spec = work.index.chunks[node.chunk]
    source = msgspec.to_builtins(message.source_signal) if message.source_signal else None
    interrupt = Interrupt(
        id=message.interrupt_id,
        type=message.type,
        payload=message.payload,
        resume_event=message.resume_event,
        resume_to=resume_to,
        source_execution_id=work.execution_id,
        source_flow_name=work.base.flow,
        source_operator_id=node.operator,
        source_chunk=node.chunk,
        source_step=node.id,
        source_signal=source,
        continuation_event=spec.trigger,
        resume_count=message.resume_count if resume_to == "self" else 0,
        max_resumes=limit if resume_to == "self" else None,
        created_at=work.now,
    )
    work.interrupts[interrupt.id] = interrupt
    work.update(node, interrupt=interrupt.id)
    work.set(status="waiting")
    record = interrupt_record(interrupt)
    _stream_item(
        work,
        f"{message.id}:pause",
        {
            "type": "interrupt",
            "action": "pause",
            "execution_id": work.execution_id,
            "interrupt": record,
            "signal": source,
        },
    )
    # The Event Center's names: the interrupt itself, and the execution now waiting on it.
    work.observe("interrupt", chunk=node.chunk, step=node.id, interrupt=interrupt.id)
    work.observe("execution_waiting", interrupt=interrupt.id)
    work.reply(message.reply_to, Reply(ok=True, value=record))


def _on_resume(work: _Work, message: ResumeInterrupt) -> None:
    """Answer a waiting interrupt and continue where its ``resume_to`` says."""
    lifecycle = work.get("lifecycle")
    if lifecycle != "open":
        work.observe("resume_ignored", lifecycle=lifecycle, interrupt=message.interrupt_id)
        work.reply(message.reply_to, Reply(ok=True, value=None, ignored=lifecycle))
        return
    interrupt = work.interrupts.get(message.interrupt_id)
    request = message.resume_request_id
    refusal: tuple[str, str] | None = None
    if interrupt is None:
        refusal = ("InterruptNotFoundError", f"interrupt {message.interrupt_id!r} not found")
    elif request is not None and request in interrupt.resume_requests:
        if interrupt.resume_requests[request] != message.value:
            refusal = (
                "ResumeConflictError",
                f"interrupt {message.interrupt_id!r} was already resumed by request "
                f"{request!r} with a different value",
            )
        else:  # the same request again: answered, applied once
            work.reply(message.reply_to, Reply(ok=True, value=interrupt_record(interrupt)))
            return
    elif interrupt.status != "waiting":
        refusal = (
            "InterruptNotWaitingError",
            f"interrupt {message.interrupt_id!r} is not waiting (it is {interrupt.status})",
        )
    count = interrupt.resume_count if interrupt is not None else 0
    if refusal is None and interrupt is not None and interrupt.resume_to == "self":
        count += 1
        if interrupt.max_resumes is not None and count > interrupt.max_resumes:
            refusal = (
                "ResumeLimitError",
                f"self resume limit reached for interrupt {message.interrupt_id!r}: "
                f"resume_count={count}, max_resumes={interrupt.max_resumes}",
            )
    if refusal is not None:
        error_type, reason = refusal
        text = f"can not continue execution {work.execution_id}: {reason}"
        work.observe("resume_refused", interrupt=message.interrupt_id, error_type=error_type)
        work.reply(message.reply_to, Reply(ok=False, error=ErrorInfo(error_type=error_type,
                                                                      message=text)))
        return
    assert interrupt is not None
    requests = dict(interrupt.resume_requests)
    if request is not None:
        requests[request] = message.value
    interrupt = msgspec.structs.replace(
        interrupt,
        status="resumed",
        resume_value=message.value,
        resumed_at=work.now,
        resume_request_id=request,
        resumed_by=message.actor,
        resume_count=count,
        resume_requests=requests,
    )
    work.interrupts[interrupt.id] = interrupt
    work.set(status="waiting" if work.waiting else "running")
    record = interrupt_record(interrupt)
    _stream_item(
        work,
        f"{message.id}:resume",
        {
            "type": "interrupt",
            "action": "resume",
            "execution_id": work.execution_id,
            "interrupt": record,
            "value": message.value,
        },
    )
    work.observe("execution_resumed", interrupt=interrupt.id, resume_to=str(interrupt.resume_to))
    if message.settle and message.reply_to:
        # Answered by the continuation's node when it finishes, as an awaited emit is.
        _continue_from(work, interrupt, message.value, message.reply_to, message.id)
        return
    work.reply(message.reply_to, Reply(ok=True, value=record))
    _continue_from(work, interrupt, message.value)


def _continue_from(
    work: _Work,
    interrupt: Interrupt,
    value: Any,
    reply_to: str | None = None,
    reply_id: str = "",
) -> None:
    signal = interrupt.source_signal or {}
    layers = tuple(str(layer) for layer in signal.get("layers") or ())
    work.resume = ResumeContext(
        interrupt_id=interrupt.id,
        value=value,
        interrupt=interrupt_record(interrupt),
        origin_signal=interrupt.source_signal,
        resume_count=interrupt.resume_count,
    )
    try:
        resume_to = interrupt.resume_to
        if resume_to == "self":
            operator = work.index.operators[interrupt.source_operator_id]
            trigger = Signal(
                type=signal.get("trigger_type", "event"), name=str(signal.get("trigger_event"))
            )
            _run_chunk(work, operator, trigger, signal.get("value"), layers, None, 0,
                       reply_to=reply_to, reply_id=reply_id)  # fmt: skip
        elif isinstance(resume_to, dict):
            _emit(work, Signal(type="event", name=resume_to["event"]), value, layers=(),
                  reply_to=reply_to, reply_id=reply_id)  # fmt: skip
        else:
            event = interrupt.continuation_event or ""
            _emit(work, Signal(type="event", name=event), value, layers=layers,
                  reply_to=reply_to, reply_id=reply_id)  # fmt: skip
    finally:
        work.resume = None


def _cancel(work: _Work, message: CloseExecution) -> None:
    """Close now, cancelling waiting interrupts and whatever is in flight."""
    for node in work.nodes.values():
        if node.reply_to:
            work.reply(node.reply_to, Reply(ok=True, value=None, ignored="closed"))
    work.nodes.clear()
    work.queue.clear()
    work.running.clear()
    work.set(status="cancelled", close_requested=True, close_reason=message.reason)
    if message.reply_to:
        work.set(close_waiters=[*work.get("close_waiters"), message.reply_to])
    _close(work, message.reason)


def _valid_resume_to(resume_to: Any) -> bool:
    if resume_to in ("next", "self"):
        return True
    return isinstance(resume_to, dict) and isinstance(resume_to.get("event"), str)


def interrupt_record(interrupt: Interrupt) -> dict[str, Any]:
    """The interrupt as callers and stream readers see it (Agently's record keys)."""
    record: dict[str, Any] = msgspec.to_builtins(interrupt)
    record["response"] = interrupt.resume_value
    return record


def _stream_item(work: _Work, item_id: str, value: Any) -> None:
    """An item the runtime itself puts into the stream (the interrupt items TriggerFlow
    defines): a sub-flow's go to its root's stream, like its chunks' items."""
    parent: ParentRef | None = work.get("parent")
    if parent is None:
        item = StreamItem(id=item_id, execution_id=work.execution_id, value=value)
        work.outbox.append(AppendStream(message=item))
        return
    flow, execution_id = parent.stream_target()
    item = StreamItem(id=item_id, execution_id=execution_id, value=value)
    work.outbox.append(AppendStream(message=item, flow=flow))
