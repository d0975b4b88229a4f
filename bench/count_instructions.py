"""What tracing costs, counted rather than timed: CPU instructions and Python opcodes per
execution, telemetry off and on.

    python bench/count_instructions.py [--flow fanout] [--counts 20 120] [--in-flight 10]
        [--keep DIR]
    python bench/count_instructions.py --opcodes [--flow fanout] [--top 40]
    python bench/count_instructions.py --simulate-caches --in-flight 100   # misses, mispredictions

Why: on this 2-core machine a throughput ratio drifts by ±10 % between runs of the same code
(benchmark 7 reads 0.61-1.15 for single rounds), so a change worth 3 % of tracing's cost cannot
be seen by timing. Counts can. The default mode runs the flow (10 executions in flight: under
valgrind the process is ~50x slower) in a child process under ``valgrind --tool=callgrind`` at
two execution counts per mode and reports the difference divided by the difference in
executions: the instructions one more execution costs the driver process (every thread of it;
not the span export process nor the OTLP receiver, which run beside it natively, nor the
nats-server). ``--opcodes`` runs without valgrind under ``sys.settrace`` and says which Python
functions execute the extra opcodes (main thread, one count).

Tracing exports to ``bench/otlp_sink.py`` as benchmark 7 does (``OTEL_METRICS_EXPORTER=none``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IN_FLIGHT = 10
WARM_UP = 5
MODES = ("off", "tracing")


def _environ(mode: str, endpoint: str) -> dict[str, str]:
    if mode == "off":
        return {}
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "bench",
            "OTEL_METRICS_EXPORTER": "none"}  # fmt: skip


def child(mode: str, count: int, flow_name: str, url: str, endpoint: str, opcodes: str,
          in_flight: int = IN_FLIGHT) -> int:
    """Run ``count`` executions after a warm-up (in the process being counted)."""
    from bench import flows
    from bench._common import configure_runtime, drive, quiet_shutdown_noise
    from triggerbus.observability.telemetry import configure_telemetry, shutdown_telemetry

    flow = getattr(flows, flow_name)
    configure_telemetry(_environ(mode, endpoint))
    configure_runtime(url, f"count{os.getpid()}")
    counter = _OpcodeCounter() if opcodes else None

    async def main() -> int:
        quiet_shutdown_noise({})
        from triggerbus._runtime import close_runtime

        try:
            for value in range(WARM_UP):
                await flow.async_start(value)
            if counter is not None:
                sys.settrace(counter.trace)
            result = await drive(flow.async_start, count=count, in_flight=in_flight,
                                 time_limit=900)  # fmt: skip
            sys.settrace(None)
            return int(result["executions"])
        finally:
            await close_runtime()

    done = asyncio.run(main())
    shutdown_telemetry()
    if counter is not None:
        Path(opcodes).write_text(json.dumps(counter.per_execution(done)))
    return 0 if done == count else 1


class _OpcodeCounter:
    """Opcodes executed and calls made, per code object (``sys.settrace``; slow, exact)."""

    def __init__(self) -> None:
        self.opcodes: collections.Counter[Any] = collections.Counter()
        self.calls: collections.Counter[Any] = collections.Counter()

    def trace(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.opcodes[frame.f_code] += 1
        elif event == "call":
            self.calls[frame.f_code] += 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        return self.trace

    def per_execution(self, executions: int) -> dict[str, list[float]]:
        result: dict[str, list[float]] = {}
        for code, count in self.opcodes.items():
            name = code.co_filename.removeprefix(f"{REPO}/")
            name = re.sub(r".*/(site-packages|python3\.\d+)/", "", name)
            key = f"{name}:{code.co_firstlineno}:{code.co_name}"
            totals = result.setdefault(key, [0.0, 0.0])
            totals[0] += count / executions
            totals[1] += self.calls[code] / executions
        return result


SIMULATION = ("--cache-sim=yes", "--branch-sim=yes")
"""Callgrind's cache and branch-predictor model: misses and mispredictions as counts."""


def _run_child(args: list[str], *, valgrind_out: Path | None, simulate: bool = False) -> None:
    command = [sys.executable, "-m", "bench.count_instructions", "--child", *args]
    if valgrind_out is not None:
        command = ["valgrind", "--tool=callgrind", *(SIMULATION if simulate else ()),
                   f"--callgrind-out-file={valgrind_out}", *command]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if completed.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{completed.stderr[-3000:]}")


