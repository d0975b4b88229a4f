"""Conformance with Agently TriggerFlow 4.1.x: what a chunk sees and does through ``data``.

Expected values come from the observed reference behaviour of Agently 4.1.3.9. Differences that
distribution forces (values cross JSON; a chunk reads state as of its dispatch; sync calls inside
an async chunk cannot block the loop) are asserted as triggerbus behaves and named in docstrings.
"""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from triggerbus import ChunkFailedError, TriggerFlow

BOUND = 20.0
"""Upper bound for every await in these tests; a healthy run takes a fraction of a second."""


async def run(flow: TriggerFlow, value: object = None, **options) -> dict:
    async with asyncio.timeout(BOUND):
        return await flow.async_start(value, **options)


async def stream_of(flow: TriggerFlow, value: object = None) -> list:
    async with asyncio.timeout(BOUND):
        return [item async for item in flow.get_async_runtime_stream(value, timeout=5)]


# --- what triggered the chunk -------------------------------------------------------------------


class TestTrigger:
    async def test_value_trigger_event_and_type_along_a_chain(self, runtime) -> None:
        flow = TriggerFlow(name="t01")
        log: list[tuple] = []

        def record(tag: str, data) -> None:
            log.append((tag, data.value, data.trigger_event, data.trigger_type))

        @flow.chunk("named_a")
        async def a(data):
            record("a", data)
            return f"A({data.value})"

        @flow.chunk
        def bare_b(data):
            record("b", data)
            return f"B({data.value})"

        async def plain_c(data):
            record("c", data)
            return f"C({data.value})"

        flow.to(a).to(bare_b).to(plain_c).end()
        assert await run(flow, "in") == {"$final_result": "C(B(A(in)))"}
        assert log == [
            ("a", "in", "START", "event"),
            ("b", "A(in)", "Chunk[named_a]-chunk-356a762c6b12130a", "event"),
            # Agently: 'Chunk[bare_b]-chunk-edf8135d845884dd' (a digest of file and line)
            ("c", "B(A(in))", "Chunk[bare_b]-chunk-eaa9d5f0d021c609", "event"),
        ]

    async def test_aliases_event_type_input_inputs(self, runtime) -> None:
        flow = TriggerFlow(name="aliases")
        seen: list[tuple] = []

        async def probe(data):
            seen.append((data.event, data.type, data.input, data.inputs))

        flow.to(probe)
        await run(flow, "v")
        assert seen == [("START", "event", "v", "v")]

    async def test_execution_id_is_32_lowercase_hex_shared_by_every_chunk(self, runtime) -> None:
        flow = TriggerFlow(name="exec_id")
        ids: list[str] = []

        async def first(data):
            ids.append(data.execution_id)

        def second(data):
            ids.append(data.execution_id)

        flow.to(first).to(second)
        execution = flow.create_execution(auto_close_timeout=0)
        async with asyncio.timeout(BOUND):
            await execution.async_start()
        assert len(ids) == 2 and ids[0] == ids[1] == execution.id
        assert re.fullmatch(r"[0-9a-f]{32}", ids[0])

    async def test_a_runtime_data_trigger_names_the_key(self, runtime) -> None:
        flow = TriggerFlow(name="rd_trigger")
        seen: list[tuple] = []

        async def writer(data):
            await data.async_set_state("k", "kv")

        async def on_k(data):
            seen.append((data.value, data.trigger_event, data.trigger_type))

        flow.to(writer)
        flow.when({"runtime_data": "k"}).to(on_k)
        await run(flow)
        assert seen == [("kv", "k", "runtime_data")]

    async def test_sync_handlers_run_off_the_event_loop_thread(self, runtime) -> None:
        flow = TriggerFlow(name="sync_thread")
        threads: list[bool] = []
        main = threading.current_thread()

        def sync_chunk(data):
            threads.append(threading.current_thread() is main)

        flow.to(sync_chunk)
        await run(flow)
        assert threads == [False]


# --- state -------------------------------------------------------------------------------------


