"""Inside a chunk, ``data.state`` and ``data.flow_state`` read as complete read-only mappings,
as Agently's data namespaces do: flows written for Agently iterate the state, index the flow
data, pass either where a ``Mapping`` is expected and call ``get(key, default, inherit=False)``.
Before, ``values()``/``items()``/``len()`` were missing on the state, iterating it failed with
``'int' object has no attribute 'split'`` (Python fell back to ``view[0]``), the flow data
offered none of the reads, and ``inherit=`` was refused on both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from triggerbus import TriggerFlow

BOUND = 20.0


def _read_ops(view: Any) -> dict[str, Callable[[], Any]]:
    """Every read Agently's namespaces offer, plus the ``Mapping`` protocol, on ``view``."""
    return {
        "isinstance Mapping": lambda: isinstance(view, Mapping),
        "keys": lambda: sorted(view.keys()),
        "values": lambda: sorted(map(repr, view.values())),
        "items": lambda: sorted(view.items()),
        "iter": lambda: sorted(iter(view)),
        "len": lambda: len(view),
        "bool": lambda: bool(view),
        "to_dict": view.to_dict,
        "to_dict inherit=False": lambda: view.to_dict(inherit=False),
        "dict()": lambda: dict(view),
        "[a]": lambda: view["a"],
        "[b.c]": lambda: view["b.c"],
        "[missing]": lambda: view["missing"],
        "[0]": lambda: view[0],
        "in": lambda: ("a" in view, "b.c" in view, "missing" in view, 0 in view),
        "get": lambda: view.get("a"),
        "get missing": lambda: view.get("missing", "fallback"),
        "get inherit=False": lambda: view.get("a", None, inherit=False),
        "get inherit=True": lambda: view.get("b.c", None, inherit=True),
        "get missing inherit=False": lambda: view.get("missing", "fallback", inherit=False),
        "get all inherit=False": lambda: view.get(None, {}, inherit=False),
        "== dict": lambda: view == view.to_dict(),
    }


def _reads(view: Any) -> dict[str, Any]:
    """Each read's result, or the exception's type: one missing read must not hide the rest."""
    seen: dict[str, Any] = {}
    for name, read in _read_ops(view).items():
        try:
            seen[name] = read()
        except Exception as exc:
            seen[name] = type(exc).__name__
    return seen


def _expected(data: dict[str, Any]) -> dict[str, Any]:
    """What each read gives on a view holding ``data`` (``a`` and a nested ``b.c``)."""
    return {
        "isinstance Mapping": True,
        "keys": sorted(data),
        "values": sorted(map(repr, data.values())),
        "items": sorted(data.items()),
        "iter": sorted(data),
        "len": len(data),
        "bool": True,
        "to_dict": data,
        "to_dict inherit=False": data,
        "dict()": data,
        "[a]": data["a"],
        "[b.c]": data["b"]["c"],
        "[missing]": "KeyError",
        "[0]": "KeyError",
        "in": (True, True, False, False),
        "get": data["a"],
        "get missing": "fallback",
        "get inherit=False": data["a"],
        "get inherit=True": data["b"]["c"],
        "get missing inherit=False": "fallback",
        "get all inherit=False": data,
        "== dict": True,
    }


STATE = {"a": 1, "b": {"c": "three"}}
FLOW_DATA = {"a": [1, 2], "b": {"c": 3}}


async def _write_state_async(data: Any) -> None:
    await data.async_set_state("a", STATE["a"])
    await data.state.async_set("b", STATE["b"])


def _write_state_sync(data: Any) -> None:
    data.set_state("a", STATE["a"])
    data.state.set("b", STATE["b"])


def _record(data: Any, seen: dict[str, Any]) -> None:
    """Read both views, and the data-level getters that take ``inherit`` as Agently's do."""
    seen["state"] = _reads(data.state)
    seen["flow_state"] = _reads(data.flow_state)
    seen["get_state"] = data.get_state("b.c", None, inherit=False)
    seen["get_flow_data"] = data.get_flow_data("b.c", None, inherit=False)


def _async_reader(seen: dict[str, Any]) -> Callable[[Any], Any]:
    async def reader(data: Any) -> str:
        await _write_state_async(data)
        _record(data, seen)
        return "done"

    return reader


def _sync_reader(seen: dict[str, Any]) -> Callable[[Any], Any]:
    def reader(data: Any) -> str:
        _write_state_sync(data)
        _record(data, seen)
        return "done"

    return reader


@pytest.mark.parametrize("make_reader", [_async_reader, _sync_reader], ids=["async", "sync"])
async def test_state_and_flow_state_read_as_mappings_inside_a_chunk(
    runtime: Any, make_reader: Callable[[dict[str, Any]], Callable[[Any], Any]]
) -> None:
    seen: dict[str, Any] = {}
    flow = TriggerFlow(name=f"views_as_mappings_{make_reader.__name__}")
    flow.to(make_reader(seen)).end()
    async with asyncio.timeout(BOUND):
        for key, value in FLOW_DATA.items():
            await flow.async_set_flow_data(key, value)
    async with asyncio.timeout(BOUND):
        assert (await flow.async_start())["$final_result"] == "done"
    assert seen["state"] == _expected(STATE)
    assert seen["flow_state"] == _expected(FLOW_DATA)
    assert seen["get_state"] == STATE["b"]["c"]
    assert seen["get_flow_data"] == FLOW_DATA["b"]["c"]


async def test_reads_are_copies_not_writes(runtime: Any) -> None:
    """Agently's ``inherit=False`` hands out the stored object; triggerbus's views read the
    chunk's copy, so changing what a read returned must not change what the next read sees."""
    seen: dict[str, Any] = {}

    async def reader(data: Any) -> str:
        await data.async_set_state("b", {"c": 1})
        data.state.get("b", inherit=False)["c"] = 2
        data.state.to_dict(inherit=False)["b"]["c"] = 3
        next(iter(data.flow_state.values())).append(9)
        seen["state"] = data.state["b"]
        seen["flow_state"] = dict(data.flow_state)
        return "done"

    flow = TriggerFlow(name="views_read_copies")
    flow.to(reader).end()
    async with asyncio.timeout(BOUND):
        await flow.async_set_flow_data("a", [1])
    async with asyncio.timeout(BOUND):
        assert (await flow.async_start())["$final_result"] == "done"
    assert seen == {"state": {"c": 1}, "flow_state": {"a": [1]}}
