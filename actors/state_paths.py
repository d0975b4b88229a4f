"""Execution state operations and the close snapshot, shared by the actor and runtime data.

Keys are dotted paths, as in TriggerFlow: ``set("user.name", "ann")`` writes
``{"user": {"name": "ann"}}``, and ``get("user.name")`` reads it back. A key without a dot is a
plain top-level key. Listeners still listen to the key as written (``"user.name"``), so a
listener on ``"user"`` does not fire for a write to ``"user.name"``.
"""

from __future__ import annotations

import copy
from typing import Any

from triggerbus.contracts.snapshot import Snapshot

FINAL_RESULT_KEY = "$final_result"
_MISSING: Any = object()
_SCALARS = frozenset({str, int, float, bool, type(None)})


def copy_value(value: Any) -> Any:
    """A deep copy of state as it comes off the wire: dicts, lists and scalars.

    Why not ``copy.deepcopy``: the actor copies the whole state at least twice per step (into
    the transition it works on, and into each invocation it sends), and deepcopy's memo and
    dispatch made that 3-4x slower than this walk. Anything that is not plain JSON data (a
    tuple, a dict subclass, a user's object) is still handed to deepcopy. A value shared
    twice comes out as two copies, as it would after a store and a load.
    """
    cls = value.__class__
    if cls is dict:
        return {k: v if v.__class__ in _SCALARS else copy_value(v) for k, v in value.items()}
    if cls is list:
        return [v if v.__class__ in _SCALARS else copy_value(v) for v in value]
    if cls in _SCALARS:
        return value
    return copy.deepcopy(value)


def apply_state_op(state: dict[str, Any], op: str, key: str, value: Any) -> Any:
    """Change ``state`` in place and return the key's new value (what listeners receive)."""
    if op == "set":
        _set_path(state, key, value)
        return value
    if op == "append":
        current = get_path(state, key)
        if current is None:
            current = []
        elif not isinstance(current, list):
            current = [current]
        current = [*current, value]
        _set_path(state, key, current)
        return current
    if op == "delete":
        parent, leaf = _parent(state, key, create=False)
        if parent is not None:
            parent.pop(leaf, None)
        return None
    raise ValueError(f"unknown state operation {op!r}")


def get_path(state: dict[str, Any], key: str, default: Any = None) -> Any:
    """The value at dotted ``key``, or ``default`` when any step of the path is missing."""
    parent, leaf = _parent(state, key, create=False)
    if parent is None:
        return default
    return parent.get(leaf, default)


def has_path(state: dict[str, Any], key: str) -> bool:
    """Whether dotted ``key`` holds a value (``None`` counts as a value)."""
    return get_path(state, key, _MISSING) is not _MISSING


def close_snapshot(snapshot: Snapshot) -> dict[str, Any]:
    """What TriggerFlow returns on close: the state, plus ``$final_result`` once ``end()`` ran."""
    result = dict(snapshot.state)
    if snapshot.has_result:
        result[FINAL_RESULT_KEY] = snapshot.result
    return result


def _set_path(state: dict[str, Any], key: str, value: Any) -> None:
    parent, leaf = _parent(state, key, create=True)
    assert parent is not None
    parent[leaf] = value


def _parent(state: dict[str, Any], key: str, *, create: bool) -> tuple[dict[str, Any] | None, str]:
    """The dict that holds the last segment of ``key``, and that segment.

    With ``create``, missing or non-dict intermediate values are replaced by dicts (a write to
    ``a.b`` where ``a`` is a string makes ``a`` a dict); without it, ``None`` is returned.
    """
    *path, leaf = key.split(".")
    node = state
    for segment in path:
        child = node.get(segment)
        if not isinstance(child, dict):
            if not create:
                return None, leaf
            child = {}
            node[segment] = child
        node = child
    return node, leaf