class TestState:
    async def test_async_setters_fire_listeners_and_wait_for_them(self, runtime) -> None:
        flow = TriggerFlow(name="t03_async")
        fired: list = []
        returns: list = []

        async def writer(data):
            returns.append(await data.async_set_state("k", 1))
            returns.append(list(fired))
            await data.async_set_state("k", 1)
            await data.state.async_set("k", 2)
            returns.append(list(fired))

        async def on_k(data):
            fired.append(data.value)

        flow.to(writer)
        flow.when({"runtime_data": "k"}).to(on_k)
        assert await run(flow) == {"k": 2}
        assert returns == [None, [1], [1, 1, 2]]

    async def test_sync_setters_in_an_async_chunk_do_not_wait_for_listeners(
        self, runtime
    ) -> None:
        """Agently blocks until the listener's cascade finishes; an async chunk's sync call
        cannot block its event loop, so triggerbus sends in order and returns at once
        (difference). The listeners still run, with every value."""
        flow = TriggerFlow(name="t03_sync_in_async")
        fired: list = []
        seen_at_return: list = []

        async def writer(data):
            assert data.state.set("k", 3) is None
            assert data.set_state("k", 4) is None
            seen_at_return.append(list(fired))

        async def on_k(data):
            fired.append(data.value)

        flow.to(writer)
        flow.when({"runtime_data": "k"}).to(on_k)
        assert await run(flow) == {"k": 4}
        assert seen_at_return == [[]]
        assert fired == [3, 4]

    async def test_sync_setters_in_a_sync_chunk_wait_for_listeners(self, runtime) -> None:
        flow = TriggerFlow(name="t03_sync_in_sync")
        fired: list = []
        seen_after: list = []

        def writer(data):
            data.state.set("k", 3)
            seen_after.append(list(fired))
            data.set_state("k", 4)
            seen_after.append(list(fired))

        async def on_k(data):
            await asyncio.sleep(0.05)
            fired.append(data.value)

        flow.to(writer)
        flow.when({"runtime_data": "k"}).to(on_k)
        assert await run(flow) == {"k": 4}
        assert seen_after == [[3], [3, 4]]

    async def test_setting_with_emit_false_does_not_fire(self, runtime) -> None:
        flow = TriggerFlow(name="t03_quiet")
        fired: list = []
        read: list = []

        async def writer(data):
            await data.async_set_state("k", 5, emit=False)
            data.state.set("k", 6, emit=False)
            read.append((data.state.get("k"), data.get_state("k")))

        async def on_k(data):
            fired.append(data.value)

        flow.to(writer)
        flow.when({"runtime_data": "k"}).to(on_k)
        assert await run(flow) == {"k": 6}
        assert fired == []
        assert read == [(6, 6)]

    async def test_get_with_defaults(self, runtime) -> None:
        flow = TriggerFlow(name="t03_defaults")
        read: list = []

        async def reader(data):
            read.append(
                (data.state.get("nope", "DEF"), data.get_state("nope"), data.get_state("nope", 7))
            )

        flow.to(reader)
        await run(flow)
        assert read == [("DEF", None, 7)]

    async def test_append_delivers_the_whole_list_each_time(self, runtime) -> None:
        flow = TriggerFlow(name="t03_append")
        fired: list = []

        async def writer(data):
            await data.state.async_append("lst", "a")
            await data.async_append_state("lst", "b")
            data.state.append("lst", "c")

        async def on_lst(data):
            fired.append(data.value)

        flow.to(writer)
        flow.when({"runtime_data": "lst"}).to(on_lst)
        assert await run(flow) == {"lst": ["a", "b", "c"]}
        assert fired == [["a"], ["a", "b"], ["a", "b", "c"]]

    async def test_append_to_a_scalar_makes_a_list(self, runtime) -> None:
        flow = TriggerFlow(name="t03_scalar")
        fired: list = []

        async def writer(data):
            await data.async_set_state("scalar", "x")
            await data.state.async_append("scalar", "y")

        async def on_scalar(data):
            fired.append(data.value)

        flow.to(writer)
        flow.when({"runtime_data": "scalar"}).to(on_scalar)
        assert await run(flow) == {"scalar": ["x", "y"]}
        assert fired == ["x", ["x", "y"]]

    async def test_delete_fires_with_none_and_a_missing_key_does_not(self, runtime) -> None:
        flow = TriggerFlow(name="t03_delete")
        fired: list = []
        read: list = []

        async def writer(data):
            await data.async_set_state("k", 1, emit=False)
            await data.state.async_del("k")
            read.append(data.state.get("k", "GONE"))
            await data.async_set_state("j", 1, emit=False)
            await data.async_del_state("j")
            read.append(await data.async_del_state("missing"))

        async def on_key(data):
            fired.append((data.trigger_event, data.value))

        flow.to(writer)
        flow.when({"runtime_data": "k"}).to(on_key)
        flow.when({"runtime_data": "j"}).to(on_key)
        flow.when({"runtime_data": "missing"}).to(on_key)
        assert await run(flow) == {}
        assert read == ["GONE", None]
        assert fired == [("k", None), ("j", None)]

    async def test_whole_state_to_dict_and_keys(self, runtime) -> None:
        flow = TriggerFlow(name="t03_whole")
        read: list = []

        async def writer(data):
            await data.async_set_state("scalar", ["x", "y"])
            await data.async_set_state("a", {"b": 1, "c": 2})
            whole = data.state.get()
            whole["a"]["b"] = "mutated"
            read.append((data.state.get(), data.state.to_dict(), list(data.state.keys())))

        flow.to(writer)
        await run(flow)
        expected = {"scalar": ["x", "y"], "a": {"b": 1, "c": 2}}
        assert read == [(expected, expected, ["scalar", "a"])]

    async def test_a_chunk_reads_state_as_of_its_dispatch(self, runtime) -> None:
        """Distribution: a chunk gets the state as it was when it was dispatched, plus its own
        writes; it does not see later writes by chunks running beside it."""
        flow = TriggerFlow(name="t03_dispatch")
        read: list = []
        written = asyncio.Event()

        async def writer(data):
            await data.async_set_state("w", 1, emit=False)
            written.set()

        async def reader(data):
            await written.wait()
            read.append(data.state.get("w", "unset"))

        flow.to(writer)
        flow.to(reader)
        assert await run(flow) == {"w": 1}
        assert read == ["unset"]


