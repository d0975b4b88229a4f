"""Conformance of the TriggerFlow language (for_each, match/if, collect, side_branch, when
scopes, state, flow data), each test run with chunks in this process and in a worker process.

Expected values were observed with Agently 4.1.3.9 and 4.1.4.10 where Agently behaves as its
documentation says; where it does not, the test says so and docs/compatibility.md lists it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.flows import lang_core as flows
from tests.language.conftest import Hosting, succeeded_in_worker

pytestmark = pytest.mark.asyncio(loop_scope="module")
FLOWS_MODULE = "tests.flows.lang_core"


async def collect_stream(execution: Any, value: Any = None, *, idle: float = 5.0) -> list[Any]:
    """Every stream item; ``idle`` is the stream's own bound on the wait for each next item."""
    return [item async for item in execution.get_async_runtime_stream(value, timeout=idle)]


class TestForEach:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ([1, 2, 3], [2, 4, 6]),
            ("abc", ["abc"]),
            ({"k": 1}, [{"k": 1}]),
            ([], []),
            (7, [14]),
        ],
        ids=["list", "str", "dict", "empty", "number"],
    )
    async def test_sequences_split_and_anything_else_is_one_item(
        self, hosting: Hosting, value: Any, expected: Any
    ) -> None:
        """A list splits into items; a string, a dict or a number is one item; [] gives []."""
        async with asyncio.timeout(20):
            result = await flows.fe_split.async_start(value)
        assert result == {"$final_result": expected}

    async def test_results_keep_input_order_and_concurrency_caps_items_in_flight(
        self, hosting: Hosting
    ) -> None:
        """Items finish in reverse order but results keep the input order; with
        concurrency=2 never more than two items run at once."""
        execution = flows.fe_cap.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start([1, 2, 3, 4])
            items = await stream
        assert result == {"$final_result": [10, 20, 30, 40]}
        running, peak = 0, 0
        for kind, _ in items:
            running += 1 if kind == "start" else -1
            peak = max(peak, running)
        assert peak == 2
        assert [v for kind, v in items if kind == "start"][:2] == [1, 2]
        await succeeded_in_worker(hosting, "tracked")

    async def test_nested_for_each(self, hosting: Hosting) -> None:
        async with asyncio.timeout(20):
            result = await flows.fe_nested.async_start([[1, 2], [3], []])
        assert result == {"$final_result": [[2, 3], [4], []]}


class TestMatch:
    @pytest.mark.parametrize(("value", "expected"), [(2, "a(2)"), (1, "b(1)"), (0, "c(0)")])
    async def test_hit_first_takes_the_first_case_that_holds(
        self, hosting: Hosting, value: int, expected: str
    ) -> None:
        async with asyncio.timeout(20):
            assert await flows.m_first.async_start(value) == {"$final_result": expected}
        await succeeded_in_worker(hosting, flows.m_first.graph().chunks[-1].name)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [(3, ["a(3)", "b(3)", "c(3)"]), (2, ["a(2)", "b(2)"]), (1, ["b(1)"]), (0, 0)],
    )
    async def test_hit_all_lists_results_in_case_order(
        self, hosting: Hosting, value: int, expected: Any
    ) -> None:
        """Case "a" is the slowest, yet comes first; no hit and no else passes the value."""
        async with asyncio.timeout(20):
            assert await flows.m_all.async_start(value) == {"$final_result": expected}

    @pytest.mark.parametrize(("value", "expected"), [("x", "x(x)"), ("y", "y(y)"), ("z", "z")])
    async def test_value_cases_and_pass_through(
        self, hosting: Hosting, value: str, expected: str
    ) -> None:
        async with asyncio.timeout(20):
            assert await flows.m_value.async_start(value) == {"$final_result": expected}

    @pytest.mark.parametrize(("value", "expected"), [(1, "pos"), (-1, "neg"), (0, "zero")])
    async def test_if_elif_else(self, hosting: Hosting, value: int, expected: str) -> None:
        async with asyncio.timeout(20):
            assert await flows.m_if.async_start(value) == {"$final_result": expected}


class TestCollectAndBranches:
    async def test_collect_joins_named_branches_in_declaration_order(
        self, hosting: Hosting
    ) -> None:
        async with asyncio.timeout(20):
            result = await flows.collected.async_start(None)
        assert result == {"$final_result": {"ba": "A", "bb": "B"}}

    async def test_side_branch_runs_without_moving_the_chain(self, hosting: Hosting) -> None:
        async with asyncio.timeout(20):
            result = await flows.side.async_start("v")
        assert result == {"side": "side(main(v))", "$final_result": "then(main(v))"}

    async def test_and_join_is_scoped_per_for_each_item(self, hosting: Hosting) -> None:
        """Each item's A and B join with each other, never with another item's."""
        execution = flows.when_items.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start([1, 2, 3])
            items = await stream
        assert result == {"$final_result": [1, 2, 3]}
        joined = sorted(items, key=lambda item: item["event"]["A"])
        assert joined == [{"event": {"A": n, "B": n * 10}} for n in (1, 2, 3)]


class TestState:
    async def test_dotted_keys_append_and_emit_false(self, hosting: Hosting) -> None:
        execution = flows.states.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start(None)
            items = await stream
        assert result == {
            "user": {"name": "ann"},
            "log": ["a", "b"],
            "quiet": 1,
            "$final_result": {"name": "ann"},
        }
        assert items == [{"log": ["a"], "trigger": "log"}, {"log": ["a", "b"], "trigger": "log"}]


class TestFlowData:
    async def test_changes_reach_every_live_execution_and_later_chunks_read_them(
        self, hosting: Hosting
    ) -> None:
        """A change made here fires ``when({"flow_data": ...})`` in every live execution (in
        whichever process hosts it); a change made by a chunk does too; executions started
        afterwards read the stored value."""
        flow = flows.shared
        first = flow.create_execution(auto_close=False)
        second = flow.create_execution(auto_close=False)
        async with asyncio.timeout(30):
            await flow.async_del_flow_data("threshold", emit=False)
            readers = [asyncio.create_task(collect_stream(e, idle=10)) for e in (first, second)]
            await first.async_start(None)
            await second.async_start(None)
            await flow.async_set_flow_data("threshold", 5)
            assert await flow.async_get_flow_data("threshold") == 5
            assert await first.async_emit("Set", 7) == [7]
            assert await flow.async_get_flow_data() == {"threshold": 7}
            third = await flow.async_start(None)
            closing = [await e.async_close() for e in (first, second)]
            streams = await asyncio.gather(*readers)
        assert third == {"$final_result": 7}
        assert closing == [{"$final_result": None}, {"$final_result": None}]
        expected = [
            {"value": 5, "type": "flow_data", "event": "threshold"},
            {"value": 7, "type": "flow_data", "event": "threshold"},
        ]
        assert streams == [expected, expected]
        await succeeded_in_worker(hosting, "set_from_chunk")
