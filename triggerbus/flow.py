"""The TriggerFlow builder: the same names and chaining as Agently's, compiled to a FlowGraph.

The builder records operators and edges as it is called; ``graph()`` compiles them into a
``contracts`` FlowGraph whose ids are digests of the definition, so every process that imports
the same module builds the same graph and agrees on subjects without coordination.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from triggerbus._naming import token
from triggerbus.contracts.graph import (
    START_EVENT,
    ChunkSpec,
    Edge,
    FlowGraph,
    Operator,
    Signal,
    TriggerType,
    canonical_json,
    digest,
)
from triggerbus.errors import FlowDefinitionError

if TYPE_CHECKING:
    from triggerbus.execution import Execution

Handler = Callable[..., Any]
WhenMode = Literal["and", "or", "simple_or"]
MatchMode = Literal["hit_first", "hit_all"]
CollectMode = Literal["filled_and_update", "filled_then_empty"]


@dataclass
class _Block:
    """An open ``for_each`` or ``match`` while the builder is inside it."""

    kind: Literal["for_each", "match"]
    id: str
    outer: _Block | None
    mode: str = ""
    cases: list[Any] = field(default_factory=list)
    case_signals: list[str] = field(default_factory=list)
    has_else: bool = False
    branch_ends: list[Signal] = field(default_factory=list)
    judge: str = ""


@dataclass(frozen=True)
class TriggerFlowChunk:
    """A named step of a flow; what ``@flow.chunk`` returns and ``to``/``batch`` accept."""

    name: str
    handler: Handler
    trigger: str
    operator_id: str
    policy: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """Its retry policy, so another flow that runs this chunk runs it the same way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)