# --- emit ----------------------------------------------------------------------------------------


class TestEmit:
    async def test_async_emit_returns_handler_results_in_registration_order_after_the_cascade(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="t02")
        events: list = []

        async def emitter(data):
            result = await data.async_emit("Ping", data.value)
            events.append(("emitter got", result))
            events.append(("nobody", await data.async_emit("NobodyListens", 1)))

        async def slow_h(data):
            await asyncio.sleep(0.2)
            events.append("slow_h")
            return "slow"

        async def fast_h(data):
            await asyncio.sleep(0.05)
            events.append("fast_h")
            return "fast"

        async def after_fast(data):
            await asyncio.sleep(0.3)
            events.append("after_fast")

        def sync_h(data):
            return "sync"

        flow.to(emitter)
        flow.when("Ping").to(slow_h)
        flow.when("Ping").to(fast_h).to(after_fast)
        flow.when("Ping").to(sync_h)
        await run(flow, "P")
        assert events == [
            "fast_h",
            "slow_h",
            "after_fast",
            ("emitter got", ["slow", "fast", "sync"]),
            ("nobody", None),
        ]

    async def test_sync_emit_in_a_sync_chunk_returns_the_results(self, runtime) -> None:
        flow = TriggerFlow(name="t02_sync")

        def emitter(data):
            return data.emit("E2", "from-sync-chunk")

        flow.to(emitter).end()
        flow.when("E2").to(lambda d: f"e2r:{d.value}")
        assert await run(flow) == {"$final_result": ["e2r:from-sync-chunk"]}

    async def test_sync_emit_in_an_async_chunk_sends_and_returns_none(self, runtime) -> None:
        """Agently returns ['e1r'] after running the cascade on another thread; triggerbus
        cannot block the chunk's loop, so the emit is sent in order and returns None
        (difference). The handler still runs."""
        flow = TriggerFlow(name="t02_sync_in_async")
        handled: list = []

        async def emitter(data):
            return data.emit("E1", "from-async-chunk")

        async def on_e1(data):
            handled.append(data.value)
            return "e1r"

        flow.to(emitter).end()
        flow.when("E1").to(on_e1)
        assert await run(flow) == {"$final_result": None}
        assert handled == ["from-async-chunk"]

    async def test_emit_values_cross_as_json(self, runtime) -> None:
        """Distribution: a tuple emitted arrives as a list (difference)."""
        flow = TriggerFlow(name="t02_json")
        received: list = []

        async def emitter(data):
            await data.async_emit("T", (1, "two", None))

        async def on_t(data):
            received.append(data.value)

        flow.to(emitter)
        flow.when("T").to(on_t)
        await run(flow)
        assert received == [[1, "two", None]]


# --- runtime stream from inside a chunk ----------------------------------------------------------


