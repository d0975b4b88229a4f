"""Flow definitions as data: export a flow to a config (dict, JSON, YAML), load it back with
handlers registered by name, and draw it as a Mermaid chart.

The config is triggerbus's own format: the compiled graph (operators and edges, which is the
wire protocol) plus, for each chunk, the name of the handler that runs it, and for each match
whose cases are callables, the names of its condition handlers. Loading rebuilds exactly the
same graph, so a flow loaded from JSON in one process and the same flow built in code in
another agree on every subject and on the fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from triggerbus.contracts.graph import START_EVENT, Edge, Operator, Signal
from triggerbus.errors import FlowDefinitionError

if TYPE_CHECKING:
    from triggerbus.flow import TriggerFlow

CONFIG_FORMAT = "triggerbus.flow"
CONFIG_VERSION = 1


def flow_config(flow: TriggerFlow) -> dict[str, Any]:
    """The flow as JSON-able data (see the module docstring)."""
    graph = flow.graph()
    chunks = []
    for chunk in flow._chunks.values():
        chunks.append({"name": chunk.name, "handler": _handler_name(flow, chunk.name)})
    judges = []
    for name, judge in flow._judges.items():
        cases: list[dict[str, Any]] = []
        for index, condition in enumerate(judge.cases):
            if callable(condition):
                cases.append({"condition": _condition_name(flow, condition, name, index)})
            else:
                cases.append({"value": condition})
        judges.append({"chunk": name, "mode": judge.mode, "cases": cases})
    return {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "name": graph.flow,
        "skip_exceptions": flow._skip_exceptions,
        "chunks": chunks,
        "judges": judges,
        "operators": [msgspec.to_builtins(op) for op in graph.operators],
        "edges": [[e.signal.type, e.signal.name, e.operator] for e in graph.edges],
        "sub_flows": [flow_config(sub) for sub in flow._sub_flows.values()],
    }


def load_config(
    flow: TriggerFlow,
    config: Mapping[str, Any],
    handlers: Mapping[str, Callable[..., Any]],
    conditions: Mapping[str, Callable[..., Any]],
) -> None:
    """Replace ``flow``'s definition with ``config``, resolving handlers by name."""
    from triggerbus.flow import TriggerFlow, TriggerFlowChunk, _judge, chunk_id

    if config.get("format") != CONFIG_FORMAT:
        raise FlowDefinitionError(
            f"not a triggerbus flow config (format {config.get('format')!r}); export one with "
            "flow.get_flow_config() / get_json_flow() / get_yaml_flow()"
        )
    if int(config.get("version", 0)) > CONFIG_VERSION:
        raise FlowDefinitionError(
            f"flow config version {config.get('version')} is newer than this triggerbus "
            f"understands ({CONFIG_VERSION}); upgrade triggerbus"
        )
    missing = sorted(
        {c["handler"] for c in config["chunks"] if c["handler"] not in handlers}
        | {
            case["condition"]
            for judge in config.get("judges", [])
            for case in judge["cases"]
            if "condition" in case and case["condition"] not in conditions
        }
    )
    if missing:
        raise FlowDefinitionError(
            f"flow config {config.get('name')!r} needs handlers {missing}; register them with "
            "flow.register_chunk_handler(func, name=...) / register_condition_handler(...) "
            "before loading"
        )
    sub_flows: dict[str, TriggerFlow] = {}
    for sub_config in config.get("sub_flows", []):
        sub = TriggerFlow(name=sub_config["name"])
        load_config(sub, sub_config, handlers, conditions)
        sub_flows[sub.name] = sub

    flow._explicit_name = str(config["name"])
    flow._skip_exceptions = bool(config.get("skip_exceptions", False))
    flow._chunks = {}
    flow._internal = {}
    flow._judges = {}
    flow._sub_flows = sub_flows
    for chunk in config["chunks"]:
        name = str(chunk["name"])
        ident = chunk_id(name)
        flow._chunks[name] = TriggerFlowChunk(
            name=name,
            handler=handlers[chunk["handler"]],
            trigger=f"Chunk[{name}]-{ident}",
            operator_id=ident,
        )
    for judge in config.get("judges", []):
        name = str(judge["chunk"])
        cases = [
            conditions[case["condition"]] if "condition" in case else case["value"]
            for case in judge["cases"]
        ]
        ident = chunk_id(name)
        flow._internal[name] = TriggerFlowChunk(
            name=name, handler=_judge(cases, judge["mode"]), trigger=f"Chunk[{name}]-{ident}",
            operator_id=ident,
        )
        flow._judges[name] = _JudgeSpec(mode=str(judge["mode"]), cases=cases)
    flow._operators = {}
    for raw in config["operators"]:
        operator = msgspec.convert(raw, Operator)
        flow._operators[operator.id] = operator
    for name, chunk in flow._chunks.items():  # the retry policy rides in the operator
        operator = flow._operators.get(chunk.operator_id)
        policy = operator.options.get("policy") if operator is not None else None
        if policy:
            flow._chunks[name] = dataclasses.replace(chunk, policy=dict(policy))
    flow._edges = [
        Edge(signal=Signal(type=kind, name=name), operator=op) for kind, name, op in config["edges"]
    ]
    flow._collections = {}
    flow._collect_ops = {}
    for operator in flow._operators.values():
        if operator.kind == "collect_branch":
            collection = str(operator.options["collection"])
            flow._collections[collection] = list(operator.options["branches"])
            flow._collect_ops.setdefault(collection, {})[operator.id] = (
                str(operator.options["branch"]),
                str(operator.options["mode"]),
            )
    flow._graph = None


