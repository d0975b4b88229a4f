"""A value that cannot cross the bus is refused where it is handed over, the same way
everywhere, and refusing it breaks nothing else.

Every call that sends a user's value (a start, ``set_state``, ``emit``, a stream item, flow
data; from a handle or inside a chunk) raises ``ValueNotSerializableError`` (also a
``TypeError``) before anything is sent or changed, for a type JSON does not know, for a value
that refers to itself, and for a value JSON would change on the way (integer dict keys, bytes,
NaN, datetimes, sets: msgspec encodes them, and the receiver would get strings, lists or null
without an error). Inside a chunk, a handler that catches the error goes on and its
execution finishes: the refused write is neither in its own view, nor named as an effect its
outcome waits for, nor a failed link that fails the attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import inspect
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from triggerbus import ChunkFailedError, TriggerFlow, ValueNotSerializableError
from triggerbus.contracts.codec import NotSerializable, encode, encode_value

BOUND = 20.0
"""Upper bound for every await here; a healthy run takes a fraction of a second."""


def cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


BAD_VALUES = [
    pytest.param(object(), "object", id="unknown-type"),
    pytest.param(cyclic(), "", id="reference-cycle"),
    pytest.param({1: "a"}, "int", id="int-dict-key"),
    pytest.param({"blob": [b"ab"]}, "bytes", id="nested-bytes"),
    pytest.param(float("nan"), "float", id="nan"),
]


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: Any


CHANGED_IN_TRANSIT = [
    ({1: "a"}, "int", "`$`"),
    ({"a": {2.5: 1}}, "float", "`$['a']`"),
    (b"ab", "bytes", "`$`"),
    (float("inf"), "float", "`$`"),
    ([1, float("nan")], "float", "`$[1]`"),
    (datetime.datetime(2024, 1, 2), "datetime", "`$`"),
    (datetime.date(2024, 1, 2), "date", "`$`"),
    (decimal.Decimal("1.5"), "Decimal", "`$`"),
    (uuid.UUID(int=1), "UUID", "`$`"),
    (Colour.RED, "Colour", "`$`"),
    ({1, 2}, "set", "`$`"),
    (frozenset({1}), "frozenset", "`$`"),
    (Point(x={"when": datetime.time(1, 2)}), "time", "`$.x['when']`"),
]


@pytest.mark.parametrize(("value", "type_name", "path"), CHANGED_IN_TRANSIT)
def test_the_codec_refuses_what_json_would_change_naming_where(
    value: Any, type_name: str, path: str
) -> None:
    """msgspec encodes these without a word, and they would arrive as something else."""
    encode(value)  # the plain codec takes it: the check is what refuses it
    with pytest.raises(NotSerializable) as raised:
        encode_value(value)
    assert raised.value.type_name == type_name
    assert str(raised.value).endswith(f"at {path}")


@pytest.mark.parametrize(
    "value",
    [(1, "a"), Point(x=[1, 2.5]), Level.HIGH, {"nested": [{"a": None, "b": True}]}, "", 0.1],
)
def test_the_codec_takes_what_arrives_as_documented(value: Any) -> None:
    """Tuples arrive as lists, dataclasses as dicts, int and str enums as the value they
    equal: documented, and equal where it matters."""
    assert encode_value(value) == encode(value)


def test_the_codec_refuses_a_reference_cycle_as_not_serializable() -> None:
    """Not a RecursionError: msgspec's depth guard is reported as what it means."""
    with pytest.raises(NotSerializable, match="refers to itself"):
        encode({"items": [cyclic()]})


def listening_flow(name: str) -> TriggerFlow:
    flow = TriggerFlow(name=name)

    @flow.chunk("listener")
    async def listener(data):
        return data.value

    flow.when("go").to(listener)
    return flow


HANDLE_CALLS: dict[str, Callable[[TriggerFlow, Any, Any], Awaitable[Any]]] = {
    "start": lambda flow, execution, bad: execution.async_start(bad),
    "set_state": lambda flow, execution, bad: execution.async_set_state("k", bad),
    "emit": lambda flow, execution, bad: execution.async_emit("go", bad),
    "put_into_stream": lambda flow, execution, bad: execution.async_put_into_stream(bad),
    "set_flow_data": lambda flow, execution, bad: flow.async_set_flow_data("k", bad),
}
HANDLE_WORDS = {
    "start": "the start value",
    "set_state": "the state value for 'k'",
    "emit": "the value of event 'go'",
    "put_into_stream": "a stream item",
    "set_flow_data": "the flow data value for 'k'",
}


def read_state(data: Any) -> Any:
    return data.get_state("k", "unset")


def read_flow_data(data: Any) -> Any:
    return data.get_flow_data("k", "unset")


async def caught_then_finished(
    name: str, write: Callable[[Any], Any], read: Callable[[Any], Any]
) -> list[Any]:
    """Run a chunk that makes a write it expects refused, catches the error, reads the key
    back, then sends a good emit and a good state write; the execution must finish. Returns
    what the chunk and the emit's listener saw, in order."""
    flow = TriggerFlow(name=name)
    seen: list[Any] = []

    @flow.chunk("writer")
    async def writer(data):
        try:
            written = write(data)
            if inspect.isawaitable(written):
                await written
        except ValueNotSerializableError as exc:
            seen.append(exc.type_name)
        seen.append(read(data))
        await data.async_emit("side", "after")
        data.set_state("ok", 1)
        return "done"

    @flow.chunk("listener")
    async def listener(data):
        seen.append(f"listener got {data.value}")

    flow.to(writer).end()
    flow.when("side").to(listener)
    async with asyncio.timeout(BOUND):
        assert await flow.async_start() == {"ok": 1, "$final_result": "done"}
    return seen