class TestStreamFromChunks:
    async def test_put_forms_keep_their_order_and_stop_ends_the_stream(self, runtime) -> None:
        flow = TriggerFlow(name="t10_async")

        async def producer(data):
            await data.async_put_into_stream({"n": 1, "v": data.value})
            data.put_into_stream({"n": 2})
            await data.async_put("three")
            data.put("four")
            await data.async_stop_stream()

        flow.to(producer)
        assert await stream_of(flow, "S1") == [{"n": 1, "v": "S1"}, {"n": 2}, "three", "four"]

    async def test_items_put_after_stop_are_not_delivered_from_a_sync_chunk(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="t10a")

        def producer(data):
            data.put_into_stream("a")
            data.put_into_stream("b")
            data.stop_stream()
            data.put_into_stream("c")
            data.stop_stream()

        flow.to(producer)
        assert await stream_of(flow) == ["a", "b"]

    async def test_items_put_after_a_sync_stop_in_an_async_chunk_are_not_delivered(
        self, runtime
    ) -> None:
        flow = TriggerFlow(name="t10b")

        async def producer(data):
            await data.async_put_into_stream("a")
            data.stop_stream()
            await data.async_put_into_stream("c")

        flow.to(producer)
        assert await stream_of(flow) == ["a"]

    async def test_an_item_put_after_a_sync_state_set_comes_before_the_cascade_stops(
        self, runtime
    ) -> None:
        """The seed playbook's "normalized" item. In Agently the sync state.set blocks until
        the listeners' cascade (which stops the stream) has finished, so the item put next is
        lost. In triggerbus the call returns at once, so the item is delivered. The listener
        here waits until the item was put: a state.set that blocked would deadlock."""
        flow = TriggerFlow(name="t11_normalized")
        put_done = asyncio.Event()

        async def normalize(data):
            data.state.set("topic", data.value)
            await data.async_put_into_stream({"stage": "normalized"})
            put_done.set()

        async def fetch(data):
            await put_done.wait()
            await data.async_put_into_stream({"stage": "fetched", "topic": data.value})
            await data.async_stop_stream()

        flow.to(normalize)
        flow.when({"runtime_data": "topic"}).to(fetch)
        assert await stream_of(flow, "T") == [
            {"stage": "normalized"},
            {"stage": "fetched", "topic": "T"},
        ]

    async def test_an_item_put_after_an_awaited_set_whose_cascade_stopped_is_dropped(
        self, runtime
    ) -> None:
        """``await data.async_set_state`` waits for the cascade, as in Agently: an item put
        after the cascade stopped the stream is not delivered."""
        flow = TriggerFlow(name="t11_awaited")

        async def normalize(data):
            await data.async_set_state("topic", data.value)
            await data.async_put_into_stream({"stage": "too late"})

        async def fetch(data):
            await data.async_put_into_stream({"stage": "fetched"})
            await data.async_stop_stream()

        flow.to(normalize)
        flow.when({"runtime_data": "topic"}).to(fetch)
        assert await stream_of(flow, "T") == [{"stage": "fetched"}]

    async def test_stream_items_cross_as_json(self, runtime) -> None:
        """Agently passes any object through by identity; triggerbus items are JSON values,
        so a tuple arrives as a list (difference). None is an item, not the end."""
        flow = TriggerFlow(name="t10d")

        async def producer(data):
            await data.async_put_into_stream(None)
            await data.async_put_into_stream((1, 2))
            await data.async_put_into_stream({"k": [1]})

        flow.to(producer)
        assert await stream_of(flow) == [None, [1, 2], {"k": [1]}]

    async def test_stop_stream_does_not_close_the_execution(self, runtime) -> None:
        flow = TriggerFlow(name="t10_stop_open")

        async def producer(data):
            await data.async_put_into_stream("x")
            await data.async_stop_stream()

        flow.to(producer)
        execution = flow.create_execution(auto_close=False)
        async with asyncio.timeout(BOUND):
            await execution.async_start()
            items = [item async for item in execution.get_async_runtime_stream(timeout=5)]
            assert items == ["x"]
            assert (execution.get_status(), execution.get_lifecycle_state()) == (
                "running",
                "open",
            )
            await execution.async_close()


# --- runtime resources ---------------------------------------------------------------------------


class _Database:
    """A live object: it cannot cross the bus, so only in-process chunks see it."""