class _JudgeSpec:
    """What a match's judge chunk evaluates: its mode and its cases in declaration order."""

    def __init__(self, *, mode: str, cases: list[Any]) -> None:
        self.mode = mode
        self.cases = cases


def to_json(config: dict[str, Any], save_to: str | Path | None, encoding: str | None) -> str:
    text = json.dumps(config, indent=2, ensure_ascii=False)
    if save_to is not None:
        Path(save_to).write_text(text, encoding=encoding or "utf-8")
    return text


def to_yaml(config: dict[str, Any], save_to: str | Path | None, encoding: str | None) -> str:
    yaml = _yaml()
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    if save_to is not None:
        Path(save_to).write_text(text, encoding=encoding or "utf-8")
    return str(text)


def read_json(path_or_content: str | Path, encoding: str | None) -> dict[str, Any]:
    return dict(json.loads(_text(path_or_content, encoding)))


def read_yaml(path_or_content: str | Path, encoding: str | None) -> dict[str, Any]:
    return dict(_yaml().safe_load(_text(path_or_content, encoding)))


def _text(path_or_content: str | Path, encoding: str | None) -> str:
    if isinstance(path_or_content, Path):
        return path_or_content.read_text(encoding=encoding or "utf-8")
    stripped = path_or_content.lstrip()
    if "\n" not in stripped and not stripped.startswith(("{", "[")):
        candidate = Path(path_or_content)
        if candidate.exists():
            return candidate.read_text(encoding=encoding or "utf-8")
    return path_or_content


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:
        raise FlowDefinitionError(
            "YAML flow definitions need PyYAML: `pip install pyyaml` (JSON works without it)"
        ) from exc
    return yaml


def _handler_name(flow: TriggerFlow, chunk: str) -> str:
    handler = flow._chunks[chunk].handler
    for name, registered in flow._registered_handlers.items():
        if registered is handler:
            return name
    return chunk


def _condition_name(flow: TriggerFlow, condition: Any, judge: str, index: int) -> str:
    for name, registered in flow._registered_conditions.items():
        if registered is condition:
            return name
    name = getattr(condition, "__name__", "")
    if not name or name == "<lambda>":
        return f"{judge}.case{index}"
    return str(name)


# --- Mermaid ---------------------------------------------------------------------------------


def to_mermaid(flow: TriggerFlow, mode: str = "simplified") -> str:
    """A ``flowchart TD`` of the flow: chunks as boxes, internal operators as rounded nodes,
    an arrow wherever an operator listens to what another emits (``detailed`` labels the
    arrows with the signal)."""
    graph = flow.graph()
    internal = set(flow._internal)
    emitters: dict[str, list[str]] = {}
    lines = ["flowchart TD", f'    n_start(["{START_EVENT}"])']
    ids: dict[str, str] = {}
    for index, operator in enumerate(graph.operators):
        node = f"n{index}"
        ids[operator.id] = node
        if operator.kind == "chunk":
            label = str(operator.options["chunk"])
            shape = f'{node}{{{{"{label} ?"}}}}' if label in internal else f'{node}["{label}"]'
        else:
            shape = f'{node}("{operator.kind}")'
        lines.append(f"    {shape}")
        for signal in operator.emits:
            emitters.setdefault(signal, []).append(node)
    outside: dict[tuple[str, str], str] = {}
    for edge in graph.edges:
        target = ids[edge.operator]
        signal = edge.signal
        if signal.type == "event" and signal.name == START_EVENT:
            sources = ["n_start"]
        elif signal.type == "event" and signal.name in emitters:
            sources = emitters[signal.name]
        else:
            key = (signal.type, signal.name)
            if key not in outside:
                outside[key] = f"s{len(outside)}"
                label = signal.name if signal.type == "event" else f"{signal.type}: {signal.name}"
                lines.append(f'    {outside[key]}[/"{_quote(label)}"/]')
            sources = [outside[key]]
        for source in sources:
            if mode == "detailed":
                lines.append(f'    {source} -->|"{_quote(signal.name)}"| {target}')
            else:
                lines.append(f"    {source} --> {target}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return text.replace('"', "#quot;")
