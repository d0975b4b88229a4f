"""The TriggerFlow builder: the same names and chaining as Agently's, compiled to a FlowGraph.

The builder records operators and edges as it is called; ``graph()`` compiles them into a
``contracts`` FlowGraph whose ids are digests of the definition, so every process that imports
the same module builds the same graph and agrees on subjects without coordination.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    digest,
)
from triggerbus.errors import FlowDefinitionError

if TYPE_CHECKING:
    from triggerbus.execution import Execution

Handler = Callable[..., Any]
WhenMode = Literal["and", "or", "simple_or"]


@dataclass(frozen=True)
class TriggerFlowChunk:
    """A named step of a flow; what ``@flow.chunk`` returns and ``to``/``batch`` accept."""

    name: str
    handler: Handler
    trigger: str
    operator_id: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)


class TriggerFlowProcess:
    """A position in the flow: what the next ``to``/``batch``/``end`` will listen to."""

    def __init__(self, flow: TriggerFlow, signal: Signal) -> None:
        self._flow = flow
        self._signal = signal

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
        return TriggerFlowProcess(self._flow, Signal(type="event", name=resolved.trigger))

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
        return TriggerFlowProcess(self._flow, Signal(type="event", name=batch_trigger))

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
        self._operators: dict[str, Operator] = {}
        self._edges: list[Edge] = []
        self._graph: FlowGraph | None = None
        self._start = TriggerFlowProcess(self, Signal(type="event", name=START_EVENT))

    # --- definition ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The flow's name as it appears in subjects."""
        return self.graph().flow

    def chunk(self, handler_or_name: Handler | str | None = None, /) -> Any:
        """Declare a chunk: ``@flow.chunk``, ``@flow.chunk("name")`` or ``flow.chunk(func)``."""
        if handler_or_name is None:
            return lambda handler: self._declare_chunk(handler, handler.__name__)
        if isinstance(handler_or_name, str):
            chunk_name = handler_or_name
            return lambda handler: self._declare_chunk(handler, chunk_name)
        if callable(handler_or_name):
            return self._declare_chunk(handler_or_name, handler_or_name.__name__)
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
                ChunkSpec(name=c.name, token=token(c.name), trigger=c.trigger)
                for c in self._chunks.values()
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
        """Chunk name to the function that runs it."""
        return {name: chunk.handler for name, chunk in self._chunks.items()}

    # --- running -----------------------------------------------------------------------------

    def create_execution(
        self,
        *,
        execution_id: str | None = None,
        skip_exceptions: bool | None = None,
        concurrency: int | None = None,
        runtime_resources: dict[str, Any] | None = None,
        auto_close: bool = True,
        auto_close_timeout: float | None = 10.0,
    ) -> Execution:
        """A handle for a new execution; nothing is sent until it starts."""
        from triggerbus.execution import Execution

        return Execution(
            self,
            execution_id=execution_id,
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
        """Start an execution and yield its runtime stream items until the stream ends."""
        execution = self.create_execution(
            concurrency=concurrency,
            runtime_resources=runtime_resources,
            auto_close_timeout=0.0,
        )
        return execution.get_async_runtime_stream(initial_value, timeout=timeout)

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

    def _declare_chunk(self, handler: Handler, name: str) -> TriggerFlowChunk:
        existing = self._chunks.get(name)
        if existing is not None and existing.handler is handler:
            return existing
        unique = name
        ordinal = 2
        while unique in self._chunks:
            unique = f"{name}-{ordinal}"
            ordinal += 1
        ident = chunk_id(unique)
        chunk = TriggerFlowChunk(
            name=unique,
            handler=handler,
            trigger=f"Chunk[{unique}]-{ident}",
            operator_id=ident,
        )
        self._chunks[unique] = chunk
        self._add_operator(
            Operator(
                id=chunk.operator_id,
                kind="chunk",
                name=unique,
                emits=(chunk.trigger,),
                options={"chunk": unique},
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
            if self._chunks.get(chunk.name) is not chunk:
                raise FlowDefinitionError(
                    f"chunk {chunk.name!r} belongs to another flow; declare it on this one"
                )
            return chunk
        if isinstance(chunk, str):
            return self.get_chunk(chunk)
        if isinstance(chunk, tuple):
            chunk_name, handler = chunk
            return self._declare_chunk(handler, chunk_name)
        if isinstance(chunk, TriggerFlow):
            raise FlowDefinitionError("sub-flows (to_sub_flow) are not supported yet")
        if callable(chunk):
            return self._declare_chunk(chunk, name or getattr(chunk, "__name__", "chunk"))
        raise FlowDefinitionError(
            f"expected a chunk, a function, a chunk name or (name, function), "
            f"not {type(chunk).__name__}"
        )

    def _when_signals(self, spec: Any) -> list[Signal]:
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
            if item in self._chunks:
                return Signal(type="event", name=self._chunks[item].trigger)
            return Signal(type="event", name=item)
        raise FlowDefinitionError(f"an event is a name or a chunk, not {type(item).__name__}")

    def _add_operator(self, operator: Operator) -> None:
        self._operators.setdefault(operator.id, operator)
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


def chunk_id(name: str) -> str:
    """The chunk id TriggerFlow gives an explicitly named chunk, so trigger events read the
    same (``Chunk[name]-chunk-<16 hex>``); we use it for every chunk because it depends on the
    name alone and so agrees across processes."""
    body = json.dumps(
        {"kind": "explicit_name", "name": name}, sort_keys=True, separators=(",", ":")
    )
    return "chunk-" + hashlib.sha1(body.encode("utf-8")).hexdigest()[:16]
