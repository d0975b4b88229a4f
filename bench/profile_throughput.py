"""Profile the chain throughput benchmark (all in one process) and say where the time goes.

    python bench/profile_throughput.py [--count 1500] [--out bench/results/profile]
    python bench/profile_throughput.py --ab 3 [--flow fanout]     # telemetry off/on A/B

Starts its own nats-server, runs the 3-chunk chain with 100 executions in flight, and writes:

- ``<out>/pyinstrument.txt`` and ``.html``: the call tree (wall time; idle shows as ``select``);
- ``<out>/cprofile.txt``: the top functions by own time;
- ``<out>/breakdown.json``: own CPU time grouped by layer (asyncio machinery, nats-py protocol,
  msgspec, structlog, triggerbus hosts, ...), per execution, plus awaited wall time per bus
  operation (KV compare-and-set, JetStream publish acks, fetches), measured by wrapping
  ``triggerbus.bus.jetstream.Bus`` methods in this process only.

``--ab N`` profiles nothing: it runs the flow N times each with telemetry off and on
(alternated off/on/on/off, so drift cancels), exporting to ``bench/otlp_sink.py`` in its own
process as benchmark 7 does, and reports CPU per execution for the process (including the
final flush) and per thread (event loop, span export, metric reader): the numbers to compare
when changing what tracing costs.

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
    ("opentelemetry SDK", ("opentelemetry/", "google/protobuf")),
    ("triggerbus observability", ("observability/",)),
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


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name (Linux /proc)."""
    import threading

    ticks = os.sysconf("SC_CLK_TCK")
    result: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        parts = fields.rsplit(")", 1)[1].split()
        name = thread.name.split(" ")[0].split("(")[0] if thread.name else "?"
        result[name] = result.get(name, 0.0) + (int(parts[11]) + int(parts[12])) / ticks
    return result


def layer_of(filename: str, function: str) -> str:
    text = f"{filename}:{function}"
    for layer, needles in LAYERS:
        if any(needle in text for needle in needles):
            return layer
    return "other"


_FLOW: Any = flows.chain


async def workload(count: int, timer: OpTimer | None, in_flight: int = 100) -> dict[str, Any]:
    quiet_shutdown_noise({})
    from triggerbus._runtime import close_runtime

    try:
        for value in range(20):
            await _FLOW.async_start(value)
        return await drive(_FLOW.async_start, count=count, in_flight=in_flight,
                           time_limit=120)
    finally:
        await close_runtime()


_LOOP_FACTORY: Any = None


def use_nats_py_publish() -> None:
    """Route ``Bus`` publishes and compare-and-set writes through nats-py's request path."""
    from triggerbus.bus import replies

    async def publish(self: Any, subject: str, payload: bytes, headers: Any) -> Any:
        return await self._nc.jetstream().publish(subject, payload, headers=headers)

    replies.PublishAcks.publish = publish  # type: ignore[method-assign]

    async def store(self: Any, key: str, payload: bytes, *, revision: int | None) -> int:
        from triggerbus.bus._errors import call_retrying

        if revision is None:
            return int(await call_retrying(lambda: self.kv.create(key, payload), key=key))
        return int(await call_retrying(lambda: self.kv.update(key, payload, last=revision),
                                       key=key))

    jetstream.Bus.store = store  # type: ignore[method-assign]

    async def first_message(self: Any, stream: str, subject: str, *,
                            from_sequence: int = 1) -> tuple[int, bytes] | None:
        import nats.js.errors

        from triggerbus.bus._errors import call_retrying
        from triggerbus.errors import BusError

        try:
            raw = await call_retrying(
                lambda: self.js.get_msg(stream, seq=from_sequence, subject=subject, next=True),
                subject=subject)
        except BusError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        return int(raw.seq or 0), raw.data or b""

    jetstream.Bus.first_message = first_message  # type: ignore[method-assign]


def run(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
        return runner.run(coro)


def _sink_env() -> tuple[Any, dict[str, str]]:
    """bench 7's OTLP receiver in a child process, and the OTEL_* that export to it."""
    from bench.telemetry import _Sink

    sink = _Sink().__enter__()
    return sink, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_SERVICE_NAME": "bench",
                  "OTEL_METRIC_EXPORT_INTERVAL": "1000"}


