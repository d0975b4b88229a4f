"""One execution across three processes (caller, execution host, chunk worker) is one trace.

Every process exports over OTLP/HTTP to a receiver this test runs on loopback, which decodes the
real OTLP protobuf. The caller is this test process (its own TracerProvider, as an application
would have); the execution host and the chunk worker are real ``triggerbus worker`` processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests._helpers import ROOT, child_env, configure_pure_client, load_module
from triggerbus._runtime import close_runtime, configure
from triggerbus.observability.telemetry import configure_telemetry, shutdown_telemetry
from triggerbus.observability.testing import OtlpReceiver, ReceivedSpan
from triggerbus.testing import WorkerProcess

SPAN_KIND_PRODUCER = 4
SPAN_KIND_CONSUMER = 5
ACK_WAIT = "1.5"


def _otel_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_METRICS_EXPORTER": "none",
    }


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one {name!r}, got {[s.name for s in spans]}"
    return found[0]


def _first_attempt(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    """The first attempt's span of a chunk. While the blocked merge holds the worker's loop
    past ack_wait, an attempt still waiting for its completion's ack is redelivered too: every
    attempt is a span of its own under the one invocation."""
    found = sorted((s for s in spans if s.name == name),
                   key=lambda s: s.attributes["triggerbus.attempt"])  # fmt: skip
    assert found and found[0].attributes["triggerbus.attempt"] == 1, f"no first {name!r}"
    assert len({s.parent_span_id for s in found}) == 1, f"{name!r} attempts differ in parent"
    return found[0]


def _has(
    *names: str, first_attempts: tuple[str, ...] = (), merge_attempts: int = 1
) -> Callable[[list[ReceivedSpan]], bool]:
    """Every span the assertions read, the first attempts among them, and the parent of every
    span received: processes export in their own batches, so one span's arrival says nothing
    of another's (a late attempt's emit once came in before that attempt's own span)."""

    def check(spans: list[ReceivedSpan]) -> bool:
        have = [s.name for s in spans]
        firsts = {s.name for s in spans if s.attributes.get("triggerbus.attempt") == 1}
        ids = {s.span_id for s in spans}
        return (
            all(n in have for n in names)
            and all(n in firsts for n in first_attempts)
            and have.count("process merge") >= merge_attempts
            and all(not s.parent_span_id or s.parent_span_id in ids for s in spans)
        )

    return check


