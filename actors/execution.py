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

import copy
from dataclasses import dataclass, field
from typing import Any, assert_never

import msgspec

from triggerbus.actors.graph_index import GraphIndex
from triggerbus.actors.state_paths import apply_state_op, close_snapshot, has_path
from triggerbus.contracts.graph import START_EVENT, Operator, Signal
from triggerbus.contracts.messages import (
    ChunkCompleted,
    ChunkFailed,
    CloseExecution,
    EmitEvent,
    ErrorInfo,
    ExecutionClosed,
    InvokeChunk,
    MailboxMessage,
    Reply,
    StartExecution,
    StateWritten,
    StreamEnded,
    TimerFired,
)
from triggerbus.contracts.outbox import (
    AppendStream,
    Invoke,
    NotifyClosed,
    Observe,
    OutboxCommand,
    ScheduleTimer,
    SendReply,
    StoredOutbox,
)
from triggerbus.contracts.snapshot import Node, QueuedInvocation, Snapshot

AUTO_CLOSE_TIMER = "auto_close"
APPLIED_IDS_KEPT = 4096
"""How many applied message ids a snapshot remembers; older duplicates fall to JetStream's
de-duplication window and to the node checks (a completed step cannot complete twice)."""


@dataclass(frozen=True)
class Transition:
    """The result of one message: the new snapshot (``None`` when rejected) and its outbox."""

    snapshot: Snapshot | None
    outbox: list[OutboxCommand]
    duplicate: bool = False
    rejected: str = ""


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
    """Apply one mailbox message. Never raises for bad input: a refusal is a ``rejected`` reason."""
    if snapshot is None:
        # State may be written before the start, as TriggerFlow allows; nothing else may.
        if not isinstance(message, StartExecution | StateWritten):
            return Transition(None, [], rejected=f"no execution {message.execution_id!r}")
        snapshot = new_snapshot(index, message.execution_id, now=now)
    if message.id in snapshot.applied:
        return Transition(snapshot, [], duplicate=True)
    work = _Work.begin(index, snapshot, now)
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
        case _:
            assert_never(message)
    if work.rejected:
        return Transition(None, [], rejected=work.rejected)
    if not work.stale_timer:
        _settle_idle(work)
    return Transition(work.freeze(message.id), work.outbox)


# --- the working copy ------------------------------------------------------------------------


@dataclass
class _Work:
    """A mutable copy of the snapshot for the length of one transition."""

    index: GraphIndex
    base: Snapshot
    now: float
    nodes: dict[int, Node]
    state: dict[str, Any]
    joins: dict[str, Any]
    running: list[int]
    queue: list[QueuedInvocation]
    changes: dict[str, Any] = field(default_factory=dict)
    outbox: list[OutboxCommand] = field(default_factory=list)
    rejected: str = ""
    stale_timer: bool = False

    @classmethod
    def begin(cls, index: GraphIndex, snapshot: Snapshot, now: float) -> _Work:
        return cls(
            index=index,
            base=snapshot,
            now=now,
            nodes=dict(snapshot.nodes),
            state=copy.deepcopy(snapshot.state),
            joins=copy.deepcopy(snapshot.joins),
            running=list(snapshot.running),
            queue=list(snapshot.queue),
        )

    def get(self, name: str) -> Any:
        return self.changes.get(name, getattr(self.base, name))

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    @property
    def execution_id(self) -> str:
        return self.base.execution_id

    @property
    def closed(self) -> bool:
        return self.get("lifecycle") == "closed"

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
            self.outbox.append(SendReply(reply_to=reply_to, message=message))

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
    )
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
        work.observe("emit_ignored", event=message.event, lifecycle=work.get("lifecycle"))
        work.reply(message.reply_to, Reply(ok=True, value=None))
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
        work.reply(message.reply_to, Reply(ok=True, value=[]))
        return
    # Deleting a key that is not there changes nothing, and TriggerFlow fires no listener.
    changed = message.op != "delete" or has_path(work.state, message.key)
    new_value = apply_state_op(work.state, message.op, message.key, message.value)
    work.observe("state_written", key=message.key, op=message.op)
    if not message.emit or not changed or work.get("status") != "running":
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
    if not work.closed and not work.nodes and not work.queue:
        _close(work, "auto_close_idle_timeout")


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
        case _:
            assert_never(operator.kind)


def _run_chunk(
    work: _Work,
    operator: Operator,
    signal: Signal,
    value: Any,
    layers: tuple[str, ...],
    parent: int,
    slot: int,
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
    )
    queued = QueuedInvocation(
        node=node.id,
        operator=operator.id,
        value=value,
        trigger_event=signal.name,
        trigger_type=signal.type,
        layers=layers,
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
        state=copy.deepcopy(work.state),
        resources=work.get("resources"),
        sent_at=work.now,
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
    """A batch with a concurrency cap releases one waiting branch per finished branch."""
    if not node.queued:
        return node
    branch, *remaining = node.queued
    node = work.update(node, pending=node.pending + 1, queued=remaining, ready=not remaining)
    signal = Signal(type="event", name=str(branch))
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
    join = work.joins.get(key) or {
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
    join = work.joins.get(key) or {"values": {}, "filled": []}
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
        return
    if work.get("close_requested"):
        _close(work, work.get("close_reason") or "manual")
        return
    if not work.get("auto_close"):
        return
    timeout = work.get("auto_close_timeout")
    if timeout is None:
        return
    if timeout <= 0:
        _close(work, "auto_close_idle_timeout")
        return
    generation = work.get("timer_generation") + 1
    work.set(timer_generation=generation)
    work.outbox.append(ScheduleTimer(timer=AUTO_CLOSE_TIMER, generation=generation, delay=timeout))


def _close(work: _Work, reason: str) -> None:
    status = work.get("status")
    if status == "running":
        status = "completed"
    work.set(status=status, lifecycle="closed", close_reason=reason, closed_at=work.now)
    snapshot = close_snapshot(
        msgspec.structs.replace(work.base, **work.changes, state=work.state)
    )
    error = work.get("error")
    for waiter in work.get("close_waiters"):
        work.reply(waiter, Reply(ok=True, value=snapshot))
    work.set(close_waiters=[])
    if not work.get("stream_ended"):
        end = StreamEnded(id=f"{work.execution_id}:stream:end", execution_id=work.execution_id)
        work.outbox.append(AppendStream(message=end))
        work.set(stream_ended=True)
    closed = ExecutionClosed(
        execution_id=work.execution_id, status=status, snapshot=snapshot, error=error
    )
    work.outbox.append(NotifyClosed(message=closed))
    work.observe("execution_closed", status=status, reason=reason)