def ab_telemetry(server: Any, rounds: int, count: int, in_flight: int,
                 extra: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """CPU per execution with telemetry off and on, alternated, no profiler."""
    from triggerbus.observability.telemetry import configure_telemetry, shutdown_telemetry

    sink, on_env = _sink_env()
    on_env.update(extra)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        for round_ in range(rounds):
            for index, mode in enumerate(("off", "on", "on", "off") if round_ % 2 == 0
                                         else ("on", "off", "off", "on")):
                configure_telemetry(on_env if mode == "on" else {})
                configure_runtime(server.url, f"ab{round_}x{index}")
                cpu0, threads0 = cpu_seconds(os.getpid()), thread_cpu()
                result = run(workload(count, None, in_flight))
                threads1 = thread_cpu()
                shutdown_telemetry()  # the last batch's export counts too
                cpu1 = cpu_seconds(os.getpid())
                done = max(1, result["executions"])
                runs[mode].append({
                    "executions_per_s": result["executions_per_s"],
                    "process_cpu_ms_per_execution": round((cpu1 - cpu0) * 1000 / done, 3),
                    "thread_cpu_ms_per_execution": {
                        name: round((seconds - threads0.get(name, 0.0)) * 1000 / done, 3)
                        for name, seconds in threads1.items()
                        if seconds - threads0.get(name, 0.0) > 0
                    },
                })
    finally:
        sink.__exit__(None, None, None)

    def summary(mode: str) -> dict[str, Any]:
        cpu = sorted(r["process_cpu_ms_per_execution"] for r in runs[mode])
        eps = sorted(r["executions_per_s"] for r in runs[mode])
        return {"process_cpu_ms_per_execution": cpu, "executions_per_s": eps}

    off, on = summary("off"), summary("on")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "runs": runs,
        "off": off,
        "on": on,
        "cpu_ratio_on_over_off": round(mean(on["process_cpu_ms_per_execution"])
                                       / mean(off["process_cpu_ms_per_execution"]), 3),
        "throughput_ratio_on_over_off": round(mean(on["executions_per_s"])
                                              / mean(off["executions_per_s"]), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "profile"))
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--timers-only", action="store_true",
                        help="only the bus-operation timers (no profilers)")
    parser.add_argument("--telemetry", action="store_true",
                        help="tracing and metrics on, exported over OTLP/HTTP to a loopback "
                             "receiver (the exporter threads' CPU counts in the driver's)")
    parser.add_argument("--no-tree", action="store_true", help="skip the pyinstrument run")
    parser.add_argument("--flow", choices=("chain", "fanout"), default="chain")
    parser.add_argument("--ab", type=int, default=0, metavar="ROUNDS",
                        help="telemetry off/on A/B, ROUNDS x 2 runs each, CPU per execution "
                             "(no profilers)")
    parser.add_argument("--on-env", action="append", default=[], metavar="NAME=VALUE",
                        help="with --ab: more OTEL_* for the 'on' runs "
                             "(e.g. OTEL_METRICS_EXPORTER=none)")
    parser.add_argument("--uvloop", action="store_true",
                        help="run on uvloop's event loop (pip install uvloop)")
    parser.add_argument("--nats-py-publish", action="store_true",
                        help="A/B: publish, compare-and-set and first_message through nats-py's "
                             "js.publish, kv.update and js.get_msg (the path before the lean "
                             "ack inbox), in this process")
    args = parser.parse_args()
    global _FLOW
    _FLOW = getattr(flows, args.flow)
    if args.ab:
        with EmbeddedServer() as server:
            extra = dict(pair.split("=", 1) for pair in args.on_env)
            report = ab_telemetry(server, args.ab, args.count, args.in_flight, extra)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ab.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    if args.nats_py_publish:
        use_nats_py_publish()
    global _LOOP_FACTORY
    if args.uvloop:
        import uvloop

        _LOOP_FACTORY = uvloop.new_event_loop
    if args.telemetry:
        from triggerbus.observability.telemetry import configure_telemetry

        _sink, on_env = _sink_env()  # lives as long as this process
        configure_telemetry(on_env)
    else:
        from triggerbus.observability.telemetry import configure_telemetry

        configure_telemetry({})
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
        threads0 = thread_cpu()
        base = run(workload(args.count, timer, args.in_flight))
        threads1 = thread_cpu()
        cpu1, srv1 = cpu_seconds(os.getpid()), cpu_seconds(server.pid or 0)
        done = max(1, base["executions"])
        report["baseline"] = {
            "executions_per_s": base["executions_per_s"],
            "driver_cpu_ms_per_execution": round((cpu1 - cpu0) * 1000 / done, 3),
            "server_cpu_ms_per_execution": round((srv1 - srv0) * 1000 / done, 3),
            "driver_cpu_utilisation": round((cpu1 - cpu0) / base["seconds"], 2),
            "bus_operations": timer.report(done + 20),
            "thread_cpu_ms_per_execution": {
                name: round((seconds - threads0.get(name, 0.0)) * 1000 / done, 3)
                for name, seconds in threads1.items()
            },
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
        profiled = run(workload(args.count, None))
        profiler.disable()
        stats = pstats.Stats(profiler)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(45)
        (out / "cprofile.txt").write_text(text.getvalue())
        profiler.dump_stats(str(out / "cprofile.pstats"))
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

        if args.no_tree:
            (out / "breakdown.json").write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report, indent=2))
            return 0
        # 3. pyinstrument call tree, if installed
        try:
            from pyinstrument import Profiler
        except ImportError:
            report["pyinstrument"] = "not installed: .venv/bin/pip install pyinstrument"
        else:
            configure_runtime(server.url, "prof3")
            profiler3 = Profiler(interval=0.0005, async_mode="disabled")
            profiler3.start()
            run(workload(args.count, None))
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
