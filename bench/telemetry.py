"""Benchmark 7: what telemetry costs.

- Chain and fan-out throughput in one process with telemetry off (no ``OTEL_*``), with
  tracing on (spans exported over OTLP/HTTP to a receiver process on loopback that only
  counts bytes: `bench/otlp_sink.py`; ``OTEL_METRICS_EXPORTER=none``), and with tracing and
  metrics on: short rounds of the three, in rotating order, each mode's throughput taken as
  a ratio to its own round's off run (the median of the rounds is reported). The target is
  the issue's ("tracing on costs under 15 %"); metrics on top are reported beside it.
- The seam's cost when off: one ``publish`` round trip (what every bus publish pays) and one
  chunk attempt scope, timed over many calls, then multiplied by the publishes an execution
  makes and compared with the time an execution takes.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench import flows
from bench.benchmarks import Context, configure_for, row, throughput_run
from triggerbus.contracts.messages import InvokeChunk
from triggerbus.observability.telemetry import (
    AttemptInput,
    PublishInput,
    configure_telemetry,
    shutdown_telemetry,
)

SEAM_CALLS = 200_000
ROUNDS = 5
"""Rounds of off / tracing / tracing + metrics runs, each of half the benchmark's count."""
WORKER_ROUNDS = 5
"""Rounds of off / tracing runs with the chunks in a worker process (benchmarks 2 and 3's
second placement; both processes traced, each with its own export process)."""


