"""State operations on dotted keys, and the close snapshot, as TriggerFlow's state behaves."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from triggerbus.actors.state_paths import (
    FINAL_RESULT_KEY,
    apply_state_op,
    close_snapshot,
    copy_value,
    get_path,
    has_path,
)
from triggerbus.contracts.snapshot import Snapshot


class TestDottedKeys:
    def test_dotted_set_nests(self) -> None:
        """``a.b`` then ``a.c`` build one nested dict, not flat keys."""
        state: dict[str, Any] = {}
        apply_state_op(state, "set", "a.b", 1)
        apply_state_op(state, "set", "a.c", 2)
        assert state == {"a": {"b": 1, "c": 2}}
        assert get_path(state, "a") == {"b": 1, "c": 2}
        assert get_path(state, "a.b") == 1

    def test_dotted_set_replaces_a_scalar_on_the_way(self) -> None:
        """Writing below a non-dict value turns it into a dict."""
        state: dict[str, Any] = {"a": "text"}
        apply_state_op(state, "set", "a.b", 1)
        assert state == {"a": {"b": 1}}

    def test_get_missing_path_gives_default(self) -> None:
        """A missing step anywhere on the path gives the default."""
        state: dict[str, Any] = {"a": {"b": 1}, "s": "x"}
        assert get_path(state, "a.z") is None
        assert get_path(state, "q.b", "DEF") == "DEF"
        assert get_path(state, "s.b", 7) == 7

    def test_has_path_counts_none_as_present(self) -> None:
        """A key set to None exists."""
        state: dict[str, Any] = {"a": {"b": None}}
        assert has_path(state, "a.b")
        assert not has_path(state, "a.c")
        assert not has_path(state, "x")

    def test_dotted_append_and_delete(self) -> None:
        """Append and delete follow the path too."""
        state: dict[str, Any] = {}
        assert apply_state_op(state, "append", "log.items", "a") == ["a"]
        assert apply_state_op(state, "append", "log.items", "b") == ["a", "b"]
        assert apply_state_op(state, "delete", "log.items", None) is None
        assert state == {"log": {}}

    def test_delete_of_missing_path_changes_nothing(self) -> None:
        """Deleting below a missing or scalar value leaves the state alone."""
        state: dict[str, Any] = {"s": "x"}
        apply_state_op(state, "delete", "s.b", None)
        apply_state_op(state, "delete", "q.b", None)
        assert state == {"s": "x"}


class TestPlainKeys:
    def test_append_to_scalar_makes_a_list(self) -> None:
        """Appending to a scalar keeps it as the first element."""
        state: dict[str, Any] = {"k": "x"}
        assert apply_state_op(state, "append", "k", "y") == ["x", "y"]

    def test_unknown_op_raises(self) -> None:
        """An operation outside set/append/delete is a programming error."""
        with pytest.raises(ValueError, match="merge"):
            apply_state_op({}, "merge", "k", 1)


class TestCloseSnapshot:
    def test_final_result_only_when_end_ran(self) -> None:
        """``$final_result`` appears once ``end()`` stored a result, even a None one."""
        base = Snapshot(flow="f", execution_id="e", fingerprint="x", state={"b": 1})
        assert close_snapshot(base) == {"b": 1}
        ended = Snapshot(
            flow="f", execution_id="e", fingerprint="x", state={"b": 1}, has_result=True
        )
        assert close_snapshot(ended) == {"b": 1, FINAL_RESULT_KEY: None}

    def test_end_overwrites_a_user_set_final_result(self) -> None:
        """A state key named ``$final_result`` yields to the result of ``end()``."""
        snapshot = Snapshot(
            flow="f",
            execution_id="e",
            fingerprint="x",
            state={FINAL_RESULT_KEY: "manual"},
            result="from-end",
            has_result=True,
        )
        assert close_snapshot(snapshot) == {FINAL_RESULT_KEY: "from-end"}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def _containers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in _containers(v))]
    if isinstance(value, list):
        return [value, *(c for v in value for c in _containers(v))]
    return []


@dataclass
class _Point:
    x: int


class TestCopyValue:
    @given(_JSON)
    def test_wire_data_is_copied_whole(self, value: Any) -> None:
        """Equal, with every dict and list new: what deepcopy gave for wire data."""
        copied = copy_value(value)
        assert copied == value
        assert msgspec.json.encode(copied) == msgspec.json.encode(value)
        originals = {id(c) for c in _containers(value)}
        assert not originals & {id(c) for c in _containers(copied)}

    def test_changing_the_copy_leaves_the_original(self) -> None:
        state = {"user": {"tags": ["a"]}, "n": 1}
        copied = copy_value(state)
        copied["user"]["tags"].append("b")
        copied["user"]["name"] = "ann"
        assert state == {"user": {"tags": ["a"]}, "n": 1}

    def test_other_values_go_to_deepcopy_and_keep_their_types(self) -> None:
        point = _Point(1)
        ordered = OrderedDict(a=[1])
        inner = [2]
        copied = copy_value({"p": point, "t": (1, inner), "o": ordered})
        assert copied["p"] == point and copied["p"] is not point
        assert copied["t"] == (1, [2]) and copied["t"][1] is not inner
        assert type(copied["o"]) is OrderedDict and copied["o"]["a"] is not ordered["a"]
