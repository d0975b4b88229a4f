"""Flow data: one dict shared by every execution of a flow, kept in KV and broadcast on change.

A change is a compare-and-set on the flow's key (``bus/subjects.py`` spells it), retried on
conflict, then a ``FlowDataUpdated`` on the flow's core-NATS flow-data subject. Each execution
host turns that broadcast into one ``FlowDataChanged`` mailbox message per live execution it
holds (ids carry the revision, so two hosts relaying the same change deliver it once).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from triggerbus.actors.state_paths import apply_state_op, has_path
from triggerbus.bus.jetstream import Bus
from triggerbus.contracts.codec import encode
from triggerbus.contracts.messages import FlowDataUpdated, StateOp
from triggerbus.errors import RevisionConflictError

MAX_CAS_RETRIES = 32
_loose = msgspec.json.Decoder(dict[str, Any])


async def load_flow_data(bus: Bus, flow: str) -> tuple[dict[str, Any], int]:
    """The flow data and its KV revision (``({}, 0)`` before the first change)."""
    loaded = await bus.load(bus.subjects.flow_data_key(flow))
    if loaded is None:
        return {}, 0
    return _loose.decode(loaded[0]), loaded[1]


async def change_flow_data(
    bus: Bus, flow: str, op: StateOp, key: str, value: Any, *, emit: bool = True
) -> FlowDataUpdated | None:
    """Apply one change and announce it; ``None`` when it changed nothing (deleting a key
    that is not there)."""
    kv_key = bus.subjects.flow_data_key(flow)
    for _ in range(MAX_CAS_RETRIES):
        loaded = await bus.load(kv_key)
        data: dict[str, Any] = _loose.decode(loaded[0]) if loaded else {}
        if op == "delete" and not has_path(data, key):
            return None
        new_value = apply_state_op(data, op, key, copy.deepcopy(value))
        try:
            revision = await bus.store(kv_key, encode(data), revision=loaded[1] if loaded else None)
        except RevisionConflictError:
            continue
        update = FlowDataUpdated(
            flow=flow, op=op, key=key, value=new_value, data=data, revision=revision, emit=emit
        )
        await bus.publish_core(bus.subjects.flow_data(flow), encode(update))
        return update
    raise RevisionConflictError(
        f"flow data of {flow!r}: gave up after {MAX_CAS_RETRIES} conflicting writes", key=kv_key
    )
