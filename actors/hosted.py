"""What a host needs to know about a flow, as plain data: no builder, no API objects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from triggerbus.actors.graph_index import GraphIndex
from triggerbus.contracts.graph import FlowGraph

MISMATCH_REDELIVERIES = 20
"""How often a process whose flow definition differs hands a message back before
dead-lettering it."""


def mismatch_delay(delivered: int) -> float:
    """Seconds before a message this process refused (a different flow definition) comes back:
    0.2 s, doubling to 5 s, so the 20 hand-backs wait about 75 s for a matching process (a
    rolling deploy's new workers, say) before the message is dead-lettered."""
    return min(0.2 * 2 ** max(0, delivered - 1), 5.0)


def _no_resources(execution_id: str) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class HostedFlow:
    """A compiled flow plus the local pieces that cannot travel: handlers and live resources.

    ``local_resources`` returns the runtime resources the creating process registered for an
    execution (database clients and the like); remote processes see only the serialisable ones
    that rode in the start message. ``flow_resources`` is this process's flow-level ones
    (``flow.set_runtime_resource``), live: every execution's chunks hosted here see them,
    under the execution's own; they never travel.
    """

    graph: FlowGraph
    handlers: Mapping[str, Callable[..., Any]]
    local_resources: Callable[[str], Mapping[str, Any]] = _no_resources
    flow_resources: Mapping[str, Any] = field(default_factory=dict)
    index: GraphIndex = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", GraphIndex.build(self.graph))

    def resources_for(self, execution_id: str, sent: Mapping[str, Any]) -> dict[str, Any]:
        """What a chunk of ``execution_id`` sees: this process's flow-level resources, under
        those ``sent`` in the start message, under the live ones registered here for it."""
        return {**self.flow_resources, **sent, **self.local_resources(execution_id)}

    @property
    def name(self) -> str:
        return self.graph.flow

    @property
    def fingerprint(self) -> str:
        return self.graph.fingerprint
