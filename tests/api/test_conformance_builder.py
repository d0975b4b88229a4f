"""Conformance with Agently TriggerFlow 4.1.x: the builder (chunk, to, when, batch, end).

Expected values come from the observed reference behaviour of Agently 4.1.3.9. Where triggerbus
differs on purpose (values cross JSON; chunk ids depend on the name only), the test asserts ours
and says so in its docstring.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from triggerbus import FlowDefinitionError, TriggerFlow, TriggerFlowChunk

BOUND = 20.0
"""Upper bound for every await in these tests; a healthy run takes a fraction of a second."""


async def run(flow: TriggerFlow, value: object = None) -> dict:
    async with asyncio.timeout(BOUND):
        return await flow.async_start(value)


# --- chunk declaration -------------------------------------------------------------------------


class TestChunkDeclaration:
    def test_named_decorator_returns_a_chunk_with_that_name(self) -> None:
        flow = TriggerFlow(name="decl")

        @flow.chunk("named_a")
        async def a(data):
            return data.value

        assert isinstance(a, TriggerFlowChunk)
        assert a.name == "named_a"
        assert a.trigger == "Chunk[named_a]-chunk-356a762c6b12130a"

    def test_bare_decorator_names_the_chunk_after_the_function(self) -> None:
        flow = TriggerFlow(name="decl")

        @flow.chunk
        def bare_b(data):
            return data.value

        assert isinstance(bare_b, TriggerFlowChunk)
        assert bare_b.name == "bare_b"

    def test_chunk_called_with_a_function_declares_it(self) -> None:
        flow = TriggerFlow(name="decl")

        async def plain(data):
            return data.value

        declared = flow.chunk(plain)
        assert isinstance(declared, TriggerFlowChunk)
        assert declared.name == "plain"
        assert list(flow.chunks) == ["plain"]

    def test_registering_the_same_function_again_returns_the_same_chunk(self) -> None:
        flow = TriggerFlow(name="decl")

        def once(data):
            return data.value

        assert flow.chunk(once) is flow.chunk(once)

    def test_chunk_ids_use_the_explicit_name_formula_for_every_chunk(self) -> None:
        """Agently digests an explicit name; for bare chunks it digests file and line.
        triggerbus uses the explicit-name formula for every chunk, so ids agree across
        processes (difference: a bare chunk's id differs from Agently's)."""
        flow = TriggerFlow(name="decl")

        @flow.chunk
        def bare_b(data):
            return data.value

        flow.to(("tup", bare_b.handler))
        flow.to(bare_b.handler, name="renamed")
        assert flow.chunks["bare_b"].trigger == "Chunk[bare_b]-chunk-eaa9d5f0d021c609"
        assert flow.chunks["tup"].trigger == "Chunk[tup]-chunk-55fd585b8781cf27"
        assert flow.chunks["renamed"].trigger == "Chunk[renamed]-chunk-8172424a79cfdf3c"

    async def test_flow_chunks_are_keyed_by_name_in_declaration_order(self, runtime) -> None:
        flow = TriggerFlow(name="t01")

        @flow.chunk("named_a")
        async def a(data):
            return f"A({data.value})"

        @flow.chunk
        def bare_b(data):
            return f"B({data.value})"

        async def plain_c(data):
            return f"C({data.value})"

        def plain_d(data):
            return {"d": data.value}

        flow.to(a).to(bare_b).to(plain_c).to(plain_d).end()
        assert list(flow.chunks) == ["named_a", "bare_b", "plain_c", "plain_d"]
        assert await run(flow, "in") == {"$final_result": {"d": "C(B(A(in)))"}}


# --- to ------------------------------------------------------------------------------------------


class TestTo:
    async def test_to_chains_pass_each_result_to_the_next_chunk(self, runtime) -> None:
        flow = TriggerFlow(name="chain")
        flow.to(lambda d: d.value + 1).to(lambda d: d.value * 10).end()
        assert await run(flow, 1) == {"$final_result": 20}

    async def test_sync_and_async_handlers_behave_the_same(self, runtime) -> None:
        flow = TriggerFlow(name="mixed")

        def sync_step(data):
            return [*data.value, "sync"]

        async def async_step(data):
            await asyncio.sleep(0.01)
            return [*data.value, "async"]

        def sync_again(data):
            return [*data.value, "sync"]

        flow.to(sync_step).to(async_step).to(sync_again).end()
        assert await run(flow, []) == {"$final_result": ["sync", "async", "sync"]}

    async def test_plain_functions_passed_to_to_become_chunks_named_after_them(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="plain")

        async def plain_c(data):
            return f"C({data.value})"

        flow.to(plain_c).end()
        assert list(flow.chunks) == ["plain_c"]
        assert await run(flow, "x") == {"$final_result": "C(x)"}

    async def test_to_a_tuple_declares_a_chunk_with_that_name(self, runtime) -> None:
        flow = TriggerFlow(name="tuple")
        flow.to(("tup", lambda d: f"tup:{d.value}")).end()
        assert [(c.name, c.trigger) for c in flow.chunks.values()] == [
            ("tup", "Chunk[tup]-chunk-55fd585b8781cf27")
        ]
        assert await run(flow, "v") == {"$final_result": "tup:v"}

    async def test_to_with_name_keyword_renames_the_chunk(self, runtime) -> None:
        flow = TriggerFlow(name="renamed")
        flow.to(lambda d: d.value, name="renamed").end()
        assert [(c.name, c.trigger) for c in flow.chunks.values()] == [
            ("renamed", "Chunk[renamed]-chunk-8172424a79cfdf3c")
        ]

    async def test_to_a_chunk_name_uses_the_declared_chunk(self, runtime) -> None:
        flow = TriggerFlow(name="lookup")

        @flow.chunk("s1")
        async def s1(data):
            return f"s1:{data.value}"

        flow.to("s1").end()
        assert await run(flow, "x") == {"$final_result": "s1:x"}

    def test_to_an_unknown_chunk_name_raises(self) -> None:
        """Agently raises NotImplementedError("Cannot find chunk named 'missing'");
        triggerbus raises FlowDefinitionError naming the chunk."""
        flow = TriggerFlow(name="lookup")
        with pytest.raises(FlowDefinitionError, match="'missing'"):
            flow.to("missing")


# --- end -----------------------------------------------------------------------------------------


class TestEnd:
    async def test_without_end_the_snapshot_is_the_state_only(self, runtime) -> None:
        flow = TriggerFlow(name="noend")

        async def setter(data):
            await data.async_set_state("x", 1)

        flow.to(setter)
        assert await run(flow) == {"x": 1}

    async def test_end_with_none_still_writes_the_final_result_key(self, runtime) -> None:
        flow = TriggerFlow(name="endnone")
        flow.to(lambda d: None).end()
        assert await run(flow) == {"$final_result": None}

    async def test_the_first_end_reached_wins(self, runtime) -> None:
        flow = TriggerFlow(name="twoends")
        flow.to(lambda d: "mid").end().to(lambda d: "late").end()
        assert await run(flow) == {"$final_result": "mid"}

    async def test_final_result_comes_after_state_keys_in_insertion_order(self, runtime) -> None:
        flow = TriggerFlow(name="order")

        async def writer(data):
            await data.async_set_state("b", 1)
            await data.async_set_state("a", 2)
            return "z"

        flow.to(writer).end()
        snapshot = await run(flow)
        assert list(snapshot.items()) == [("b", 1), ("a", 2), ("$final_result", "z")]


# --- when ----------------------------------------------------------------------------------------


def _recorder():
    seen: list[tuple] = []

    async def joined(data):
        seen.append((data.value, data.trigger_event, data.trigger_type))
        return data.value

    return seen, joined


class TestWhen:
    async def test_when_an_event_name_runs_on_each_emit(self, runtime) -> None:
        flow = TriggerFlow(name="when_event")
        seen, on_ping = _recorder()

        async def emitter(data):
            await data.async_emit("Ping", 1)
            await data.async_emit("Ping", 2)

        flow.to(emitter)
        flow.when("Ping").to(on_ping)
        await run(flow)
        assert seen == [(1, "Ping", "event"), (2, "Ping", "event")]

    async def test_when_a_chunk_object_listens_to_its_completion(self, runtime) -> None:
        flow = TriggerFlow(name="when_chunk")
        seen, by_obj = _recorder()

        @flow.chunk("first")
        async def first(data):
            return f"first({data.value})"

        flow.to(first)
        flow.when(first).to(by_obj)
        await run(flow, "v")
        assert seen == [("first(v)", "Chunk[first]-chunk-e91e0c446d4f6258", "event")]

    async def test_when_a_chunk_name_listens_to_its_completion(self, runtime) -> None:
        flow = TriggerFlow(name="when_chunk_name")
        seen, by_name = _recorder()

        @flow.chunk("first")
        async def first(data):
            return f"first({data.value})"

        flow.to(first)
        flow.when("first").to(by_name)
        await run(flow, "v")
        assert seen == [("first(v)", "Chunk[first]-chunk-e91e0c446d4f6258", "event")]

    async def test_a_name_in_a_list_is_an_event_even_where_a_chunk_has_it(self, runtime) -> None:
        """As Agently: only a bare name is looked up among the chunks; inside a list or a dict
        it names an event, so the chunk's completion does not fire it, its emit does."""
        flow = TriggerFlow(name="when_listed_name")
        seen, on_listed = _recorder()
        seen_typed, on_typed = _recorder()

        @flow.chunk("notify")
        async def notify(data):
            await data.async_emit("notify", "event")
            return "chunk"

        flow.to(notify)
        flow.when(["notify"], mode="simple_or").to(("on_listed", on_listed))
        flow.when({"event": ["notify"]}, mode="simple_or").to(("on_typed", on_typed))
        await run(flow)
        assert [value for value, _, _ in seen] == ["event"]
        assert [value for value, _, _ in seen_typed] == ["event"]

    async def test_when_runtime_data_key_fires_on_every_set(self, runtime) -> None:
        flow = TriggerFlow(name="when_state")
        seen, on_k = _recorder()

        async def writer(data):
            await data.async_set_state("k", 1)
            await data.async_set_state("k", 1)

        flow.to(writer)
        flow.when({"runtime_data": "k"}).to(on_k)
        await run(flow)
        assert seen == [(1, "k", "runtime_data"), (1, "k", "runtime_data")]

    async def test_and_mode_is_the_default_and_joins_into_a_dict(self, runtime) -> None:
        flow = TriggerFlow(name="when_and")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("A", 1)
            await data.async_emit("B", 2)

        flow.to(emitter)
        flow.when(["A", "B"]).to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [{"event": {"A": 1, "B": 2}}]
        assert seen[0][1].startswith("When-") and len(seen[0][1]) == len("When-") + 16
        assert seen[0][2] == "event"

    async def test_and_mode_keeps_the_last_value_of_a_repeated_event(self, runtime) -> None:
        flow = TriggerFlow(name="when_and_last")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("A", 1)
            await data.async_emit("A", 11)
            await data.async_emit("B", 2)

        flow.to(emitter)
        flow.when(["A", "B"], mode="and").to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [{"event": {"A": 11, "B": 2}}]

    async def test_and_mode_resets_after_firing(self, runtime) -> None:
        flow = TriggerFlow(name="when_and_reset")
        seen, joined = _recorder()

        async def emitter(data):
            for event, value in (("A", 1), ("B", 2), ("A", 3), ("B", 4)):
                await data.async_emit(event, value)

        flow.to(emitter)
        flow.when(["A", "B"]).to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [
            {"event": {"A": 1, "B": 2}},
            {"event": {"A": 3, "B": 4}},
        ]

    async def test_and_mode_orders_keys_by_declaration_and_counts_none(self, runtime) -> None:
        flow = TriggerFlow(name="when_and_none")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("B", None)
            await data.async_emit("A", None)

        flow.to(emitter)
        flow.when(["A", "B"]).to(joined)
        await run(flow)
        assert [list(value["event"].items()) for value, _, _ in seen] == [
            [("A", None), ("B", None)]
        ]

    async def test_or_mode_delivers_each_arrival_as_type_name_value(self, runtime) -> None:
        """Agently delivers the tuple ('event', 'A', 1); values cross JSON in triggerbus, so
        the chunk gets the list ['event', 'A', 1] (difference)."""
        flow = TriggerFlow(name="when_or")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("A", 1)
            await data.async_emit("B", 2)

        flow.to(emitter)
        flow.when(["A", "B"], mode="or").to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [["event", "A", 1], ["event", "B", 2]]

    async def test_or_mode_mixes_events_and_runtime_data(self, runtime) -> None:
        flow = TriggerFlow(name="when_or_mixed")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("A", 1)
            await data.async_set_state("k", "kv")

        flow.to(emitter)
        flow.when({"event": "A", "runtime_data": "k"}, mode="or").to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [
            ["event", "A", 1],
            ["runtime_data", "k", "kv"],
        ]

    async def test_simple_or_mode_delivers_the_bare_value(self, runtime) -> None:
        flow = TriggerFlow(name="when_simple_or")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("A", 1)
            await data.async_emit("B", 2)

        flow.to(emitter)
        flow.when(["A", "B"], mode="simple_or").to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [1, 2]

    async def test_simple_or_over_several_state_keys(self, runtime) -> None:
        flow = TriggerFlow(name="when_simple_or_state")
        seen, joined = _recorder()

        async def writer(data):
            await data.async_set_state("k", "kv")

        flow.to(writer)
        flow.when({"runtime_data": ["k", "j"]}, mode="simple_or").to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == ["kv"]

    async def test_and_mode_joins_events_from_two_chunks_of_one_start(self, runtime) -> None:
        flow = TriggerFlow(name="when_and_two_chunks")
        seen, joined = _recorder()

        async def emit_a(data):
            await data.async_emit("A", "a1")

        async def emit_b(data):
            await asyncio.sleep(0.05)
            await data.async_emit("B", "b1")

        flow.to(emit_a)
        flow.to(emit_b)
        flow.when(["A", "B"]).to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [{"event": {"A": "a1", "B": "b1"}}]

    async def test_and_mode_joins_an_event_and_a_state_key_set_from_outside(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="when_and_outside")
        seen, joined = _recorder()
        flow.to(lambda d: None)
        flow.when({"event": "A", "runtime_data": "k"}).to(joined)
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start()
            await execution.async_emit("A", "a4")
            await execution.async_set_state("k", "k4")
            await execution.async_close()
        assert [value for value, _, _ in seen] == [
            {"event": {"A": "a4"}, "runtime_data": {"k": "k4"}}
        ]

    async def test_and_mode_joins_a_chunk_event_with_a_state_change_of_the_same_chunk(
        self, runtime
    ) -> None:
        """Agently scopes and-joins by the root signal and gives state changes no scope, so
        this join never fires there (a bug); triggerbus joins them (difference)."""
        flow = TriggerFlow(name="when_and_event_state")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("A", "a1")
            await data.async_set_state("k", "k1")

        flow.to(emitter)
        flow.when({"event": "A", "runtime_data": "k"}).to(joined)
        await run(flow)
        assert [value for value, _, _ in seen] == [
            {"event": {"A": "a1"}, "runtime_data": {"k": "k1"}}
        ]

    async def test_and_mode_joins_a_chunk_event_with_an_outside_event(self, runtime) -> None:
        """Agently never fires this join (chunk events carry the START scope, outside events
        none); triggerbus joins them (difference)."""
        flow = TriggerFlow(name="when_and_chunk_outside")
        seen, joined = _recorder()

        async def emitter(data):
            await data.async_emit("A", "a1")

        flow.to(emitter)
        flow.when(["A", "B"]).to(joined)
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start()
            await execution.async_emit("B", "b1")
            await execution.async_close()
        assert [value for value, _, _ in seen] == [{"event": {"A": "a1", "B": "b1"}}]

    def test_an_unknown_mode_is_refused(self) -> None:
        flow = TriggerFlow(name="when_bad")
        with pytest.raises(FlowDefinitionError, match="mode"):
            flow.when(["A", "B"], mode="xor")  # type: ignore[arg-type]