class _Sink:
    """``bench.otlp_sink`` in a child process: the collector's CPU is not the driver's."""

    def __enter__(self) -> _Sink:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.otlp_sink"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ},
        )  # fmt: skip
        assert self._process.stdout is not None
        self.endpoint = self._process.stdout.readline().strip()
        return self

    @property
    def bytes_received(self) -> int:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write("?\n")
        self._process.stdin.flush()
        return int(self._process.stdout.readline())

    def __exit__(self, *exc: object) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _seam_cost_ns() -> dict[str, float]:
    """Nanoseconds per call of the seam with telemetry off."""
    telemetry = configure_telemetry({})
    invocation = InvokeChunk(id="e:1:0", flow="f", execution_id="e", fingerprint="x",
                             chunk="c", step=1)  # fmt: skip
    publish = PublishInput("f", "tb.f.run.c", invocation)
    began = time.perf_counter_ns()
    for _ in range(SEAM_CALLS):
        with telemetry.publish(publish):
            pass
    publish_ns = (time.perf_counter_ns() - began) / SEAM_CALLS
    attempt = AttemptInput(flow="f", chunk="c", subject="tb.f.run.c", consumer="run_f_c",
                           headers={}, invocation=invocation, attempt=1)  # fmt: skip
    telemetry.center._subscribers = ()  # the attempt's events without the log subscriber
    began = time.perf_counter_ns()
    for _ in range(SEAM_CALLS // 10):
        with telemetry.attempt(attempt) as observed:
            observed.finished()
    attempt_ns = (time.perf_counter_ns() - began) / (SEAM_CALLS // 10)
    shutdown_telemetry()
    return {"publish_ns": round(publish_ns, 1), "attempt_ns": round(attempt_ns, 1)}


def _throughput(ctx: Context, flow: Any, count: int, expected: Callable[[int], Any],
                environ: dict[str, str], *, worker_chunks: bool = False,
                ) -> dict[str, Any]:  # fmt: skip
    """One throughput run with telemetry configured by ``environ``, in this process and (with
    ``worker_chunks``) in the worker process that hosts the chunks."""
    telemetry = configure_telemetry(environ)
    if telemetry.tracing is not None:
        # The export process starts with the telemetry and spends its first second importing
        # the OTLP exporter: wait for it (a flush is answered once it reads its pipe), so
        # that its start-up, which an application pays once, is not measured against tracing.
        telemetry.tracing.force_flush(30_000)

    def span_export_process() -> dict[str, int]:
        pid = telemetry.tracing.recorder.export_pid if telemetry.tracing is not None else None
        return {"span export process": pid} if pid is not None else {}

    try:
        with _worker_environ(environ):
            prefix = configure_for(ctx, worker_chunks=worker_chunks)
            return throughput_run(ctx, prefix, flow, count, expected,
                                  worker_chunks=worker_chunks,
                                  other_pids=span_export_process)  # fmt: skip
    finally:
        shutdown_telemetry()


@contextlib.contextmanager
def _worker_environ(environ: dict[str, str]) -> Iterator[None]:
    """``environ``'s ``OTEL_*`` settings, and no others, for the worker processes started
    meanwhile (they inherit this process's environment)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(environ)
    try:
        yield
    finally:
        for key in environ:
            os.environ.pop(key, None)
        os.environ.update(saved)


def _ratio_rows(label: str, placement: str, runs: dict[str, list[dict[str, Any]]],
                modes: tuple[tuple[str, bool], ...]) -> list[dict[str, Any]]:  # fmt: skip
    """A row per traced mode: the median of its rounds' throughput ratios to their off run
    (the issue's target where ``modes`` says so)."""
    rows = []
    off = statistics.median(r["executions_per_s"] for r in runs["off"])
    for mode, is_target in modes:
        pairs = list(zip(runs[mode], runs["off"], strict=True))
        ratios = sorted(on["executions_per_s"] / base["executions_per_s"] for on, base in pairs)
        cpu_ratios = sorted(on["cpu_ms_per_execution"]["driver"]
                            / base["cpu_ms_per_execution"]["driver"] for on, base in pairs)
        worker_cpu = [on["cpu_ms_per_execution"]["worker0"]
                      / base["cpu_ms_per_execution"]["worker0"]
                      for on, base in pairs if "worker0" in base["cpu_ms_per_execution"]]
        ratio = statistics.median(ratios)
        exported = sum(r["otlp_bytes"] for r in runs[mode])
        child = statistics.median(r["cpu_ms_per_execution"].get("span export process", 0.0)
                                  for r in runs[mode])
        worker_note = (f"; worker CPU per execution on/off {statistics.median(worker_cpu):.2f}x"
                       if worker_cpu else "")
        rows.append(row("7 telemetry", f"{label} executions/s{placement}, {mode} on",
                        round(ratio * off, 1), "exec/s", anchor="telemetry off",
                        anchor_value=round(off, 1), ratio=ratio,
                        target=">= 0.85x" if is_target else None,
                        passed=ratio >= 0.85 if is_target else None,
                        note=f"OTLP/HTTP to a receiver process on loopback, "
                             f"{exported:,} bytes exported; median of {len(ratios)} rounds' "
                             f"ratios to their own off run (range {ratios[0]:.2f}-"
                             f"{ratios[-1]:.2f}); driver CPU per execution on/off "
                             f"{statistics.median(cpu_ratios):.2f}x{worker_note}; the driver's "
                             f"span export process {child:.2f} ms per execution"))
    return rows  # fmt: skip


def bench_telemetry(ctx: Context) -> dict:
    details: dict[str, Any] = {"seam_off": _seam_cost_ns()}
    rows = []
    width = flows.FANOUT_WIDTH
    cases = [
        ("chain", flows.chain, ctx.sizes.chain, lambda v: v + 3),
        ("fan-out", flows.fanout, ctx.sizes.fanout, lambda v: sum(v + i for i in range(width))),
    ]
    with _Sink() as receiver:
        both = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "bench",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
        environs = {"off": {}, "tracing": {**both, "OTEL_METRICS_EXPORTER": "none"},
                    "tracing + metrics": both}  # fmt: skip
        modes = list(environs)
        for label, flow, count, expected in cases:
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
            # This machine's speed drifts by ±20 % over tens of seconds (the nats-server's own
            # CPU per execution moves with it): short rounds of every mode, the order rotated
            # each round, and each mode compared with the off run of its own round.
            for round_ in range(ROUNDS):
                for mode in modes[round_ % 3 :] + modes[: round_ % 3]:
                    bytes_before = receiver.bytes_received
                    result = _throughput(ctx, flow, max(count // 2, 50), expected,
                                         environs[mode])  # fmt: skip
                    result["otlp_bytes"] = receiver.bytes_received - bytes_before
                    runs[mode].append(result)
            details[label] = runs
            rows += _ratio_rows(label, "", runs, (("tracing", True), ("tracing + metrics", False)))
            remote: dict[str, list[dict[str, Any]]] = {"off": [], "tracing": []}
            for round_ in range(WORKER_ROUNDS):
                for mode in ("off", "tracing") if round_ % 2 == 0 else ("tracing", "off"):
                    bytes_before = receiver.bytes_received
                    result = _throughput(ctx, flow, max(count // 2, 50), expected,
                                         environs[mode], worker_chunks=True)  # fmt: skip
                    result["otlp_bytes"] = receiver.bytes_received - bytes_before
                    remote[mode].append(result)
            details[f"{label} (driver + 1 worker)"] = remote
            rows += _ratio_rows(label, " (driver + 1 worker)", remote, (("tracing", True),))
            off = statistics.median(r["executions_per_s"] for r in runs["off"])
            writes = runs["off"][0]["writes_per_execution"]
            per_exec_ns = details["seam_off"]["publish_ns"] * writes
            exec_ns = 1e9 / max(off, 1e-9)
            rows.append(row("7 telemetry", f"{label}: seam cost per execution, telemetry off",
                            round(per_exec_ns / 1000, 2), "us",
                            note=f"{details['seam_off']['publish_ns']} ns per publish x "
                                 f"{writes} publishes; {100 * per_exec_ns / exec_ns:.3f}% of "
                                 "an execution's time"))  # fmt: skip
    rows.append(row("7 telemetry", "one chunk attempt's seam, telemetry off",
                    details["seam_off"]["attempt_ns"], "ns",
                    note="no span; its events reach the Event Center"))  # fmt: skip
    return {"rows": rows, "details": details}