class TestResources:
    async def test_require_get_and_mapping_view_return_the_same_object(self, runtime) -> None:
        flow = TriggerFlow(name="t08")
        db = _Database()
        seen: list = []

        async def user(data):
            seen.append(
                (
                    data.require_resource("db") is db,
                    data.get_resource("db") is db,
                    data.get_resource("nope"),
                    data.get_resource("nope", "DEF"),
                    data.resources["db"] is db,
                    data.resources.get("nope"),
                )
            )

        flow.to(user)
        execution = flow.create_execution(runtime_resources={"db": db}, auto_close_timeout=0)
        async with asyncio.timeout(BOUND):
            snapshot = await execution.async_start()
        assert seen == [(True, True, None, "DEF", True, None)]
        assert snapshot == {}, "resources are not part of the close snapshot"

    async def test_a_missing_required_resource_raises_key_error_naming_it(self, runtime) -> None:
        flow = TriggerFlow(name="t08_missing")
        errors: list = []

        async def user(data):
            with pytest.raises(KeyError) as required:
                data.require_resource("nope")
            with pytest.raises(KeyError) as indexed:
                data.resources["nope"]
            errors.append((str(required.value), indexed.value.args))

        flow.to(user)
        await run(flow, runtime_resources={"db": "conn"})
        [(message, args)] = errors
        assert "'nope'" in message and "['db']" in message
        assert args == ("nope",)

    async def test_flow_async_start_takes_runtime_resources(self, runtime) -> None:
        flow = TriggerFlow(name="t08_flow_start")
        flow.to(lambda d: d.require_resource("db")).end()
        assert await run(flow, runtime_resources={"db": "<DB>"}) == {"$final_result": "<DB>"}

    async def test_flow_level_resources_sit_under_the_executions_own(self, runtime) -> None:
        """Agently's flow-level resource methods: they chain, a chunk sees the live object,
        an execution's resource of the same name wins, and clearing empties them."""
        flow = TriggerFlow(name="t08_flow_level")
        db = _Database()
        flow.to(lambda d: [d.require_resource("db") is db, d.get_resource("mode")]).end()
        assert flow.set_runtime_resource("db", db).update_runtime_resources(mode="flow") is flow
        assert flow.get_runtime_resource("db") is db
        assert await run(flow, runtime_resources={"mode": "execution"}) == {
            "$final_result": [True, "execution"]
        }
        assert await run(flow) == {"$final_result": [True, "flow"]}
        assert flow.clear_runtime_resources() is flow
        assert dict(flow.runtime_resources) == {}
        with pytest.raises(ChunkFailedError, match="'db'"):
            await run(flow)

    async def test_execution_level_resource_methods_as_agently_has_them(self, runtime) -> None:
        """``execution.set/get/require/del/update/clear_runtime_resource[s]``: they chain, read
        through to the flow's resources, and a resource set after the start still reaches the
        chunks hosted in this process."""
        flow = TriggerFlow(name="t08_execution_methods")
        flow.set_runtime_resource("mode", "flow")
        seen: list = []
        db = _Database()

        async def first(data):
            seen.append(("first", data.get_resource("db") is db, data.get_resource("mode"),
                         data.get_resource("gone")))  # fmt: skip

        async def later(data):
            seen.append(("later", data.get_resource("late")))

        flow.to(first)
        flow.when("Later").to(later)
        execution = flow.create_execution(auto_close=False)
        assert execution.set_runtime_resource("db", db).update_runtime_resources(
            {"gone": 1}, mode="execution"
        ) is execution
        assert execution.del_runtime_resource("gone") is execution
        assert execution.get_runtime_resource("gone", "DEF") == "DEF"
        assert execution.require_runtime_resource("db") is db
        with pytest.raises(KeyError, match=r"'nope'.*'db', 'mode'"):
            execution.require_runtime_resource("nope")
        bare = flow.create_execution(auto_close=False)  # no resource of its own at the start
        async with asyncio.timeout(BOUND):
            await execution.async_start()
            await execution.async_close()
            await bare.async_start()
            bare.set_runtime_resource("late", "after the start")
            await bare.async_emit("Later")
            await bare.async_close()
        assert seen == [
            ("first", True, "execution", None),
            ("first", False, "flow", None),
            ("later", "after the start"),
        ]
        assert execution.clear_runtime_resources().get_runtime_resources() == {"mode": "flow"}


async def test_agentlys_deprecated_runtime_data_names_still_work_and_say_so(runtime) -> None:
    """``data.set_runtime_data`` and friends are Agently's old names for the state."""
    flow = TriggerFlow(name="t_runtime_data_names")

    async def old_names(data):
        with pytest.warns(DeprecationWarning, match="use data.async_set_state"):
            await data.async_set_runtime_data("k", 1)
        with pytest.warns(DeprecationWarning, match="use data.async_append_state"):
            await data.async_append_runtime_data("xs", 2)
        with pytest.warns(DeprecationWarning, match="use data.get_state"):
            return data.get_runtime_data("k")

    flow.to(old_names).end()
    assert await run(flow) == {"k": 1, "xs": [2], "$final_result": 1}
