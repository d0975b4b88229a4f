"""The Agently side of the benchmarks: the same flows, in-process, in Agently's own venv.

Run by bench/run.py as ``bench/.venv-agently/bin/python bench/agently_anchor.py KIND ...`` with
its working directory in a temp dir (Agently's default workspace writes ``.agently/`` to the
working directory). Prints one JSON object on stdout. Never imported by the triggerbus venv.

``--workspace default`` is Agently as shipped: every runtime event is appended to a local
SQLite workspace. ``--workspace off`` passes ``workspace=False``: pure in-memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

from agently import TriggerFlow  # noqa: E402

FANOUT_WIDTH = 10


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "n": len(ordered)}


def chain_flow() -> TriggerFlow:
    flow = TriggerFlow(name="bench_chain")

    async def step_a(data):
        return data.value + 1

    async def step_b(data):
        return data.value + 1

    async def step_c(data):
        return data.value + 1

    flow.to(step_a).to(step_b).to(step_c).end()
    return flow


def fanout_flow() -> TriggerFlow:
    flow = TriggerFlow(name="bench_fanout")

    async def prepare(data):
        return data.value

    def make(index: int):
        async def branch(data):
            return data.value + index

        branch.__name__ = f"branch_{index}"
        return branch

    async def join(data):
        return sum(data.value.values())

    flow.to(prepare).batch(*[make(i) for i in range(FANOUT_WIDTH)]).to(join).end()
    return flow


def stream_flow() -> TriggerFlow:
    flow = TriggerFlow(name="bench_stream")

    async def produce(data):
        count = int(data.value)
        for index in range(count):
            await data.async_put_into_stream(index)
        await data.async_stop_stream()
        return count

    flow.to(produce).end()
    return flow


async def _throughput(flow: TriggerFlow, expected, count: int, in_flight: int, limit: float,
                      workspace) -> dict:
    await flow.async_start(0, workspace=workspace)  # warm-up
    next_index = 0
    done = 0
    wrong = 0
    deadline = time.perf_counter() + limit

    async def runner() -> None:
        nonlocal next_index, done, wrong
        while next_index < count and time.perf_counter() < deadline:
            value = next_index
            next_index += 1
            result = await flow.async_start(value, workspace=workspace)
            done += 1
            if result.get("$final_result") != expected(value):
                wrong += 1

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return {"executions": done, "wrong_results": wrong, "seconds": round(elapsed, 3),
            "executions_per_s": round(done / elapsed, 1)}


async def _latency(flow: TriggerFlow, count: int, workspace) -> dict:
    await flow.async_start(0, workspace=workspace)
    samples = []
    for value in range(count):
        started = time.perf_counter()
        await flow.async_start(value, workspace=workspace)
        samples.append(time.perf_counter() - started)
    return _percentiles(samples)


async def _stream(count: int, workspace) -> dict:
    flow = stream_flow()
    started = time.perf_counter()
    first = last = None
    received = 0
    async for _item in flow.get_async_runtime_stream(count, timeout=30, workspace=workspace):
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        received += 1
    elapsed = (last or time.perf_counter()) - started
    return {
        "items": received,
        "seconds": round(elapsed, 3),
        "items_per_s": round(received / elapsed, 1) if elapsed > 0 else None,
        "first_item_ms": round((first - started) * 1000, 3) if first else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["chain", "fanout", "stream", "latency"])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--workspace", choices=["default", "off"], default="off")
    args = parser.parse_args()
    workspace = None if args.workspace == "default" else False
    if args.kind == "chain":
        result = asyncio.run(_throughput(chain_flow(), lambda v: v + 3, args.count,
                                         args.in_flight, args.time_limit, workspace))
    elif args.kind == "fanout":
        expected = lambda v: sum(v + i for i in range(FANOUT_WIDTH))  # noqa: E731
        result = asyncio.run(_throughput(fanout_flow(), expected, args.count, args.in_flight,
                                         args.time_limit, workspace))
    elif args.kind == "latency":
        result = asyncio.run(_latency(chain_flow(), args.count, workspace))
    else:
        result = asyncio.run(_stream(args.count, workspace))
    import agently

    result["agently_version"] = getattr(agently, "__version__", None) or _version()
    result["workspace"] = args.workspace
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("agently")
    except Exception:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