# --- batch ---------------------------------------------------------------------------------------


class TestBatch:
    async def test_batch_result_is_keyed_by_chunk_name_in_declaration_order(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="t05")
        seen: list[tuple] = []

        async def pre(data):
            return "P"

        async def slow(data):
            await asyncio.sleep(0.2)
            return f"slow({data.value})"

        async def fast(data):
            await asyncio.sleep(0.05)
            return f"fast({data.value})"

        async def mid(data):
            await asyncio.sleep(0.1)
            return f"mid({data.value})"

        async def post(data):
            seen.append((data.trigger_event, list(data.value)))
            return data.value

        flow.to(pre).batch(slow, fast, mid).to(post).end()
        expected = {"slow": "slow(P)", "fast": "fast(P)", "mid": "mid(P)"}
        snapshot = await run(flow)
        assert snapshot == {"$final_result": expected}
        assert list(snapshot["$final_result"]) == ["slow", "fast", "mid"]
        assert seen[0][0].startswith("Batch-") and len(seen[0][0]) == len("Batch-") + 16
        assert seen[0][1] == ["slow", "fast", "mid"]

    async def test_batch_concurrency_limits_running_branches(self, runtime) -> None:
        flow = TriggerFlow(name="batch_cap")
        running = 0
        peak = 0
        order: list[str] = []

        def branch(name: str, delay: float):
            async def handler(data):
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                order.append(f"start:{name}")
                await asyncio.sleep(delay)
                running -= 1
                order.append(f"end:{name}")
                return f"{name}({data.value})"

            return (name, handler)

        flow.to(lambda d: "P").batch(
            branch("slow", 0.3), branch("fast", 0.05), branch("mid", 0.1), concurrency=2
        ).end()
        snapshot = await run(flow)
        assert snapshot == {
            "$final_result": {"slow": "slow(P)", "fast": "fast(P)", "mid": "mid(P)"}
        }
        assert peak == 2
        assert order.index("start:mid") > order.index("end:fast")

    async def test_batch_at_the_flow_start_accepts_tuples_and_functions(self, runtime) -> None:
        flow = TriggerFlow(name="batch_start")

        def plain(data):
            return f"plain({data.value})"

        flow.batch(
            ("t1", lambda d: f"t1({d.value})"), ("t2", lambda d: f"t2({d.value})"), plain
        ).end()
        assert await run(flow, "x") == {
            "$final_result": {"t1": "t1(x)", "t2": "t2(x)", "plain": "plain(x)"}
        }

    async def test_a_batch_of_one_branch_returning_none(self, runtime) -> None:
        flow = TriggerFlow(name="batch_none")
        flow.batch(("n", lambda d: None)).end()
        assert await run(flow) == {"$final_result": {"n": None}}

    async def test_a_batch_triggered_twice_gives_two_independent_results(self, runtime) -> None:
        flow = TriggerFlow(name="batch_twice")
        results: list = []

        async def emitter(data):
            await data.async_emit("Go", "1")
            await data.async_emit("Go", "2")

        async def collect(data):
            results.append(data.value)

        flow.to(emitter)
        flow.when("Go").batch(("x", lambda d: f"x{d.value}"), ("y", lambda d: f"y{d.value}")).to(
            collect
        )
        await run(flow)
        assert results == [{"x": "x1", "y": "y1"}, {"x": "x2", "y": "y2"}]

    async def test_emitting_into_a_batch_returns_a_list_with_one_none(self, runtime) -> None:
        flow = TriggerFlow(name="batch_emit")

        async def emitter(data):
            return await data.async_emit("Go", 1)

        flow.to(emitter).end()
        flow.when("Go").batch(("x", lambda d: d.value))
        assert await run(flow) == {"$final_result": [None]}


