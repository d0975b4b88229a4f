"""Inside a chunk, ``data.state`` and ``data.flow_state`` read as mappings, as Agently's data
namespaces do: flows written for Agently iterate the state and index the flow data. Before,
``items()``/``len()`` were missing and iteration failed with ``'int' object has no attribute
'split'`` (Python fell back to ``view[0]``)."""

from __future__ import annotations

import asyncio
from typing import Any

from triggerbus import TriggerFlow

BOUND = 20.0


def _reads(view: Any) -> dict[str, Any]:
    return {
        "keys": sorted(view.keys()),
        "values": sorted(map(repr, view.values())),
        "items": sorted(view.items()),
        "iter": sorted(view),
        "len": len(view),
        "dict": dict(view),
        "item": view["a"],
        "in": ("a" in view, "missing" in view, 1 in view),
    }


async def test_state_and_flow_state_read_as_mappings_inside_a_chunk(runtime) -> None:
    flow = TriggerFlow(name="views_as_mappings")
    seen: dict[str, Any] = {}

    async def reader(data):
        await data.async_set_state("a", 1)
        data.state.set("b", "two")
        seen["state"] = _reads(data.state)
        seen["flow_state"] = _reads(data.flow_state)
        try:
            data.flow_state["missing"]
        except KeyError as exc:
            seen["missing"] = exc.args
        return "done"

    flow.to(reader).end()
    async with asyncio.timeout(BOUND):
        await flow.async_set_flow_data("a", [1, 2])
        await flow.async_set_flow_data("b", {"c": 3})
        await flow.async_start()
    expected_items = {
        "state": [("a", 1), ("b", "two")],
        "flow_state": [("a", [1, 2]), ("b", {"c": 3})],
    }
    for name, items in expected_items.items():
        reads = seen[name]
        assert reads["keys"] == reads["iter"] == ["a", "b"]
        assert reads["items"] == items
        assert reads["values"] == sorted(repr(value) for _, value in items)
        assert reads["len"] == 2
        assert reads["dict"] == dict(items)
        assert reads["item"] == dict(items)["a"]
        assert reads["in"] == (True, False, False)
    assert seen["missing"] == ("missing",)
