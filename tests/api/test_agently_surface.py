"""Every public name of Agently 4.1.3.9's TriggerFlow, execution handle and chunk data is
either here or listed as not planned (docs/compatibility.md says why). Changing the import
must be all a user does: a name that silently goes missing, or one added without updating
the list of what is not planned, fails this test.

The names were read with ``dir()`` from Agently 4.1.3.9 (the version bench/ runs beside).
"""

from __future__ import annotations

import asyncio

from triggerbus import TriggerFlow

AGENTLY_FLOW = frozenset({
    "append_flow_data", "async_append_flow_data", "async_del_flow_data",
    "async_set_flow_data", "async_start", "async_start_execution", "batch", "chunk",
    "chunks", "clear_runtime_resources", "create_execution", "declare_resource_requirement",
    "del_flow_data", "del_runtime_resource", "for_each", "get_async_runtime_stream",
    "get_contract", "get_contract_metadata", "get_flow_config", "get_flow_data",
    "get_json_flow", "get_resource_requirements", "get_runtime_resource",
    "get_runtime_stream", "get_yaml_flow", "if_condition", "intervention_point",
    "load_blueprint", "load_flow_config", "load_json_flow", "load_settings",
    "load_yaml_flow", "match", "name", "register_chunk_handler",
    "register_condition_handler", "remove_execution", "save_blueprint", "set_contract",
    "set_flow_data", "set_runtime_resource", "set_settings", "settings", "side_branch",
    "start", "start_execution", "to", "to_mermaid", "to_sub_flow",
    "update_runtime_resources", "when"
})
AGENTLY_EXECUTION = frozenset({
    "append_flow_data", "append_runtime_data", "append_state", "async_append_flow_data",
    "async_append_runtime_data", "async_append_state", "async_close", "async_continue_with",
    "async_del_flow_data", "async_del_runtime_data", "async_del_state", "async_emit",
    "async_emit_nowait", "async_get_result", "async_intervene", "async_load",
    "async_mark_intervention_consumed", "async_pause_for", "async_put_into_stream",
    "async_save", "async_seal", "async_set_flow_data", "async_set_runtime_data",
    "async_set_state", "async_start", "async_stop_stream", "async_unseal", "claim_lease",
    "clear_runtime_resources", "close", "continue_with", "declare_resource_requirement",
    "del_flow_data", "del_runtime_data", "del_runtime_resource", "del_state", "emit",
    "emit_nowait", "get_async_runtime_stream", "get_contract", "get_contract_metadata",
    "get_flow_data", "get_interrupt", "get_interventions", "get_last_signal",
    "get_latest_intervention", "get_lease", "get_lifecycle_state", "get_pending_interrupts",
    "get_pending_interventions", "get_resource_requirements", "get_result",
    "get_runtime_data", "get_runtime_resource", "get_runtime_resources",
    "get_runtime_stream", "get_state", "get_status", "get_sub_flow_frames",
    "heartbeat_lease", "id", "inspect_load", "inspect_runtime_event_records", "intervene",
    "is_closed", "is_idle", "is_open", "is_sealed", "is_waiting", "load", "load_settings",
    "mark_intervention_consumed", "off", "on", "pause_for", "project_runtime_event_record",
    "put_into_stream", "require_runtime_resource", "result", "run_context", "save", "seal",
    "set_compaction_policy", "set_concurrency", "set_flow_data", "set_result",
    "set_runtime_data", "set_runtime_resource", "set_settings", "set_state", "settings",
    "start", "started", "stop_stream", "unseal", "update_runtime_resources"
})
AGENTLY_DATA = frozenset({
    "append_flow_data", "append_runtime_data", "append_state", "async_append_flow_data",
    "async_append_runtime_data", "async_append_state", "async_continue_with",
    "async_del_flow_data", "async_del_runtime_data", "async_del_state", "async_emit",
    "async_emit_nowait", "async_mark_intervention_consumed", "async_pause_for", "async_put",
    "async_put_into_stream", "async_set_flow_data", "async_set_runtime_data",
    "async_set_state", "async_stop_stream", "chunk_run_context", "continue_with",
    "del_flow_data", "del_resource", "del_runtime_data", "del_state", "emit", "emit_nowait",
    "event", "execution", "execution_id", "flow_state", "get_flow_data", "get_interrupt",
    "get_interventions", "get_last_signal", "get_latest_intervention",
    "get_pending_interrupts", "get_resource", "get_result", "get_runtime_data", "get_state",
    "get_status", "input", "inputs", "interventions", "is_resume", "is_waiting", "layer_in",
    "layer_mark", "layer_out", "mark_intervention_consumed", "pause_for", "put",
    "put_into_stream", "require_resource", "resources", "resume", "set_flow_data",
    "set_resource", "set_result", "set_runtime_data", "set_state", "settings", "signal",
    "signal_id", "signal_info", "signal_meta", "signal_source", "state", "stop_stream",
    "trigger_event", "trigger_type", "type", "upper_layer_mark", "value"
})
NOT_PLANNED_FLOW = frozenset({
    "declare_resource_requirement", "get_contract", "get_contract_metadata",
    "get_resource_requirements", "intervention_point", "load_blueprint", "load_settings",
    "remove_execution", "save_blueprint", "set_contract", "set_settings", "settings"
})
NOT_PLANNED_EXECUTION = frozenset({
    "async_intervene", "async_mark_intervention_consumed", "async_pause_for", "claim_lease",
    "declare_resource_requirement", "get_contract", "get_contract_metadata",
    "get_interventions", "get_last_signal", "get_latest_intervention", "get_lease",
    "get_pending_interventions", "get_resource_requirements", "get_sub_flow_frames",
    "heartbeat_lease", "inspect_load", "inspect_runtime_event_records", "intervene",
    "is_idle", "load_settings", "mark_intervention_consumed", "off", "on", "pause_for",
    "project_runtime_event_record", "run_context", "set_compaction_policy",
    "set_concurrency", "set_result", "set_settings", "settings"
})

NOT_PLANNED_DATA = frozenset({
    "async_continue_with", "async_mark_intervention_consumed", "chunk_run_context",
    "continue_with", "del_resource", "execution", "get_interrupt", "get_interventions",
    "get_last_signal", "get_latest_intervention", "get_pending_interrupts", "get_result",
    "get_status", "interventions", "is_waiting", "layer_in", "layer_mark", "layer_out",
    "mark_intervention_consumed", "set_resource", "set_result", "settings", "signal",
    "signal_id", "signal_info", "signal_meta", "signal_source", "upper_layer_mark"
})


def _public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def test_the_flow_has_every_name_agently_has_but_those_not_planned() -> None:
    flow = TriggerFlow(name="surface")
    flow.to(lambda data: data.value).end()
    assert AGENTLY_FLOW - _public(flow) == NOT_PLANNED_FLOW


def test_the_execution_has_every_name_agently_has_but_those_not_planned() -> None:
    flow = TriggerFlow(name="surface_execution")
    flow.to(lambda data: data.value).end()
    assert AGENTLY_EXECUTION - _public(flow.create_execution()) == NOT_PLANNED_EXECUTION


async def test_chunk_data_has_every_name_agently_has_but_those_not_planned(runtime) -> None:
    flow = TriggerFlow(name="surface_data")
    names: list[set[str]] = []

    async def look(data):
        names.append(_public(data))

    flow.to(look)
    async with asyncio.timeout(30):
        await flow.async_start(None)
    assert AGENTLY_DATA - names[0] == NOT_PLANNED_DATA