class TriggerFlowProcess:
    """A position in the flow: what the next ``to``/``batch``/``end`` will listen to."""

    def __init__(self, flow: TriggerFlow, signal: Signal, block: _Block | None = None) -> None:
        self._flow = flow
        self._signal = signal
        self._block = block

    def _at(
        self, signal: Signal, block: _Block | Literal["same"] | None = "same"
    ) -> TriggerFlowProcess:
        return TriggerFlowProcess(self._flow, signal, self._block if block == "same" else block)

    @property
    def trigger_event(self) -> str:
        return self._signal.name

    @property
    def trigger_type(self) -> TriggerType:
        return self._signal.type

    def to(
        self,
        chunk: TriggerFlowChunk | Handler | str | tuple[str, Handler],
        side_branch: bool = False,
        name: str | None = None,
    ) -> TriggerFlowProcess:
        """Run ``chunk`` on this position's signal; continue from its result."""
        resolved = self._flow._resolve_chunk(chunk, name=name)
        self._flow._add_edge(self._signal, resolved.operator_id)
        if side_branch:
            return self
        return self._at(Signal(type="event", name=resolved.trigger))

    def side_branch(
        self, chunk: TriggerFlowChunk | Handler, *, name: str | None = None
    ) -> TriggerFlowProcess:
        """Run ``chunk`` here without moving the position."""
        return self.to(chunk, side_branch=True, name=name)

    def when(self, trigger_or_triggers: Any, *, mode: WhenMode = "and") -> TriggerFlowProcess:
        """Start a new position from an event, chunk, state key or several of them."""
        return self._flow.when(trigger_or_triggers, mode=mode)

    def batch(
        self,
        *chunks: TriggerFlowChunk | Handler | tuple[str, Handler],
        side_branch: bool = False,
        concurrency: int | None = None,
    ) -> TriggerFlowProcess:
        """Run every chunk on this signal; continue with ``{chunk name: result}`` in
        declaration order once all have returned."""
        if not chunks:
            raise FlowDefinitionError("batch() needs at least one chunk")
        resolved = [self._flow._resolve_chunk(chunk) for chunk in chunks]
        batch_id = digest(
            "batch", self._signal, [c.operator_id for c in resolved], concurrency, length=16
        )
        branches = [f"Batch-{batch_id}-Input-{c.operator_id}" for c in resolved]
        batch_trigger = f"Batch-{batch_id}"
        fanout = f"batch-fanout-{batch_id}"
        collect = f"batch-collect-{batch_id}"
        self._flow._add_operator(
            Operator(
                id=fanout,
                kind="batch_fanout",
                name=f"batch:{batch_id}",
                emits=tuple(branches),
                options={"branches": branches, "concurrency": concurrency},
            )
        )
        self._flow._add_edge(self._signal, fanout)
        for branch, chunk in zip(branches, resolved, strict=True):
            self._flow._add_edge(Signal(type="event", name=branch), chunk.operator_id)
        self._flow._add_operator(
            Operator(
                id=collect,
                kind="batch_collect",
                name=f"batch_collect:{batch_id}",
                emits=(batch_trigger,),
                options={
                    "results": {c.trigger: c.name for c in resolved},
                    "keys": [c.name for c in resolved],
                    "emit": batch_trigger,
                },
            )
        )
        for chunk in resolved:
            self._flow._add_edge(Signal(type="event", name=chunk.trigger), collect)
        if side_branch:
            return self
        return self._at(Signal(type="event", name=batch_trigger))

    # --- for_each ----------------------------------------------------------------------------

    def for_each(self, *, concurrency: int | None = None) -> TriggerFlowProcess:
        """Run what follows once per item of this position's value, up to ``end_for_each``.

        A list (any non-string sequence) is split into its items; any other value is one
        item; an empty list continues at once with ``[]``. ``concurrency`` caps the items in
        flight for one run of the loop.
        """
        outer = self._block.id if self._block else ""
        ident = digest("for_each", self._signal, concurrency, outer, length=16)
        send, end = f"ForEach-{ident}-Send", f"ForEach-{ident}-End"
        self._flow._add_operator(
            Operator(
                id=f"for_each-split-{ident}",
                kind="for_each_split",
                name=f"for_each:{ident}",
                emits=(send, end),
                options={
                    "send": send,
                    "end": end,
                    "concurrency": concurrency,
                    "collect": f"for_each-collect-{ident}",
                },
            )
        )
        self._flow._add_edge(self._signal, f"for_each-split-{ident}")
        return self._at(Signal(type="event", name=send), _Block("for_each", ident, self._block))

    def end_for_each(self) -> TriggerFlowProcess:
        """Collect the item results, in input order, as a list; continue with it."""
        block = self._block
        if block is None or block.kind != "for_each":
            raise FlowDefinitionError("end_for_each() needs an open for_each()")
        end = f"ForEach-{block.id}-End"
        collect = f"for_each-collect-{block.id}"
        self._flow._add_operator(
            Operator(
                id=collect,
                kind="for_each_collect",
                name=f"for_each_collect:{block.id}",
                emits=(end,),
                options={"end": end},
            )
        )
        self._flow._add_edge(self._signal, collect)
        return self._at(Signal(type="event", name=end), block.outer)

    # --- match / if --------------------------------------------------------------------------

    def match(self, *, mode: MatchMode = "hit_first") -> TriggerFlowProcess:
        """Route this position's value to the ``case`` branches that hold.

        ``hit_first`` runs the first case that holds; ``hit_all`` runs every one and continues
        with their results as a list in case order. Without a hit and without ``case_else``,
        the value passes through to ``end_match``.
        """
        if mode not in ("hit_first", "hit_all"):
            raise FlowDefinitionError(
                f"match() mode must be 'hit_first' or 'hit_all', not {mode!r}"
            )
        outer = self._block.id if self._block else ""
        ident = digest("match", mode, self._signal, outer, length=16)
        block = _Block("match", ident, self._block, mode=mode)
        self._flow._put_operator(_route_operator(block))
        self._flow._add_edge(self._signal, f"match-route-{ident}")
        return self._at(self._signal, block)

    def case(self, condition: Any) -> TriggerFlowProcess:
        """A branch taken when ``condition`` holds: a callable given the runtime data that
        returns ``True``, or a value equal to the routed value."""
        block = self._match_block("case")
        if block.cases:
            block.branch_ends.append(self._signal)
        index = len(block.cases)
        label = _condition_label(condition)
        signal = f"Match-{block.id}-Case-{digest(block.id, index, label, length=16)}"
        block.cases.append(condition)
        block.case_signals.append(signal)
        if callable(condition) and not block.judge:
            judge = self._flow._declare_chunk(
                _judge(block.cases, block.mode), f"match-{block.id}", internal=True
            )
            block.judge = judge.name
            self._flow._judges[judge.name] = block
            judged = Signal(type="event", name=judge.trigger)
            self._flow._add_edge(judged, f"match-route-{block.id}")
        self._flow._put_operator(_route_operator(block))
        return self._at(Signal(type="event", name=signal), block)

    def case_else(self) -> TriggerFlowProcess:
        """The branch taken when no case holds."""
        block = self._match_block("case_else")
        if not block.cases:
            raise FlowDefinitionError("case_else() needs a case() before it")
        if block.has_else:
            raise FlowDefinitionError("a match() has one case_else()")
        block.branch_ends.append(self._signal)
        block.has_else = True
        self._flow._put_operator(_route_operator(block))
        return self._at(Signal(type="event", name=f"Match-{block.id}-Else"), block)

    def end_match(self) -> TriggerFlowProcess:
        """Continue with the branch's result (``hit_all``: the hit branches' results, in
        case order), or with the routed value when nothing matched."""
        block = self._match_block("end_match")
        if not block.cases:
            raise FlowDefinitionError("end_match() needs a case() before it")
        ends = [*block.branch_ends, self._signal]
        collect = f"match-collect-{block.id}"
        result = f"Match-{block.id}-Result"
        self._flow._put_operator(
            Operator(
                id=collect,
                kind="match_collect",
                name=f"match_result:{block.id}",
                emits=(result,),
                options={"mode": block.mode, "result": result},
            )
        )
        for end in ends:
            self._flow._add_edge(end, collect)
        return self._at(Signal(type="event", name=result), block.outer)

    def if_condition(self, condition: Any) -> TriggerFlowProcess:
        """``match().case(condition)``."""
        return self.match().case(condition)

    def elif_condition(self, condition: Any) -> TriggerFlowProcess:
        return self.case(condition)

    def else_condition(self) -> TriggerFlowProcess:
        return self.case_else()

    def end_condition(self) -> TriggerFlowProcess:
        return self.end_match()

    def _match_block(self, method: str) -> _Block:
        if self._block is None or self._block.kind != "match":
            raise FlowDefinitionError(f"{method}() needs an open match() or if_condition()")
        return self._block

    # --- collect -----------------------------------------------------------------------------

    def collect(
        self,
        collection_name: str,
        branch_id: str | None = None,
        *,
        mode: CollectMode = "filled_and_update",
    ) -> TriggerFlowProcess:
        """Put this position's value into the collection's ``branch_id`` slot; once every
        declared branch has a value, emit ``Collect-<name>`` with ``{branch_id: value}`` in
        declaration order. ``filled_then_empty`` starts over after each emit;
        ``filled_and_update`` emits again on every later arrival."""
        if mode not in ("filled_and_update", "filled_then_empty"):
            raise FlowDefinitionError(
                f"collect() mode must be 'filled_and_update' or 'filled_then_empty', not {mode!r}"
            )
        branches = self._flow._collections.setdefault(collection_name, [])
        if branch_id is None:
            branch_id = digest("collect", collection_name, self._signal, len(branches), length=16)
        if branch_id not in branches:
            branches.append(branch_id)
        emit = f"Collect-{collection_name}"
        operator_id = f"collect-{digest(collection_name, branch_id, length=16)}"
        self._flow._collect_ops.setdefault(collection_name, {})[operator_id] = (branch_id, mode)
        for op_id, (branch, op_mode) in self._flow._collect_ops[collection_name].items():
            self._flow._put_operator(
                Operator(
                    id=op_id,
                    kind="collect_branch",
                    name=f"collect:{collection_name}",
                    emits=(emit,),
                    options={
                        "collection": collection_name,
                        "branch": branch,
                        "branches": list(branches),
                        "mode": op_mode,
                        "emit": emit,
                    },
                )
            )
        self._flow._add_edge(self._signal, operator_id)
        return self._at(Signal(type="event", name=emit))

    # --- sub-flows ---------------------------------------------------------------------------

    def to_sub_flow(
        self,
        trigger_flow: TriggerFlow,
        *,
        side_branch: bool = False,
        name: str | None = None,
        capture: Mapping[str, Any] | None = None,
        write_back: Mapping[str, Any] | None = None,
        concurrency: int | None = None,
    ) -> TriggerFlowProcess:
        """Run ``trigger_flow`` as a child execution and continue with its result.

        The child is its own execution (its own mailbox and snapshot); its stream items go to
        this execution's stream. Without ``write_back`` the parent continues with the child's
        ``$final_result`` (its close snapshot when it has none).

        Args:
            capture: What the child starts with: ``{"input": "value.path"}`` (or a mapping
                ``{"input": {"key": "value.path"}}``), ``{"runtime_data": {"key":
                "runtime_data.path"}}``; sources are ``value``, ``runtime_data`` and
                ``resources``. Default: the input is this position's value.
            write_back: What the parent takes back: ``{"value": "result.path"}`` (or a
                mapping) and ``{"runtime_data": {"key": "result.path"}}``.
        """
        if not isinstance(trigger_flow, TriggerFlow):
            raise FlowDefinitionError(
                f"to_sub_flow() takes a TriggerFlow, not {type(trigger_flow).__name__}"
            )
        _check_bindings(capture, {"input", "runtime_data"}, "capture")
        _check_bindings(write_back, {"value", "runtime_data"}, "write_back")
        child = trigger_flow.graph()
        capture_spec = dict(capture) if capture else None
        write_back_spec = dict(write_back) if write_back else None
        ident = digest(
            "sub_flow", self._signal, child.flow, capture_spec, write_back_spec, concurrency,
            name, length=16,
        )
        emit = f"SubFlow-{ident}"
        operator = f"sub-flow-{ident}"
        self._flow._add_operator(
            Operator(
                id=operator,
                kind="sub_flow",
                name=name or f"sub_flow:{child.flow}",
                emits=(emit,),
                options={
                    "flow": child.flow,
                    "fingerprint": child.fingerprint,
                    "capture": capture_spec,
                    "write_back": write_back_spec,
                    "concurrency": concurrency,
                    "emit": emit,
                },
            )
        )
        self._flow._sub_flows[child.flow] = trigger_flow
        self._flow._add_edge(self._signal, operator)
        if side_branch:
            return self
        return self._at(Signal(type="event", name=emit))

    def ____(self, *args: Any, **kwargs: Any) -> TriggerFlowProcess:
        """A separator for long chains; does nothing."""
        return self

    def end(self) -> TriggerFlowProcess:
        """Store this position's value as the result (``$final_result`` in the close snapshot)."""
        sink = f"result-{digest('result_sink', self._signal, length=16)}"
        self._flow._add_operator(Operator(id=sink, kind="result_sink", name="result"))
        self._flow._add_edge(self._signal, sink)
        return self