# --- flow names ----------------------------------------------------------------------------------


def _unnamed_flow(factor: int) -> TriggerFlow:
    flow = TriggerFlow()

    @flow.chunk
    async def scale(data):
        return data.value * factor

    flow.to(scale).end()
    return flow


class TestFlowNames:
    def test_a_flow_without_a_name_gets_a_stable_derived_name(self) -> None:
        flow = TriggerFlow()
        flow.to(lambda d: d.value)
        assert flow.name == flow.name
        assert flow.name.startswith("test_conformance_builder-")

    def test_two_flows_built_by_one_factory_get_different_names(self) -> None:
        """A factory called twice creates two flows at one line; their names still differ,
        so they never share subjects."""
        flow_a = _unnamed_flow(2)
        flow_b = _unnamed_flow(3)
        assert flow_a.name != flow_b.name

    async def test_two_flows_run_concurrently_on_one_server_and_prefix(self, runtime) -> None:
        flow_a = _unnamed_flow(2)
        flow_b = _unnamed_flow(3)
        assert flow_a.name != flow_b.name
        async with asyncio.timeout(BOUND):
            a, b = await asyncio.gather(flow_a.async_start(5), flow_b.async_start(5))
        assert (a, b) == ({"$final_result": 10}, {"$final_result": 15})

    async def test_closures_defined_inside_a_function_run_in_process(self, runtime) -> None:
        started = time.monotonic()

        def build(label: str) -> TriggerFlow:
            flow = TriggerFlow(name=f"closure_{label}")

            async def tag(data):
                return f"{label}:{data.value}:{started > 0}"

            flow.to(tag).end()
            return flow

        assert await run(build("x"), 1) == {"$final_result": "x:1:True"}
