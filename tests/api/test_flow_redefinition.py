"""A flow's definition as Agently lets it change: flow data set before the graph is built, a
flow extended after it ran, a chunk declared on one flow and run by another. Each case came
from a differential probe against Agently 4.1.3.9; changing the import line must be all a user
does."""

from __future__ import annotations

import asyncio

import pytest

from triggerbus import FlowDefinitionError, LifecycleError, TriggerFlow

BOUND = 20.0
"""Upper bound for every await in these tests; a healthy run takes a fraction of a second."""


class TestFlowDataBeforeTheGraph:
    async def test_flow_data_set_before_any_chunk_reaches_the_first_execution(
        self, runtime
    ) -> None:
        """Agently: ``{'$final_result': 1}``. Setting flow data used to host the empty flow,
        and the start then refused the grown definition."""
        flow = TriggerFlow(name="redef_data")
        async with asyncio.timeout(BOUND):
            await flow.async_set_flow_data("k", 1)
            flow.to(lambda d: d.get_flow_data("k")).end()
            assert await flow.async_start(None) == {"$final_result": 1}

    async def test_flow_data_and_resources_changed_before_any_chunk_reach_the_chunks(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="redef_reads")
        flow.set_runtime_resource("factor", 3)
        async with asyncio.timeout(BOUND):
            assert await flow.async_get_flow_data("items", "none") == "none"
            await flow.async_append_flow_data("items", "a")
            flow.to(
                ("read", lambda d: [d.get_flow_data("items"), d.require_resource("factor")])
            ).end()
            assert await flow.async_start(None) == {"$final_result": [["a"], 3]}


class TestExtendingAFlowThatRan:
    async def test_a_flow_extended_after_it_ran_runs_its_new_definition(self, runtime) -> None:
        """Agently runs both; the second execution has the extension."""
        flow = TriggerFlow(name="redef_extend")
        flow.to(("plus_one", lambda d: d.value + 1)).end()
        extra_seen: list[int] = []

        def extra(data):
            extra_seen.append(data.value)
            return data.value

        async with asyncio.timeout(BOUND):
            assert await flow.async_start(1) == {"$final_result": 2}
            flow.when("Extra").to(extra)
            execution = flow.create_execution(auto_close=False)
            await execution.async_start(2)
            await execution.async_emit("Extra", 7)
            assert await execution.async_close() == {"$final_result": 3}
        assert extra_seen == [7]

    async def test_a_flow_changed_while_an_execution_of_it_is_open_is_refused_saying_why(
        self, runtime
    ) -> None:
        """One process hosts one definition of a flow: an open execution of the earlier one
        would be stranded (its messages refused as a fingerprint mismatch), so the change is
        refused, naming the execution."""
        flow = TriggerFlow(name="redef_open")
        flow.to(("first", lambda d: d.value)).end()
        async with asyncio.timeout(BOUND):
            held = flow.create_execution(auto_close=False)
            await held.async_start(1)
            flow.when("Extra").to(("second", lambda d: d.value))
            with pytest.raises(LifecycleError) as raised:
                await flow.async_start(2)
        message = str(raised.value)
        assert "'redef_open' changed after its first execution in this process" in message
        assert held.execution_id in message
        assert "own name" in message

    async def test_two_flow_objects_with_one_name_are_refused_clearly(self, runtime) -> None:
        first = TriggerFlow(name="redef_twins")
        first.to(("a", lambda d: d.value)).end()
        second = TriggerFlow(name="redef_twins")
        second.to(("b", lambda d: d.value)).end()
        async with asyncio.timeout(BOUND):
            assert await first.async_start(1) == {"$final_result": 1}
            with pytest.raises(LifecycleError, match="two different flows are named"):
                await second.async_start(1)
            assert await first.async_start(2) == {"$final_result": 2}


class TestAChunkSharedBetweenFlows:
    async def test_a_chunk_declared_on_one_flow_runs_in_another(self, runtime) -> None:
        """Agently: ``{'$final_result': 6}``; both flows keep working."""
        f1 = TriggerFlow(name="redef_share_a")

        @f1.chunk("shared", retries=1, backoff=0.01)
        def shared(d):
            return d.value * 2

        f1.to(shared).end()
        f2 = TriggerFlow(name="redef_share_b")
        f2.to(shared).end()
        f2.when(shared).to(("after", lambda d: d.value + 1))
        async with asyncio.timeout(BOUND):
            assert await f2.async_start(3) == {"$final_result": 6}
            assert await f1.async_start(4) == {"$final_result": 8}
        assert f2.get_chunk("shared").handler is shared.handler
        (spec,) = [c for c in f2.graph().chunks if c.name == "shared"]
        assert spec.retries == 1  # the chunk's retry policy came with it

    def test_a_name_taken_by_another_handler_is_refused_saying_what_to_do(self) -> None:
        f1 = TriggerFlow(name="redef_clash_a")

        @f1.chunk("shared")
        def shared(d):
            return 1

        f2 = TriggerFlow(name="redef_clash_b")

        @f2.chunk("shared")
        def other(d):
            return 2

        with pytest.raises(FlowDefinitionError, match="give one of them another name"):
            f2.to(shared)
