"""The compiled flow graph: the wire protocol every process of a flow agrees on.

Operators have ids derived from the definition (never from memory addresses or uuids), so two
processes importing the same module build byte-identical graphs and the same ``fingerprint``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

TriggerType = Literal["event", "runtime_data", "flow_data"]
OperatorKind = Literal[
    "chunk",
    "batch_fanout",
    "batch_collect",
    "when_gate",
    "result_sink",
    "for_each_split",
    "for_each_collect",
    "match_route",
    "match_collect",
    "collect_branch",
    "sub_flow",
]

START_EVENT = "START"
"""The event a new execution emits first; ``flow.to(chunk)`` listens on it."""


class Signal(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Something an operator can listen to: an event name, or a state/flow-data key."""

    type: TriggerType
    name: str


class Operator(msgspec.Struct, frozen=True, kw_only=True):
    """One node of the graph.

    ``chunk`` operators run user code in a chunk actor; every other kind is internal and runs
    inside the execution actor. ``options`` holds what the kind needs (see actors/execution.py).
    """

    id: str
    kind: OperatorKind
    name: str
    emits: tuple[str, ...] = ()
    options: dict[str, Any] = {}


class Edge(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """``operator`` handles ``signal``. Edges are kept in registration order, which is the order
    handlers run in and the order an awaited emit returns their results."""

    signal: Signal
    operator: str


class ChunkSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A chunk as the bus sees it: its name, the subject token it is invoked on, the event its
    completion emits, and its declared retry/timeout policy.

    ``retries``: attempts after the first when the handler raises (0: the first exception
    fails the execution, as in TriggerFlow); ``backoff``: seconds before each retry (the last
    repeats); ``timeout``: seconds one attempt may run. Defaults are omitted from the encoding,
    so a chunk without a policy keeps the fingerprint it had before policies existed."""

    name: str
    token: str
    trigger: str
    retries: int = 0
    backoff: tuple[float, ...] = ()
    timeout: float | None = None


class FlowGraph(msgspec.Struct, frozen=True, kw_only=True):
    """A whole flow. ``fingerprint`` is a digest of everything else."""

    v: int = 1
    flow: str
    chunks: tuple[ChunkSpec, ...]
    operators: tuple[Operator, ...]
    edges: tuple[Edge, ...]
    fingerprint: str = ""

    def with_fingerprint(self) -> FlowGraph:
        """Return this graph with its fingerprint computed from its canonical encoding."""
        body = msgspec.structs.replace(self, fingerprint="")
        digest = hashlib.sha256(canonical_json(body)).hexdigest()[:32]
        return msgspec.structs.replace(self, fingerprint=digest)


_canonical_encoder = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """Encode with sorted keys, so equal definitions give equal bytes."""
    return _canonical_encoder.encode(value)


def digest(*parts: Any, length: int = 12) -> str:
    """A short stable digest of JSON-able parts, for deterministic ids."""
    return hashlib.sha256(canonical_json(list(parts))).hexdigest()[:length]


graph_decoder = msgspec.json.Decoder(FlowGraph)
