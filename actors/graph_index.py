"""Lookups over a compiled FlowGraph, built once per flow and shared by every transition."""

from __future__ import annotations

from dataclasses import dataclass, field

from triggerbus.contracts.graph import ChunkSpec, FlowGraph, Operator, Signal


@dataclass(frozen=True)
class GraphIndex:
    """Which operators handle a signal (in registration order), and operators by id."""

    graph: FlowGraph
    handlers: dict[tuple[str, str], tuple[Operator, ...]] = field(default_factory=dict)
    operators: dict[str, Operator] = field(default_factory=dict)
    chunks: dict[str, ChunkSpec] = field(default_factory=dict)
    chunk_operators: dict[str, Operator] = field(default_factory=dict)

    @classmethod
    def build(cls, graph: FlowGraph) -> GraphIndex:
        operators = {op.id: op for op in graph.operators}
        handlers: dict[tuple[str, str], list[Operator]] = {}
        for edge in graph.edges:
            handlers.setdefault((edge.signal.type, edge.signal.name), []).append(
                operators[edge.operator]
            )
        return cls(
            graph=graph,
            handlers={key: tuple(ops) for key, ops in handlers.items()},
            operators=operators,
            chunks={chunk.name: chunk for chunk in graph.chunks},
            chunk_operators={
                str(op.options["chunk"]): op for op in graph.operators if op.kind == "chunk"
            },
        )

    def handlers_for(self, signal: Signal) -> tuple[Operator, ...]:
        return self.handlers.get((signal.type, signal.name), ())
