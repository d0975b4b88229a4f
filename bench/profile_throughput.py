"""Profile the chain throughput benchmark (all in one process) and say where the time goes.

    python bench/profile_throughput.py [--count 1500] [--out bench/results/profile]

Starts its own nats-server, runs the 3-chunk chain with 100 executions in flight, and writes:

- ``<out>/pyinstrument.txt`` and ``.html``: the call tree (wall time; idle shows as ``select``);
- ``<out>/cprofile.txt``: the top functions by own time;
- ``<out>/breakdown.json``: own CPU time grouped by layer (asyncio machinery, nats-py protocol,
  msgspec, structlog, triggerbus hosts, ...), per execution, plus awaited wall time per bus
  operation (KV compare-and-set, JetStream publish acks, fetches), measured by wrapping
  ``triggerbus.bus.jetstream.Bus`` methods in this process only.

pyinstrument is a bench-only tool: ``.venv/bin/pip install pyinstrument``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import flows  # noqa: E402
from bench._common import configure_runtime, cpu_seconds, drive, quiet_shutdown_noise  # noqa: E402
from triggerbus.bus import jetstream  # noqa: E402
from triggerbus.bus.embedded import EmbeddedServer  # noqa: E402

LAYERS = [
    ("idle (epoll wait)", ("select.epoll", "selectors.py")),
    ("asyncio machinery", ("asyncio/",)),
    ("nats-py client", ("site-packages/nats/",)),
    ("structlog", ("structlog/",)),
    ("msgspec encode/decode", ("msgspec", "codec.py")),
    ("execution actor (pure apply)", ("actors/execution.py", "actors/graph_index.py",
                                      "actors/state_paths.py")),
    ("execution host", ("actors/execution_host.py",)),
    ("chunk host + runtime data", ("actors/chunk_host.py", "actors/runtime_data.py")),
    ("bus seam", ("bus/",)),
    ("Execution handle / flow API", ("triggerbus/execution.py", "triggerbus/flow.py",
                                     "triggerbus/_runtime.py")),
    ("bench driver + handlers", ("bench/",)),
    ("json / uuid / misc stdlib", ("json/", "uuid.py", "contextvars", "copy.py")),
]


class OpTimer:
    """Awaited wall time and counts of each Bus operation."""

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self._originals: list[tuple[type, str, Any]] = []

    def unwrap(self) -> None:
        for cls, method, original in self._originals:
            setattr(cls, method, original)
        self._originals.clear()

    def wrap(self, cls: type, method: str, label: str | None = None) -> None:
        original = getattr(cls, method)
        self._originals.append((cls, method, original))
        timer = self

        async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            name = label or method
            if method == "publish":
                subject = args[0] if args else kwargs.get("subject", "")
                kind = subject.split(".")[2] if subject.count(".") >= 3 else "?"
                name = f"publish ({kind})"
            began = time.perf_counter()
            try:
                return await original(self, *args, **kwargs)
            finally:
                timer.count[name] += 1
                timer.seconds[name] += time.perf_counter() - began

        setattr(cls, method, timed)

    def report(self, executions: int) -> dict[str, Any]:
        return {
            name: {
                "calls_per_execution": round(self.count[name] / executions, 2),
                "mean_ms": round(self.seconds[name] / self.count[name] * 1000, 3),
            }
            for name in sorted(self.count)
        }


def layer_of(filename: str, function: str) -> str:
    text = f"{filename}:{function}"
    for layer, needles in LAYERS:
        if any(needle in text for needle in needles):
            return layer
    return "other"


async def workload(count: int, timer: OpTimer | None, in_flight: int = 100) -> dict[str, Any]:
    quiet_shutdown_noise({})
    from triggerbus._runtime import close_runtime

    try:
        for value in range(20):
            await flows.chain.async_start(value)
        return await drive(flows.chain.async_start, count=count, in_flight=in_flight,
                           time_limit=120)
    finally:
        await close_runtime()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "profile"))
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--timers-only", action="store_true",
                        help="only the bus-operation timers (no profilers)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"count": args.count}
    with EmbeddedServer() as server:
        # 1. unprofiled baseline, with bus-operation timers
        timer = OpTimer()
        timer.wrap(jetstream.Bus, "publish")
        timer.wrap(jetstream.Bus, "store", "kv compare-and-set (store)")
        timer.wrap(jetstream.Bus, "load", "kv load")
        timer.wrap(jetstream.Bus, "publish_core", "core publish (reply/close)")
        timer.wrap(jetstream.PullConsumer, "fetch", "fetch (pull)")
        timer.wrap(jetstream.Delivery, "ack", "ack")
        configure_runtime(server.url, "prof1")
        cpu0, srv0 = cpu_seconds(os.getpid()), cpu_seconds(server.pid or 0)
        base = asyncio.run(workload(args.count, timer, args.in_flight))
        cpu1, srv1 = cpu_seconds(os.getpid()), cpu_seconds(server.pid or 0)
        done = max(1, base["executions"])
        report["baseline"] = {
            "executions_per_s": base["executions_per_s"],
            "driver_cpu_ms_per_execution": round((cpu1 - cpu0) * 1000 / done, 3),
            "server_cpu_ms_per_execution": round((srv1 - srv0) * 1000 / done, 3),
            "driver_cpu_utilisation": round((cpu1 - cpu0) / base["seconds"], 2),
            "bus_operations": timer.report(done + 20),
            "execution_latency": base["latency"],
        }
        report["in_flight"] = args.in_flight
        if args.timers_only:
            (out / "breakdown.json").write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report, indent=2))
            return 0
        timer.unwrap()  # the profiled runs use the bus as shipped

        # 2. cProfile: own time per function and per layer
        configure_runtime(server.url, "prof2")
        profiler = cProfile.Profile()
        profiler.enable()
        profiled = asyncio.run(workload(args.count, None))
        profiler.disable()
        stats = pstats.Stats(profiler)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(45)
        (out / "cprofile.txt").write_text(text.getvalue())
        layers: dict[str, float] = defaultdict(float)
        total = 0.0
        for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in \
                stats.stats.items():  # type: ignore[attr-defined]
            layers[layer_of(filename, function)] += tottime
            total += tottime
        pdone = max(1, profiled["executions"])
        report["cprofile"] = {
            "executions_per_s_under_profiler": profiled["executions_per_s"],
            "layers_ms_per_execution": {
                k: round(v * 1000 / pdone, 3)
                for k, v in sorted(layers.items(), key=lambda kv: -kv[1])
            },
            "layers_share": {
                k: round(v / total, 3) for k, v in sorted(layers.items(), key=lambda kv: -kv[1])
            },
        }

        # 3. pyinstrument call tree, if installed
        try:
            from pyinstrument import Profiler
        except ImportError:
            report["pyinstrument"] = "not installed: .venv/bin/pip install pyinstrument"
        else:
            configure_runtime(server.url, "prof3")
            profiler3 = Profiler(interval=0.0005, async_mode="disabled")
            profiler3.start()
            asyncio.run(workload(args.count, None))
            profiler3.stop()
            (out / "pyinstrument.txt").write_text(
                profiler3.output_text(unicode=False, color=False, show_all=False))
            (out / "pyinstrument.html").write_text(profiler3.output_html())
            report["pyinstrument"] = str(out / "pyinstrument.txt")
    (out / "breakdown.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
