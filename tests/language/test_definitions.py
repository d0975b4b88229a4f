"""Conformance of flow definitions as data (config, JSON, YAML, Mermaid) and of sub-flows, each
run with chunks in this process and in a worker process. In the worker the flow is the one
loaded from JSON; here it is built in code."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.flows import lang_defs as flows
from tests.language.conftest import Hosting, succeeded_in_worker
from triggerbus import FlowDefinitionError, TriggerFlow

pytestmark = pytest.mark.asyncio(loop_scope="module")
FLOWS_MODULE = "tests.flows.lang_defs"


async def collect_stream(execution: Any, value: Any = None, *, idle: float = 5.0) -> list[Any]:
    """Every stream item; ``idle`` is the stream's own bound on the wait for each next item."""
    return [item async for item in execution.get_async_runtime_stream(value, timeout=idle)]


class TestDefinitions:
    async def test_exports_load_back_to_the_same_graph(self, hosting: Hosting) -> None:
        """The config, its JSON and its YAML all load back to the same fingerprint, and the
        JSON the worker loads is the current export of the flow built in code."""
        source = flows.source
        config = source.get_flow_config()
        assert config["name"] == "lang_defs"
        assert json.loads(flows.JSON_PATH.read_text()) == json.loads(source.get_json_flow())
        handlers = {"double": flows.double, "big": flows.big, "small": flows.small}
        conditions = {"is_big": flows.is_big}
        for load in (
            lambda f: f.load_flow_config(config, handlers=handlers, conditions=conditions),
            lambda f: f.load_json_flow(source.get_json_flow(), handlers=handlers,
                                       conditions=conditions),
            lambda f: f.load_yaml_flow(source.get_yaml_flow(), handlers=handlers,
                                       conditions=conditions),
        ):
            copy = load(TriggerFlow(name="other"))
            assert copy.name == "lang_defs"
            assert copy.graph().fingerprint == source.graph().fingerprint

    async def test_loading_names_the_missing_handlers(self, hosting: Hosting) -> None:
        with pytest.raises(FlowDefinitionError, match=r"\['big', 'double', 'is_big', 'small'\]"):
            TriggerFlow(name="other").load_json_flow(flows.source.get_json_flow())

    async def test_to_mermaid_draws_every_chunk(self, hosting: Hosting) -> None:
        chart = flows.source.to_mermaid()
        assert chart.startswith("flowchart TD\n")
        for name in ("double", "big", "small", "for_each_split", "match_route"):
            assert name in chart
        assert "-->|" in flows.source.to_mermaid(mode="detailed")

    async def test_a_flow_loaded_from_json_runs_like_the_one_built_in_code(
        self, hosting: Hosting
    ) -> None:
        execution = flows.source.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start([3, 8])
            items = await stream
        assert result == {"$final_result": ["small(6)", "big(16)"]}
        assert items == [{"big": 16}]
        await succeeded_in_worker(hosting, "big")


class TestSubFlows:
    async def test_the_child_runs_as_its_own_execution_and_the_parent_continues_with_its_result(
        self, hosting: Hosting
    ) -> None:
        """The child's stream items reach the parent's stream; the parent's stream ends when
        the parent closes, not when the child does."""
        execution = flows.parent.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start("x")
            items = await stream
        assert result == {"$final_result": "post(child(pre(x)))"}
        assert items == [{"child": "pre(x)", "seen": None}]
        snapshot = await execution.async_get_snapshot()
        assert snapshot["status"] == "completed"
        await succeeded_in_worker(hosting, "child_step")

    async def test_capture_and_write_back(self, hosting: Hosting) -> None:
        execution = flows.bound.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(20):
            stream = asyncio.create_task(collect_stream(execution))
            result = await execution.async_start({"topic": "t", "extra": "e"})
            items = await stream
        assert items == [{"child": "t", "seen": "e"}]
        assert result == {
            "child_result": "child(t)",
            "$final_result": {"topic": "t", "extra": "e", "answer": "child(t)"},
        }