class TestFromAHandle:
    @pytest.mark.parametrize("call", sorted(HANDLE_CALLS))
    @pytest.mark.parametrize(("bad", "type_name"), BAD_VALUES)
    async def test_every_call_refuses_it_with_the_public_error(
        self, runtime, call: str, bad: Any, type_name: str
    ) -> None:
        flow = listening_flow(f"refused_{call}")
        execution = flow.create_execution(auto_close_timeout=0.0)
        with pytest.raises(ValueNotSerializableError) as raised:
            async with asyncio.timeout(BOUND):
                await HANDLE_CALLS[call](flow, execution, bad)
        error = raised.value
        assert isinstance(error, TypeError)
        assert error.type_name == type_name
        assert HANDLE_WORDS[call] in str(error)
        assert "JSON-able" in str(error)
        # The offending type is named once, by the reason, not pinned on the whole value.
        assert f"(type {type_name})" not in str(error)
        assert type_name in str(error).split("cannot be sent over the bus: ")[1]

    async def test_a_refused_flow_data_value_changes_nothing(self, runtime) -> None:
        flow = listening_flow("refused_flow_data_kept")
        async with asyncio.timeout(BOUND):
            await flow.async_set_flow_data("k", "kept")
            with pytest.raises(ValueNotSerializableError):
                await flow.async_set_flow_data("k", object())
            assert await flow.async_get_flow_data("k") == "kept"


class TestInsideAChunk:
    @pytest.mark.parametrize("call", ["set_state", "emit"])
    @pytest.mark.parametrize(("bad", "type_name"), BAD_VALUES)
    async def test_a_caught_refusal_of_a_sync_call_lets_the_execution_finish(
        self, runtime, call: str, bad: Any, type_name: str
    ) -> None:
        """A sync call from an async handler sends without waiting, and its message is named
        as an effect the outcome waits for. A refused message used to be named first, so the
        outcome waited for it forever."""

        def write(data: Any) -> None:
            if call == "set_state":
                data.set_state("k", bad)
            else:
                data.emit("side", bad)

        seen = await caught_then_finished(f"caught_sync_{call}", write, read_state)
        assert seen == [type_name, "unset", "listener got after"]

    @pytest.mark.parametrize("awaited", [True, False], ids=["async", "sync"])
    async def test_a_caught_refusal_of_flow_data_lets_the_execution_finish(
        self, runtime, awaited: bool
    ) -> None:
        """Flow data used to be encoded inside the send chain: the failed link failed every
        later send and the attempt, and the chunk was redelivered until it gave up."""

        async def write(data: Any) -> None:
            if awaited:
                await data.async_set_flow_data("k", object())
            else:
                data.set_flow_data("k", object())

        seen = await caught_then_finished(f"caught_flow_data_{awaited}", write, read_flow_data)
        assert seen == ["object", "unset", "listener got after"]

    async def test_an_uncaught_refusal_fails_the_execution_naming_it(self, runtime) -> None:
        flow = TriggerFlow(name="uncaught_state_write")

        @flow.chunk("writer")
        async def writer(data):
            data.set_state("k", object())
            return "never"

        flow.to(writer).end()
        execution = flow.create_execution(auto_close_timeout=0.0)
        with pytest.raises(ChunkFailedError) as raised:
            async with asyncio.timeout(BOUND):
                await execution.async_start()
        assert (raised.value.chunk, raised.value.error_type) == (
            "writer",
            "ValueNotSerializableError",
        )
        assert "the state value for 'k'" in raised.value.error_message

    async def test_a_chunk_returning_a_cyclic_value_fails_naming_the_error(self, runtime) -> None:
        flow = TriggerFlow(name="cyclic_result")

        @flow.chunk("maker")
        async def maker(data):
            return cyclic()

        flow.to(maker).end()
        with pytest.raises(ChunkFailedError) as raised:
            async with asyncio.timeout(BOUND):
                await flow.create_execution(auto_close_timeout=0.0).async_start()
        assert raised.value.error_type == "ValueNotSerializableError"
        assert "refers to itself" in raised.value.error_message

    async def test_a_chunk_returning_what_json_would_change_fails_naming_where(
        self, runtime
    ) -> None:
        """Before, the next chunk got ``{"1": ...}`` for ``{1: ...}`` and failed elsewhere,
        or did not fail at all."""
        flow = TriggerFlow(name="changed_result")

        @flow.chunk("maker")
        async def maker(data):
            return {"by_id": {1: "a"}}

        flow.to(maker).end()
        with pytest.raises(ChunkFailedError) as raised:
            async with asyncio.timeout(BOUND):
                await flow.create_execution(auto_close_timeout=0.0).async_start()
        assert raised.value.error_type == "ValueNotSerializableError"
        assert "the dict key 1 is of type int" in raised.value.error_message
        assert "at `$['by_id']`" in raised.value.error_message