async def test_execution_across_three_processes_is_one_trace_with_links_and_attempts(
    nats_url: str, prefix: str, tmp_path: Path
) -> None:
    flow = load_module("tests/flows/traced.py", "traced_caller").flow
    marker = tmp_path / "merge-attempted"
    with OtlpReceiver() as receiver:
        common = {
            **child_env(),
            "TRIGGERBUS_LOG_LEVEL": "debug",
            "TRIGGERBUS_ACK_WAIT": ACK_WAIT,
        }
        host = WorkerProcess(
            "tests.flows.traced:flow",
            nats_url=nats_url,
            prefix=prefix,
            no_chunks=True,
            cwd=str(ROOT),
            env={**common, **_otel_env(receiver, "execution-host")},
        )
        worker = WorkerProcess(
            "tests.flows.traced:flow",
            nats_url=nats_url,
            prefix=prefix,
            no_executions=True,
            cwd=str(ROOT),
            env={
                **common,
                **_otel_env(receiver, "chunk-worker"),
                "TRACED_MARKER": str(marker),
                "TRACED_BLOCK_SECONDS": "4",
            },
        )
        caller = TracerProvider(resource=Resource.create({"service.name": "caller"}))
        caller.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
        )
        configure_pure_client(nats_url, prefix, ack_wait=float(ACK_WAIT))
        configure_telemetry(_otel_env(receiver, "caller-triggerbus"))
        try:
            async with asyncio.timeout(90), host, worker:
                with caller.get_tracer("test").start_as_current_span("checkout") as root:
                    handle = flow.create_execution(auto_close_timeout=0)
                    result = await handle.async_start(7)
                execution_id = handle.execution_id
                spans = await receiver.wait_for(
                    _has(
                        "checkout", "execution traced_flow", "invoke left", "invoke right",
                        "emit side", "invoke on_side", "invoke merge",
                        first_attempts=("process left", "process right", "process on_side",
                                        "process merge"),
                        merge_attempts=2,
                    )
                )  # fmt: skip
                await host.terminate()
                await worker.terminate()
        finally:
            await close_runtime()
            configure(None)
            shutdown_telemetry()
            caller.shutdown()

    assert result["$final_result"] == {"left": "L7", "right": "R7"}
    trace_id = f"{root.get_span_context().trace_id:032x}"

    # One trace, every process in it.
    assert {s.trace_id for s in spans} == {trace_id}
    assert {"caller", "execution-host", "chunk-worker"} <= {s.service for s in spans}

    # The tree: caller -> execution -> invoke -> process -> emit -> invoke -> process.
    checkout = _one(spans, "checkout")
    execution = _one(spans, "execution traced_flow")
    assert execution.parent_span_id == checkout.span_id
    assert execution.service == "execution-host"
    assert execution.attributes["triggerbus.execution_id"] == execution_id
    by_id = {s.span_id: s for s in spans}
    for name in ("invoke left", "invoke right"):
        invoke = _one(spans, name)
        assert invoke.kind == SPAN_KIND_PRODUCER
        assert invoke.parent_span_id == execution.span_id
        assert invoke.service == "execution-host"
    process_left = _first_attempt(spans, "process left")
    process_right = _first_attempt(spans, "process right")
    for process, invoke in ((process_left, "invoke left"), (process_right, "invoke right")):
        assert process.kind == SPAN_KIND_CONSUMER
        assert process.parent_span_id == _one(spans, invoke).span_id
        assert process.service == "chunk-worker"
        assert process.attributes["messaging.system"] == "nats"
        assert process.attributes["triggerbus.flow"] == "traced_flow"
    emits = [s for s in spans if s.name == "emit side"]  # one per attempt of right
    emit = next(s for s in emits if s.parent_span_id == process_right.span_id)
    assert emit.kind == SPAN_KIND_PRODUCER
    assert {by_id[s.parent_span_id].name for s in emits if s.parent_span_id in by_id} == {
        "process right"
    }
    assert _one(spans, "invoke on_side").parent_span_id == emit.span_id  # applied once
    on_side = _first_attempt(spans, "process on_side")
    assert on_side.parent_span_id == _one(spans, "invoke on_side").span_id

    # The batch join fans in: the merge is invoked by the last arrival and links the other.
    invoke_merge = _one(spans, "invoke merge")
    arrivals = {process_left.span_id, process_right.span_id}
    assert invoke_merge.parent_span_id in arrivals
    linked = {span_id for _, span_id, _ in invoke_merge.links}
    assert linked == arrivals - {invoke_merge.parent_span_id}

    # The redelivered merge: an attempt span per delivery of the same invocation, same parent.
    # (A third can come: the redelivery itself may wait in the blocked worker past ack_wait.)
    attempts = sorted(
        (s for s in spans if s.name == "process merge"),
        key=lambda s: s.attributes["triggerbus.attempt"],
    )
    numbers = [s.attributes["triggerbus.attempt"] for s in attempts]
    assert numbers[0] == 1 and len(numbers) >= 2 and len(set(numbers)) == len(numbers)
    assert {s.parent_span_id for s in attempts} == {invoke_merge.span_id}
    assert len({s.span_id for s in attempts}) == len(attempts)

    # The execution span covers everything it caused, though it was exported last. An attempt
    # redelivered while merge blocked the worker may start after the execution closed (its
    # outcome is a duplicate): what such a late attempt did is not the execution's own work.
    caused = [s for s in spans if s.name not in ("checkout", "execution traced_flow")]
    assert execution.start_ns <= min(s.start_ns for s in caused)
    late = {s.span_id for s in caused if s.attributes.get("triggerbus.attempt", 1) > 1}
    assert execution.end_ns >= max(
        by_id[i.parent_span_id].start_ns for i in caused if i.parent_span_id not in late
    )

    # A log line leads to its trace.
    succeeded = [r for r in worker.records if r.get("event") == "chunk_attempt_succeeded"]
    assert succeeded and all(r.get("trace_id") == trace_id for r in succeeded)
    assert {r["span_id"] for r in succeeded} <= {s.span_id for s in spans}