class TriggerFlow:
    """A flow definition, and the entry point to run it.

    Args:
        name: A stable name for the flow. Without one, a name is derived from the file and line
            that created the flow, how many flows that line had created before in this process,
            and the chunks it holds: every process that imports the same module (and calls a
            flow factory the same number of times) derives the same name, and two flows made
            by one factory still differ. Give a name explicitly when flows are built in an
            order that differs between processes.
        skip_exceptions: Default for executions: a failing chunk does not fail the execution.
    """

    def __init__(self, name: str | None = None, *, skip_exceptions: bool = False) -> None:
        self._explicit_name = name
        self._origin = _caller_origin()
        self._ordinal = _next_ordinal(self._origin) if name is None else 0
        self._skip_exceptions = skip_exceptions
        self._chunks: dict[str, TriggerFlowChunk] = {}
        self._internal: dict[str, TriggerFlowChunk] = {}
        self._collections: dict[str, list[str]] = {}
        self._collect_ops: dict[str, dict[str, tuple[str, str]]] = {}
        self._sub_flows: dict[str, TriggerFlow] = {}
        self._judges: dict[str, Any] = {}
        self._registered_handlers: dict[str, Handler] = {}
        self._registered_conditions: dict[str, Handler] = {}
        self._operators: dict[str, Operator] = {}
        self._edges: list[Edge] = []
        self._graph: FlowGraph | None = None
        self._start = TriggerFlowProcess(self, Signal(type="event", name=START_EVENT))
        self._runtime_resources: dict[str, Any] = {}

    # --- definition ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The flow's name as it appears in subjects."""
        return self.graph().flow

    def chunk(
        self,
        handler_or_name: Handler | str | None = None,
        /,
        *,
        retries: int = 0,
        backoff: float | tuple[float, ...] | list[float] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Declare a chunk: ``@flow.chunk``, ``@flow.chunk("name")`` or ``flow.chunk(func)``.

        Args:
            retries: how often an attempt that raises is tried again before the execution
                fails with its error (0, the default, is TriggerFlow's behaviour: the first
                exception fails it). When retries are spent the invocation is dead-lettered.
            backoff: seconds before each retry; the last value repeats (default 1, 5, 30).
            timeout: seconds one attempt may run before it fails with ``TimeoutError``
                (counted like any exception; default: no limit).
        """
        policy = _chunk_policy(retries, backoff, timeout)
        if handler_or_name is None:
            return lambda handler: self._declare_chunk(handler, handler.__name__, policy=policy)
        if isinstance(handler_or_name, str):
            chunk_name = handler_or_name
            return lambda handler: self._declare_chunk(handler, chunk_name, policy=policy)
        if callable(handler_or_name):
            return self._declare_chunk(handler_or_name, handler_or_name.__name__, policy=policy)
        raise FlowDefinitionError(
            f"chunk() takes a function or a name, not {type(handler_or_name).__name__}"
        )

    def get_chunk(self, name: str) -> TriggerFlowChunk:
        """The chunk declared as ``name``."""
        try:
            return self._chunks[name]
        except KeyError:
            raise FlowDefinitionError(f"no chunk named {name!r} in this flow") from None

    @property
    def chunks(self) -> Mapping[str, TriggerFlowChunk]:
        return dict(self._chunks)

    def to(
        self,
        chunk: TriggerFlowChunk | Handler | str | tuple[str, Handler],
        side_branch: bool = False,
        name: str | None = None,
    ) -> TriggerFlowProcess:
        """Run ``chunk`` first when an execution starts."""
        return self._start.to(chunk, side_branch=side_branch, name=name)

    def batch(
        self,
        *chunks: TriggerFlowChunk | Handler | tuple[str, Handler],
        side_branch: bool = False,
        concurrency: int | None = None,
    ) -> TriggerFlowProcess:
        """Run several chunks when an execution starts and join their results."""
        return self._start.batch(*chunks, side_branch=side_branch, concurrency=concurrency)

    def side_branch(
        self, chunk: TriggerFlowChunk | Handler, *, name: str | None = None
    ) -> TriggerFlowProcess:
        return self._start.side_branch(chunk, name=name)

    def end(self) -> TriggerFlowProcess:
        return self._start.end()

    def for_each(self, *, concurrency: int | None = None) -> TriggerFlowProcess:
        """Split the start value into items (see ``TriggerFlowProcess.for_each``)."""
        return self._start.for_each(concurrency=concurrency)

    def match(self, *, mode: MatchMode = "hit_first") -> TriggerFlowProcess:
        """Route the start value (see ``TriggerFlowProcess.match``)."""
        return self._start.match(mode=mode)

    def if_condition(self, condition: Any) -> TriggerFlowProcess:
        return self._start.if_condition(condition)

    def to_sub_flow(self, trigger_flow: TriggerFlow, **options: Any) -> TriggerFlowProcess:
        """Run ``trigger_flow`` as a child execution first (see ``TriggerFlowProcess``)."""
        return self._start.to_sub_flow(trigger_flow, **options)

    def hosted_flows(self) -> list[TriggerFlow]:
        """This flow and, recursively, the sub-flows it starts: what a process hosting it
        must host too."""
        found: dict[str, TriggerFlow] = {}
        pending: list[TriggerFlow] = [self]
        while pending:
            flow = pending.pop(0)
            if flow.name in found:
                continue
            found[flow.name] = flow
            pending.extend(flow._sub_flows.values())
        return list(found.values())

    def when(self, trigger_or_triggers: Any, *, mode: WhenMode = "and") -> TriggerFlowProcess:
        """A position that fires on an event, a chunk's completion, a state key, or a join of
        several (``mode`` ``and``: all of them, per scope; ``or``: each, as
        ``[type, name, value]``; ``simple_or``: each, as its value)."""
        if mode not in ("and", "or", "simple_or"):
            raise FlowDefinitionError(
                f"when() mode must be 'and', 'or' or 'simple_or', not {mode!r}"
            )
        signals = self._when_signals(trigger_or_triggers)
        if len(signals) == 1:
            return TriggerFlowProcess(self, signals[0])
        when_id = digest("when", mode, sorted([s.type, s.name] for s in signals), length=16)
        when_trigger = f"When-{when_id}"
        gate = f"when-{when_id}"
        self._add_operator(
            Operator(
                id=gate,
                kind="when_gate",
                name=f"when:{when_id}",
                emits=(when_trigger,),
                options={
                    "mode": mode,
                    "signals": [[s.type, s.name] for s in signals],
                    "emit": when_trigger,
                },
            )
        )
        for signal in signals:
            self._add_edge(signal, gate)
        return TriggerFlowProcess(self, Signal(type="event", name=when_trigger))

    # --- compiled form -----------------------------------------------------------------------

    def graph(self) -> FlowGraph:
        """The compiled graph; identical in every process that defines the flow the same way."""
        if self._graph is None:
            chunks = tuple(
                ChunkSpec(
                    name=c.name,
                    token=token(c.name),
                    trigger=c.trigger,
                    **_spec_policy(self._operators[c.operator_id].options.get("policy")),
                )
                for c in [*self._chunks.values(), *self._internal.values()]
            )
            graph = FlowGraph(
                flow=self._flow_name(),
                chunks=chunks,
                operators=tuple(self._operators.values()),
                edges=tuple(self._edges),
            )
            self._graph = graph.with_fingerprint()
        return self._graph

    def handlers(self) -> dict[str, Handler]:
        """Chunk name to the function that runs it (internal chunks, such as the ones that
        judge callable match conditions, included)."""
        return {
            name: chunk.handler for name, chunk in [*self._chunks.items(), *self._internal.items()]
        }

    # --- definitions as data ------------------------------------------------------------------

    def register_chunk_handler(self, handler: Handler, *, name: str | None = None) -> Handler:
        """Make ``handler`` available, by ``name`` (default: its ``__name__``), to flow
        configs loaded into this flow; exported configs name it the same way."""
        if isinstance(handler, TriggerFlowChunk):
            name, handler = name or handler.name, handler.handler
        self._registered_handlers[name or handler.__name__] = handler
        return handler

    def register_condition_handler(self, handler: Handler, *, name: str | None = None) -> Handler:
        """Like ``register_chunk_handler``, for callable ``case``/``if_condition`` conditions."""
        self._registered_conditions[name or handler.__name__] = handler
        return handler

    def get_flow_config(self, **_: Any) -> dict[str, Any]:
        """The flow as JSON-able data: its compiled graph and the names of its handlers."""
        from triggerbus.definition import flow_config

        return flow_config(self)

    def get_json_flow(
        self, save_to: str | os.PathLike[str] | None = None, *, encoding: str | None = "utf-8"
    ) -> str:
        """The flow config as JSON text, also written to ``save_to`` when given."""
        from triggerbus.definition import to_json

        return to_json(self.get_flow_config(), save_to, encoding)  # type: ignore[arg-type]

    def get_yaml_flow(
        self, save_to: str | os.PathLike[str] | None = None, *, encoding: str | None = "utf-8"
    ) -> str:
        """The flow config as YAML text (needs PyYAML), also written to ``save_to``."""
        from triggerbus.definition import to_yaml

        return to_yaml(self.get_flow_config(), save_to, encoding)  # type: ignore[arg-type]

    def load_flow_config(
        self,
        config: Mapping[str, Any],
        *,
        replace: bool = True,
        handlers: Mapping[str, Handler] | None = None,
        conditions: Mapping[str, Handler] | None = None,
    ) -> TriggerFlow:
        """Replace this flow's definition with ``config``.

        Handlers are found by name among those registered on this flow (and ``handlers`` /
        ``conditions``); a chunk defined on this flow also provides its handler under its
        name. Raises ``FlowDefinitionError`` naming any handler that is missing.
        """
        from triggerbus.definition import load_config

        del replace  # a config always replaces the definition
        known = {name: chunk.handler for name, chunk in self._chunks.items()}
        known.update(self._registered_handlers)
        known.update(handlers or {})
        known_conditions = {**self._registered_conditions, **(conditions or {})}
        load_config(self, config, known, known_conditions)
        return self

    def load_json_flow(
        self,
        path_or_content: str | os.PathLike[str],
        *,
        replace: bool = True,
        encoding: str | None = "utf-8",
        **options: Any,
    ) -> TriggerFlow:
        """``load_flow_config`` from JSON text or a JSON file."""
        from triggerbus.definition import read_json

        return self._load_text(read_json, path_or_content, replace, encoding, options)

    def load_yaml_flow(
        self,
        path_or_content: str | os.PathLike[str],
        *,
        replace: bool = True,
        encoding: str | None = "utf-8",
        **options: Any,
    ) -> TriggerFlow:
        """``load_flow_config`` from YAML text or a YAML file (needs PyYAML)."""
        from triggerbus.definition import read_yaml

        return self._load_text(read_yaml, path_or_content, replace, encoding, options)

    def _load_text(
        self,
        read: Callable[[Any, str | None], Any],
        path_or_content: str | os.PathLike[str],
        replace: bool,
        encoding: str | None,
        options: dict[str, Any],
    ) -> TriggerFlow:
        from pathlib import Path

        source = path_or_content if isinstance(path_or_content, str) else Path(path_or_content)
        return self.load_flow_config(read(source, encoding), replace=replace, **options)

    def to_mermaid(self, *, mode: Literal["simplified", "detailed"] = "simplified") -> str:
        """A Mermaid ``flowchart`` of the compiled graph."""
        from triggerbus.definition import to_mermaid

        return to_mermaid(self, mode)

    # --- flow data (shared by every execution of the flow, in every process) --------------------

    async def async_get_flow_data(self, key: str | None = None, default: Any = None) -> Any:
        """The flow data as stored now (``key`` may be dotted; ``None``: the whole dict)."""
        from triggerbus._runtime import get_runtime
        from triggerbus.actors.flow_data import load_flow_data
        from triggerbus.actors.state_paths import get_path

        runtime = await get_runtime()
        data, _ = await load_flow_data(runtime.bus, self.name)
        return data if key is None else get_path(data, key, default)

    def get_flow_data(self, key: str | None = None, default: Any = None, **_: Any) -> Any:
        """Sync twin of ``async_get_flow_data``; inside a running loop too (a store read on the
        sync API's own connection, as TriggerFlow's sync reads work there)."""
        from triggerbus._sync import run_detached

        return run_detached(self.async_get_flow_data(key, default))

    async def async_set_flow_data(
        self, key: str, value: Any, *, emit: bool = True, **_: Any
    ) -> None:
        """Change the flow data and fire ``when({"flow_data": key})`` in every live execution
        of this flow (in any process); returns once the change is stored and announced."""
        await self._change_flow_data("set", key, value, emit=emit)

    async def async_append_flow_data(
        self, key: str, value: Any, *, emit: bool = True, **_: Any
    ) -> None:
        await self._change_flow_data("append", key, value, emit=emit)

    async def async_del_flow_data(self, key: str, *, emit: bool = True, **_: Any) -> None:
        await self._change_flow_data("delete", key, None, emit=emit)

    def set_flow_data(self, key: str, value: Any, *, emit: bool = True, **_: Any) -> None:
        """Sync twin of ``async_set_flow_data``; inside a running loop too: a change is stored
        and announced, with no actor to wait for."""
        from triggerbus._sync import run_detached

        run_detached(self.async_set_flow_data(key, value, emit=emit))

    def append_flow_data(self, key: str, value: Any, *, emit: bool = True, **_: Any) -> None:
        from triggerbus._sync import run_detached

        run_detached(self.async_append_flow_data(key, value, emit=emit))

    def del_flow_data(self, key: str, *, emit: bool = True, **_: Any) -> None:
        from triggerbus._sync import run_detached

        run_detached(self.async_del_flow_data(key, emit=emit))

    async def _change_flow_data(self, op: str, key: str, value: Any, *, emit: bool) -> None:
        from triggerbus._runtime import get_runtime
        from triggerbus._sendable import check_sendable
        from triggerbus.actors.flow_data import change_flow_data

        check_sendable(value, f"the flow data value for {key!r}")
        # Not hosted here for this: flow data is the flow's KV key and broadcast, and the
        # definition may still grow (Agently lets flow data be set before any chunk).
        runtime = await get_runtime()
        await change_flow_data(runtime.bus, self.name, op, key, value, emit=emit)  # type: ignore[arg-type]

    # --- running -----------------------------------------------------------------------------

    # --- runtime resources of this process -----------------------------------------------------

    @property
    def runtime_resources(self) -> Mapping[str, Any]:
        """This process's flow-level resources (read-only view; the methods below change it)."""
        return MappingProxyType(self._runtime_resources)

    def set_runtime_resource(self, key: str, value: Any) -> TriggerFlow:
        """A resource every execution's chunks see, under the execution's own of that name.

        Flow-level resources belong to the process that sets them and never travel: chunks
        hosted here see them (live), whichever process started the execution. Set them in
        the flow's module so that every worker process has its own; pass
        ``runtime_resources=`` to an execution for values that must travel with it.
        """
        self._runtime_resources[str(key)] = value
        return self

    def get_runtime_resource(self, key: str, default: Any = None) -> Any:
        return self._runtime_resources.get(str(key), default)

    def del_runtime_resource(self, key: str) -> TriggerFlow:
        self._runtime_resources.pop(str(key), None)
        return self

    def update_runtime_resources(
        self, mapping: Mapping[str, Any] | None = None, **resources: Any
    ) -> TriggerFlow:
        for key, value in {**(mapping or {}), **resources}.items():
            self.set_runtime_resource(key, value)
        return self

    def clear_runtime_resources(self) -> TriggerFlow:
        self._runtime_resources.clear()
        return self

    def create_execution(
        self,
        *,
        execution_id: str | None = None,
        skip_exceptions: bool | None = None,
        concurrency: int | None = None,
        runtime_resources: dict[str, Any] | None = None,
        auto_close: bool = True,
        auto_close_timeout: float | None = 10.0,
        idempotency_key: str | None = None,
    ) -> Execution:
        """A handle for a new execution; nothing is sent until it starts.

        ``execution_id`` (or ``idempotency_key``, any string) names the execution: starting
        the same one twice, from any process, runs it once and gives every caller its
        result. A handle made with the id of an existing execution can continue, emit into,
        save and close it.
        """
        from triggerbus.execution import Execution

        if execution_id is not None and idempotency_key is not None:
            raise ValueError("pass execution_id or idempotency_key, not both")
        return Execution(
            self,
            execution_id=execution_id,
            idempotency_key=idempotency_key,
            skip_exceptions=self._skip_exceptions if skip_exceptions is None else skip_exceptions,
            concurrency=concurrency,
            runtime_resources=runtime_resources,
            auto_close=auto_close,
            auto_close_timeout=auto_close_timeout,
        )

    async def async_start_execution(
        self,
        initial_value: Any = None,
        *,
        concurrency: int | None = None,
        runtime_resources: dict[str, Any] | None = None,
        auto_close: bool = True,
        auto_close_timeout: float | None = 10.0,
    ) -> Execution:
        """Create an execution, start it, and return its handle without waiting for close."""
        execution = self.create_execution(
            concurrency=concurrency,
            runtime_resources=runtime_resources,
            auto_close=auto_close,
            auto_close_timeout=auto_close_timeout,
        )
        await execution.async_start(initial_value, wait_for_result=False)
        return execution

    def start_execution(self, initial_value: Any = None, **options: Any) -> Execution:
        from triggerbus._sync import run_sync

        return run_sync(self.async_start_execution(initial_value, **options))

    async def async_start(
        self,
        initial_value: Any = None,
        *,
        timeout: float | None = None,
        concurrency: int | None = None,
        runtime_resources: dict[str, Any] | None = None,
        auto_close: bool = True,
        auto_close_timeout: float | None = 0.0,
    ) -> Any:
        """Run an execution to its close and return the close snapshot.

        Raises:
            ValueError: ``auto_close=False``; the execution handle is hidden here, so nothing
                could close it. Use ``create_execution()`` to control the lifecycle.
        """
        if not auto_close:
            raise ValueError(
                "flow.start()/async_start() need auto_close=True: they hide the execution "
                "handle, so nothing could close it. Use flow.create_execution(auto_close=False) "
                "and close the execution yourself."
            )
        execution = self.create_execution(
            concurrency=concurrency,
            runtime_resources=runtime_resources,
            auto_close=True,
            auto_close_timeout=timeout if timeout is not None else auto_close_timeout,
        )
        return await execution.async_start(initial_value)

    def start(self, initial_value: Any = None, **options: Any) -> Any:
        """Sync twin of ``async_start``."""
        from triggerbus._sync import run_sync

        return run_sync(self.async_start(initial_value, **options))

    def get_async_runtime_stream(
        self,
        initial_value: Any = None,
        *,
        timeout: float | None = 10.0,
        concurrency: int | None = None,
        runtime_resources: dict[str, Any] | None = None,
    ) -> Any:
        """Start an execution and yield its runtime stream items until the stream ends.

        Raises:
            ChunkFailedError: the execution failed (after the items put before the failure
                are yielded): what ``start()`` raises for the same failure.
        """
        execution = self.create_execution(
            concurrency=concurrency,
            runtime_resources=runtime_resources,
            auto_close_timeout=0.0,
        )
        return _stream_then_failure(execution, initial_value, timeout)

    def get_runtime_stream(
        self,
        initial_value: Any = None,
        *,
        timeout: float | None = 10.0,
        concurrency: int | None = None,
        runtime_resources: dict[str, Any] | None = None,
    ) -> Any:
        """Sync twin of ``get_async_runtime_stream``."""
        from triggerbus._sync import iterate_sync

        return iterate_sync(
            self.get_async_runtime_stream(
                initial_value,
                timeout=timeout,
                concurrency=concurrency,
                runtime_resources=runtime_resources,
            )
        )

    # --- internals ---------------------------------------------------------------------------

    def _declare_chunk(
        self,
        handler: Handler,
        name: str,
        *,
        internal: bool = False,
        policy: dict[str, Any] | None = None,
    ) -> TriggerFlowChunk:
        registry = self._internal if internal else self._chunks
        existing = registry.get(name)
        if existing is not None and existing.handler is handler:
            return existing
        unique = name
        ordinal = 2
        while unique in self._chunks or unique in self._internal:
            unique = f"{name}-{ordinal}"
            ordinal += 1
        ident = chunk_id(unique)
        chunk = TriggerFlowChunk(
            name=unique,
            handler=handler,
            trigger=f"Chunk[{unique}]-{ident}",
            operator_id=ident,
            policy=policy or None,
        )
        registry[unique] = chunk
        self._add_operator(
            Operator(
                id=chunk.operator_id,
                kind="chunk",
                name=unique,
                emits=(chunk.trigger,),
                # The retry policy rides in the operator too, so a flow config carries it.
                options={"chunk": unique, **({"policy": policy} if policy else {})},
            )
        )
        return chunk

    def _resolve_chunk(
        self,
        chunk: TriggerFlowChunk | Handler | str | tuple[str, Handler],
        *,
        name: str | None = None,
    ) -> TriggerFlowChunk:
        if isinstance(chunk, TriggerFlowChunk):
            return self._adopt_chunk(chunk)
        if isinstance(chunk, str):
            return self.get_chunk(chunk)
        if isinstance(chunk, tuple):
            chunk_name, handler = chunk
            return self._declare_chunk(handler, chunk_name)
        if isinstance(chunk, TriggerFlow):
            raise FlowDefinitionError("to run a flow inside another, use to_sub_flow(flow)")
        if callable(chunk):
            return self._declare_chunk(chunk, name or getattr(chunk, "__name__", "chunk"))
        raise FlowDefinitionError(
            f"expected a chunk, a function, a chunk name or (name, function), "
            f"not {type(chunk).__name__}"
        )

    def _adopt_chunk(self, chunk: TriggerFlowChunk) -> TriggerFlowChunk:
        """``chunk`` as a chunk of this flow. One declared on another flow is declared here
        too, under its name (so its trigger event reads the same), with its handler and
        retry policy: each flow hosts its own chunks on its own subjects."""
        own = self._chunks.get(chunk.name)
        if own is not None and own.handler is chunk.handler:
            return own
        if own is not None or chunk.name in self._internal:
            raise FlowDefinitionError(
                f"chunk {chunk.name!r} comes from another flow, and this flow already has a "
                f"chunk named {chunk.name!r} with another handler; give one of them another "
                f"name (@flow.chunk(\"other_name\"))"
            )
        policy = dict(chunk.policy) if chunk.policy else None
        return self._declare_chunk(chunk.handler, chunk.name, policy=policy)

    def _when_signals(self, spec: Any) -> list[Signal]:
        # As Agently: only a bare name is looked up among the chunks; a name inside a list or
        # a dict is an event's, even when a chunk has the same name (`when(["a", "b"])` over
        # chunks a and b waits for events a and b, which the chunks never emit).
        if isinstance(spec, str) and spec in self._chunks:
            return [Signal(type="event", name=self._chunks[spec].trigger)]
        if isinstance(spec, TriggerFlowChunk | str):
            return [self._event_signal(spec)]
        if isinstance(spec, list | tuple):
            return [self._event_signal(item) for item in spec]
        if isinstance(spec, Mapping):
            signals: list[Signal] = []
            for kind, names in spec.items():
                items = names if isinstance(names, list | tuple) else [names]
                for item in items:
                    signals.append(self._typed_signal(kind, item))
            if not signals:
                raise FlowDefinitionError("when() needs at least one trigger")
            return signals
        raise FlowDefinitionError(
            "when() takes an event name, a chunk, a list of them, or a dict like "
            "{'runtime_data': 'key'}"
        )

    def _typed_signal(self, kind: str, item: Any) -> Signal:
        if kind == "event":
            return self._event_signal(item)
        if kind == "collect":
            return Signal(type="event", name=f"Collect-{item}")
        if kind in ("runtime_data", "flow_data"):
            if not isinstance(item, str):
                raise FlowDefinitionError(f"when({{{kind!r}: ...}}) takes key names")
            return Signal(type=kind, name=item)  # type: ignore[arg-type]
        raise FlowDefinitionError(
            f"when() trigger type must be event, runtime_data, flow_data or collect, not {kind!r}"
        )

    def _event_signal(self, item: Any) -> Signal:
        if isinstance(item, TriggerFlowChunk):
            return Signal(type="event", name=item.trigger)
        if isinstance(item, str):
            return Signal(type="event", name=item)
        raise FlowDefinitionError(f"an event is a name or a chunk, not {type(item).__name__}")

    def _add_operator(self, operator: Operator) -> None:
        self._operators.setdefault(operator.id, operator)
        self._graph = None

    def _put_operator(self, operator: Operator) -> None:
        """Add or replace an operator (a match's cases grow as ``case()`` is called)."""
        self._operators[operator.id] = operator
        self._graph = None

    def _add_edge(self, signal: Signal, operator_id: str) -> None:
        self._edges.append(Edge(signal=signal, operator=operator_id))
        self._graph = None

    def _flow_name(self) -> str:
        if self._explicit_name is not None:
            return token(self._explicit_name)
        stem, line = self._origin
        return token(f"{stem}-{digest(stem, line, self._ordinal, list(self._chunks), length=8)}")

    def __repr__(self) -> str:
        return f"<TriggerFlow {self.name!r} chunks={list(self._chunks)}>"


async def _stream_then_failure(
    execution: Execution, initial_value: Any, timeout: float | None
) -> AsyncIterator[Any]:
    """The execution's stream, then its failure raised as ``start()`` raises it, when the
    stream ended because the execution closed as failed."""
    from triggerbus.errors import ExecutionNotFoundError

    async with contextlib.aclosing(
        execution.get_async_runtime_stream(initial_value, timeout=timeout)
    ) as items:
        async for item in items:
            yield item
    try:
        snapshot = await execution.async_get_snapshot()
    except ExecutionNotFoundError:  # never started: the stream already ended as it should
        return
    if snapshot.get("lifecycle") == "closed" and snapshot.get("status") == "failed":
        await execution.async_get_result()  # raises the execution's failure


_ordinals_lock = threading.Lock()
_ordinals: Counter[tuple[str, int]] = Counter()


def _next_ordinal(origin: tuple[str, int]) -> int:
    """How many unnamed flows this creation site made before: a factory called twice makes
    two flows at one line, and they must not share subjects."""
    with _ordinals_lock:
        ordinal = _ordinals[origin]
        _ordinals[origin] += 1
        return ordinal


def _caller_origin() -> tuple[str, int]:
    """File stem and line of the code that created the flow: stable across processes."""
    frame = inspect.currentframe()
    try:
        caller = frame.f_back.f_back if frame and frame.f_back else None
        if caller is None:
            return ("flow", 0)
        filename = caller.f_code.co_filename
        stem = os.path.splitext(os.path.basename(filename))[0] or "flow"
        return (stem, caller.f_lineno)
    finally:
        del frame


def _route_operator(block: _Block) -> Operator:
    cases = []
    for condition, signal in zip(block.cases, block.case_signals, strict=True):
        if callable(condition):
            cases.append({"signal": signal, "judged": True})
        else:
            cases.append({"signal": signal, "value": condition})
    else_signal = f"Match-{block.id}-Else" if block.has_else else ""
    result = f"Match-{block.id}-Result"
    return Operator(
        id=f"match-route-{block.id}",
        kind="match_route",
        name=f"match:{block.id}",
        emits=(*block.case_signals, *([else_signal] if else_signal else []), result),
        options={
            "mode": block.mode,
            "cases": cases,
            "else": else_signal,
            "result": result,
            "judge": block.judge,
            "collect": f"match-collect-{block.id}",
        },
    )


def _check_bindings(spec: Mapping[str, Any] | None, scopes: set[str], what: str) -> None:
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise FlowDefinitionError(f"to_sub_flow({what}=...) takes a mapping")
    for scope, binding in spec.items():
        if scope not in scopes:
            raise FlowDefinitionError(
                f"to_sub_flow({what}=...) scope {scope!r} is not supported; use "
                f"{sorted(scopes)} (flow_data and resources bindings are not carried across "
                "executions; every child sees the parent's resources)"
            )
        if not isinstance(binding, str | Mapping):
            raise FlowDefinitionError(
                f"to_sub_flow({what}={{{scope!r}: ...}}) takes a path string or a mapping"
            )


def _condition_label(condition: Any) -> Any:
    if callable(condition):
        return ["callable", getattr(condition, "__qualname__", type(condition).__name__)]
    try:
        canonical_json(condition)
    except (TypeError, ValueError) as exc:
        raise FlowDefinitionError(
            f"a case value must be JSON-able (it is part of the flow graph), not "
            f"{type(condition).__name__}; use a callable condition instead"
        ) from exc
    return ["value", condition]


def _judge(cases: list[Any], mode: str) -> Handler:
    """The internal chunk that evaluates a match's cases when one of them is user code.

    A callable condition cannot run inside the pure execution actor, so the match asks this
    chunk, hosted like any other, which cases hold; value cases are compared here too, so the
    cases are judged in declaration order in one place.
    """

    async def judge(data: Any) -> dict[str, Any]:
        hits: list[int] = []
        for index, condition in enumerate(cases):
            if callable(condition):
                verdict = condition(data)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                hit = verdict is True
            else:
                hit = bool(data.value == condition)
            if hit:
                hits.append(index)
                if mode == "hit_first":
                    break
        return {"hits": hits, "value": data.value}

    return judge


DEFAULT_BACKOFF = (1.0, 5.0, 30.0)
"""Seconds before the first, second and every later retry, when a chunk sets none."""


def _chunk_policy(
    retries: int, backoff: float | tuple[float, ...] | list[float] | None, timeout: float | None
) -> dict[str, Any]:
    """The non-default fields of a chunk's ChunkSpec (defaults keep old fingerprints)."""
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise FlowDefinitionError(f"retries must be a non-negative integer, not {retries!r}")
    delays = (backoff,) if isinstance(backoff, int | float) else tuple(backoff or ())
    if any(not isinstance(d, int | float) or d < 0 for d in delays):
        raise FlowDefinitionError(f"backoff must be seconds >= 0, not {backoff!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise FlowDefinitionError(f"timeout must be seconds > 0 or None, not {timeout!r}")
    policy: dict[str, Any] = {}
    if retries:
        policy["retries"] = retries
        policy["backoff"] = [float(d) for d in delays or DEFAULT_BACKOFF]
    if timeout is not None:
        policy["timeout"] = float(timeout)
    return policy


def _spec_policy(policy: dict[str, Any] | None) -> dict[str, Any]:
    fields = dict(policy or {})
    if "backoff" in fields:
        fields["backoff"] = tuple(float(d) for d in fields["backoff"])
    return fields


def chunk_id(name: str) -> str:
    """The chunk id TriggerFlow gives an explicitly named chunk, so trigger events read the
    same (``Chunk[name]-chunk-<16 hex>``); we use it for every chunk because it depends on the
    name alone and so agrees across processes."""
    body = json.dumps(
        {"kind": "explicit_name", "name": name}, sort_keys=True, separators=(",", ":")
    )
    return "chunk-" + hashlib.sha1(body.encode("utf-8")).hexdigest()[:16]