def _totals(path: Path) -> dict[str, int]:
    """Callgrind's totals by event (``Ir`` instructions; with the simulation also ``D1mr``
    L1 data read misses, ``Bcm`` conditional branches mispredicted, and so on)."""
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            return dict(zip(events, map(int, line.split()[1:]), strict=True))
    raise SystemExit(f"no totals in {path}")


def count_instructions(flow: str, counts: tuple[int, int], url: str, endpoint: str,
                       scratch: Path, in_flight: int,
                       simulate: bool = False) -> dict[str, Any]:  # fmt: skip
    """Instructions (and, simulated, every cache and branch event) per execution of each mode:
    the difference between two counts."""
    low, high = counts
    report: dict[str, Any] = {}
    for mode in MODES:
        totals = {}
        for count in (low, high):
            out = scratch / f"callgrind.{mode}.{count}"
            _run_child([mode, str(count), flow, url, endpoint, "", str(in_flight)],
                       valgrind_out=out, simulate=simulate)  # fmt: skip
            totals[count] = _totals(out)
        per_event = {event: (totals[high][event] - totals[low][event]) / (high - low)
                     for event in totals[high]}  # fmt: skip
        report[mode] = {"instructions": {count: t["Ir"] for count, t in totals.items()},
                        "per_execution": per_event["Ir"]}  # fmt: skip
        if simulate:
            report[mode]["events_per_execution"] = per_event
    report["ratio"] = report["tracing"]["per_execution"] / report["off"]["per_execution"]
    if simulate:
        off, on = report["off"]["events_per_execution"], report["tracing"]["events_per_execution"]
        report["event_ratios"] = {event: round(on[event] / off[event], 3)
                                  for event in off if off[event] > 0}  # fmt: skip
    return report


def count_opcodes(flow: str, count: int, url: str, endpoint: str, scratch: Path,
                  top: int, in_flight: int) -> dict[str, Any]:  # fmt: skip
    """Opcodes per execution of each mode, and the functions that execute the extra ones."""
    per_mode = {}
    for mode in MODES:
        out = scratch / f"opcodes.{mode}.json"
        _run_child([mode, str(count), flow, url, endpoint, str(out), str(in_flight)],
                   valgrind_out=None)
        per_mode[mode] = json.loads(out.read_text())
    off, on = per_mode["off"], per_mode["tracing"]
    total_off = sum(value[0] for value in off.values())
    total_on = sum(value[0] for value in on.values())
    extra = sorted(
        ((on.get(key, [0, 0])[0] - off.get(key, [0, 0])[0],
          on.get(key, [0, 0])[1] - off.get(key, [0, 0])[1], key) for key in set(off) | set(on)),
        reverse=True,
    )  # fmt: skip
    return {
        "off_per_execution": round(total_off),
        "tracing_per_execution": round(total_on),
        "ratio": total_on / total_off,
        "extra_by_function": [
            {"function": key, "opcodes": round(opcodes), "calls": round(calls, 1)}
            for opcodes, calls, key in extra[:top]
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flow", choices=("chain", "fanout"), default="fanout")
    parser.add_argument("--counts", type=int, nargs=2, default=(20, 120), metavar=("LOW", "HIGH"))
    parser.add_argument("--opcodes", action="store_true",
                        help="count Python opcodes per function instead (no valgrind)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "instructions.json"))
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the callgrind files here, for callgrind_annotate")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT,
                        help="executions in flight (benchmarks 2, 3 and 7 run 100; collector "
                        "costs grow with it)")
    parser.add_argument("--simulate-caches", action="store_true",
                        help="also simulate the caches and branch predictor (callgrind "
                        "--cache-sim --branch-sim, ~3x slower) and report every event's ratio")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, count, flow, url, endpoint, opcodes, in_flight = args.child
        return child(mode, int(count), flow, url, endpoint, opcodes, int(in_flight))
    if not args.opcodes and shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind), or use --opcodes")

    from bench.telemetry import _Sink
    from triggerbus.bus.embedded import EmbeddedServer

    with EmbeddedServer() as server, _Sink() as sink, tempfile.TemporaryDirectory() as scratch:
        if args.keep:
            scratch = args.keep
            Path(scratch).mkdir(parents=True, exist_ok=True)
        if args.opcodes:
            report = count_opcodes(args.flow, args.counts[1], server.url, sink.endpoint,
                                   Path(scratch), args.top, args.in_flight)  # fmt: skip
        else:
            report = count_instructions(args.flow, tuple(args.counts), server.url,
                                        sink.endpoint, Path(scratch), args.in_flight,
                                        args.simulate_caches)  # fmt: skip
    report = {"flow": args.flow, "mode": "opcodes" if args.opcodes else "instructions",
              "in_flight": args.in_flight, **report}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
