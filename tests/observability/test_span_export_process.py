"""Span export through a child process: the same bytes reach the collector, under the traced
process's resource; a lost child costs no spans; the child does not outlive its parent."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from tests._helpers import process_exited
from triggerbus.errors import ConfigurationError
from triggerbus.observability import _span_export, tracing
from triggerbus.observability._otlp import SpanEncoder
from triggerbus.observability._records import SpanRecord, to_record
from triggerbus.observability._spans import RecordedSpan, SpanRecorder
from triggerbus.observability.testing import OtlpReceiver

from .test_otlp_encoding import _every_kind_of_span

REPO = Path(__file__).resolve().parents[2]
RESOURCE = Resource.create({"service.name": "traced-process", "service.instance.id": "host:1"})
SCOPE = InstrumentationScope("triggerbus", "1.2.3")


def _recorder(receiver: OtlpReceiver, *, built_later: bool = False) -> SpanRecorder:
    """``built_later``: the exporters are built only if this process has to export itself."""
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}

    def exporters() -> list[OTLPSpanExporter]:
        return [OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")]

    return SpanRecorder(exporters if built_later else exporters(), resource=RESOURCE, scope=SCOPE,
                        max_queue=1000, max_batch=100, delay=3600, environ=environ)  # fmt: skip


def _spans(recorder: SpanRecorder, count: int, first_id: int = 1) -> None:
    for span_id in range(first_id, first_id + count):
        RecordedSpan(recorder, f"span {span_id}", SpanKind.INTERNAL, 0xABC, span_id, 1, "", 0,
                     False, {"n": span_id}, (), 1_700_000_000_000_000_000).end()  # fmt: skip




def test_records_that_crossed_the_pipe_encode_to_the_same_bytes() -> None:
    records = [to_record(span) for span in _every_kind_of_span()]
    crossed = msgspec.msgpack.decode(msgspec.msgpack.encode(records), type=list[SpanRecord])
    encoder = SpanEncoder(RESOURCE.attributes, "triggerbus", "1")
    assert encoder.encode(crossed) == encoder.encode(records)


async def test_spans_reach_the_collector_through_the_child_under_the_parents_resource() -> None:
    with OtlpReceiver() as receiver:
        recorder = _recorder(receiver)
        try:
            assert recorder._process is not None
            _spans(recorder, 150)
            assert recorder.force_flush(10_000)  # returns once the child has posted them
            spans = receiver.snapshot()
        finally:
            recorder.shutdown()
    assert sorted(s.attributes["n"] for s in spans) == list(range(1, 151))
    assert {s.service for s in spans} == {"traced-process"}


@pytest.mark.parametrize("built_later", [False, True])
async def test_a_lost_child_loses_no_spans_the_process_exports_them_itself(
    built_later: bool,
) -> None:
    with OtlpReceiver() as receiver:
        recorder = _recorder(receiver, built_later=built_later)
        assert bool(recorder._exporters) is not built_later
        try:
            process = recorder._process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
            assert process_exited(process.pid, 10)
            _spans(recorder, 30)
            recorder.force_flush(10_000)
            async with asyncio.timeout(10):
                spans = await receiver.wait_for(lambda s: len(s) >= 30)
            assert recorder._process is None
        finally:
            recorder.shutdown()
    assert sorted(s.attributes["n"] for s in spans) == list(range(1, 31))


async def test_spans_handed_over_before_the_traced_process_is_killed_are_still_posted() -> None:
    """The child exits when its stdin closes, after posting what it holds: a SIGKILL of the
    traced process neither leaks the child nor loses a batch it had already been given."""
    script = textwrap.dedent("""
        import sys
        from triggerbus.observability.telemetry import configure_telemetry
        from triggerbus.observability.tracing import Tracing
        from opentelemetry.trace import SpanKind
        telemetry = configure_telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": sys.argv[1],
                                         "OTEL_METRICS_EXPORTER": "none"})
        recorder = telemetry.tracing.recorder
        for n in range(20):
            telemetry.tracing.start_span(f"s{n}", parent=None, kind=SpanKind.INTERNAL,
                                         attributes={"n": n}).end()
        recorder._export_queued()  # handed to the child, not waited for
        print(recorder.export_pid, flush=True)
        sys.stdin.read()
    """)
    with OtlpReceiver() as receiver:
        traced = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, receiver.endpoint, cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(30):
                line = await traced.stdout.readline()  # type: ignore[union-attr]
            child = int(line)
            traced.kill()
            assert process_exited(child, 15)
            async with asyncio.timeout(10):
                spans = await receiver.wait_for(lambda s: len(s) >= 20)
        finally:
            if traced.returncode is None:
                traced.kill()
            async with asyncio.timeout(10):
                await traced.wait()
    assert sorted(s.attributes["n"] for s in spans) == list(range(20))


def test_the_export_place_is_a_setting_with_a_clear_error() -> None:
    assert tracing.span_export_mode({}) == "process"
    assert tracing.span_export_mode({"TRIGGERBUS_SPAN_EXPORT": "thread"}) == "thread"
    with pytest.raises(ConfigurationError, match="process or thread"):
        tracing.span_export_mode({"TRIGGERBUS_SPAN_EXPORT": "sidecar"})
    with OtlpReceiver() as receiver:
        built = tracing.tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                          "TRIGGERBUS_SPAN_EXPORT": "thread"})  # fmt: skip
        assert built is not None
        try:
            assert built.recorder._process is None
        finally:
            built.shutdown()


async def test_a_forked_child_exports_its_own_spans_without_touching_the_parents_pipe() -> None:
    """A fork shares the pipe to the export process; frames written from both sides would
    interleave and corrupt the stream. The forked child exports from a thread of its own.
    (The fork happens in a process of its own, not in the test runner.)"""
    script = textwrap.dedent("""
        import os, sys
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanKind
        from triggerbus.observability._spans import RecordedSpan, SpanRecorder

        endpoint = sys.argv[1]
        recorder = SpanRecorder(
            [OTLPSpanExporter(endpoint=endpoint + "/v1/traces")],
            resource=Resource.create({"service.name": "forking"}),
            scope=InstrumentationScope("triggerbus", "1"), max_queue=1000, max_batch=100,
            delay=3600, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})

        def spans(first):
            for n in range(first, first + 5):
                RecordedSpan(recorder, f"s{n}", SpanKind.INTERNAL, 0xABC, n, 1, "", 0, False,
                             {"n": n}, (), 1_700_000_000_000_000_000).end()

        process = recorder._process
        assert process is not None
        spans(1)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                if recorder._process is None:
                    spans(101)
                    code = 0 if recorder.force_flush(10_000) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(10 + os.waitstatus_to_exitcode(status))
        spans(201)
        ok = recorder._process is process and recorder.force_flush(10_000)
        recorder.shutdown()
        sys.exit(0 if ok else 4)
    """)
    with OtlpReceiver() as receiver:
        forking = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, receiver.endpoint, cwd=REPO)
        async with asyncio.timeout(60):
            assert await forking.wait() == 0
            spans = await receiver.wait_for(lambda s: len(s) >= 15)
    assert sorted(s.attributes["n"] for s in spans) == [*range(1, 6), *range(101, 106),
                                                        *range(201, 206)]  # fmt: skip


@pytest.mark.parametrize(
    ("frames", "code", "logged"),
    [
        ([b"not msgpack at all"], 2, "span_export_process_refused"),
        (["hello", b"\xc1"], 3, "span_export_process_frame_unreadable"),
    ],
)
async def test_the_export_process_refuses_a_broken_stream_with_a_reason(
    frames: list[object], code: int, logged: str
) -> None:
    """The pipe is private, but a broken stream still ends the child with a reason and an exit
    code (the parent then exports itself), never by hanging or posting garbage."""
    hello = _span_export.hello_for({}, {"service.name": "x"}, "", "triggerbus", "1", "")
    encoded = [msgspec.msgpack.encode(hello) if f == "hello" else f for f in frames]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "triggerbus.observability._span_export", cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    data = b"".join(len(f).to_bytes(4, "big") + f for f in encoded)  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        _, stderr = await child.communicate(data)
    assert child.returncode == code
    assert logged in stderr.decode()


def test_a_traced_process_does_not_import_the_otlp_exporter_the_child_uses() -> None:
    """The OTLP/HTTP exporter brings requests, urllib3 and protobuf (~9,000 long-lived objects
    every full collection walks); with export in the child, the traced process never needs it."""
    code = textwrap.dedent(
        """
        import sys
        from triggerbus.observability.telemetry import configure_telemetry, shutdown_telemetry
        telemetry = configure_telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                         "OTEL_METRICS_EXPORTER": "none"})
        assert telemetry.tracing is not None and telemetry.tracing.recorder.export_pid
        loaded = [name for name in ("requests", "urllib3", "google.protobuf",
                                    "opentelemetry.exporter.otlp.proto.http.trace_exporter")
                  if name in sys.modules]
        shutdown_telemetry()
        print("loaded:", loaded)
        """
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded: []" in done.stdout


def _refusing_endpoint() -> str:
    """A loopback port nothing listens on: every post is refused, and retried with backoff."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _in_thread(call: Callable[[], object], timeout: float) -> bool:
    """Whether ``call`` returns within ``timeout`` (run on a daemon thread that may stay)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


@pytest.mark.parametrize("place", ["process", "thread"])
def test_a_collector_that_is_down_neither_blocks_the_process_nor_holds_its_exit(
    place: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every post retries for the exporter's timeout while the collector is down. The traced
    process must still hand its batches over at once (the child reads its pipe into a bounded
    backlog, dropping past it) and exit within its shutdown budget, whatever is queued: before,
    thirty queued batches held the exit for minutes."""
    endpoint = _refusing_endpoint()
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_MAX_QUEUE_SIZE": "100",
               "OTEL_BSP_EXPORT_TIMEOUT": "2000"}  # fmt: skip
    recorder = SpanRecorder(
        [OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")], resource=RESOURCE, scope=SCOPE,
        max_queue=1000, max_batch=10, delay=3600,
        environ=environ if place == "process" else None, shutdown_budget=2.0,
    )  # fmt: skip
    assert (recorder._process is not None) is (place == "process")
    for n in range(300):  # 30 batches of about 10 KB: more than a pipe holds
        RecordedSpan(recorder, f"span {n}", SpanKind.INTERNAL, 0xABC, n + 1, 1, "", 0, False,
                     {"pad": "x" * 1000}, (), 1_700_000_000_000_000_000).end()  # fmt: skip
    if place == "process":
        assert _in_thread(recorder._export_queued, 10), "the pipe to the child filled up"
    assert _in_thread(recorder.shutdown, 2.0 + 10), "the exit waited on a collector that is down"
    if place == "process":  # counted and said by the child, on the stderr it shares with us
        assert "span_export_dropped_total" in capfd.readouterr().err
    else:
        assert recorder.dropped > 0
