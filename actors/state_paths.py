"""Execution state operations and the close snapshot, shared by the actor and runtime data."""

from __future__ import annotations

from typing import Any

from triggerbus.contracts.snapshot import Snapshot

FINAL_RESULT_KEY = "$final_result"


def apply_state_op(state: dict[str, Any], op: str, key: str, value: Any) -> Any:
    """Change ``state`` in place and return the key's new value (what listeners receive)."""
    if op == "set":
        state[key] = value
        return value
    if op == "append":
        current = state.get(key)
        if current is None:
            current = []
        elif not isinstance(current, list):
            current = [current]
        current = [*current, value]
        state[key] = current
        return current
    if op == "delete":
        state.pop(key, None)
        return None
    raise ValueError(f"unknown state operation {op!r}")


def close_snapshot(snapshot: Snapshot) -> dict[str, Any]:
    """What TriggerFlow returns on close: the state, plus ``$final_result`` once ``end()`` ran."""
    result = dict(snapshot.state)
    if snapshot.has_result:
        result[FINAL_RESULT_KEY] = snapshot.result
    return result
