"""State operations on dotted keys, and the close snapshot, as TriggerFlow's state behaves."""

from __future__ import annotations

from typing import Any

import pytest

from triggerbus.actors.state_paths import (
    FINAL_RESULT_KEY,
    apply_state_op,
    close_snapshot,
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
