"""The benchmarks, each run as a child process of bench/run.py with its anchors.

``python -m bench.benchmarks NAME --url URL --prefix P [--quick] [--agently-python PATH]``
prints one JSON object (``rows`` for the table, ``details`` for the record) on its last stdout
line. Each variant gets its own event loop (so its own triggerbus runtime) and its own subject
prefix, derived from ``--prefix``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from bench import bare_host, flows
from bench._common import (
    REPO,
    configure_runtime,
    cpu_seconds,
    drive,
    jetstream_writes,
    percentiles,
    quiet_shutdown_noise,
    workers,
)

IN_FLIGHT = 100
NOISE: dict[str, int] = {}


@dataclass(frozen=True)
class Sizes:
    rr: int
    hop: int
    chain: int
    fanout: int
    stream_items: int
    agently_sqlite_chain: int
    agently_sqlite_fanout: int
    agently_sqlite_stream: int
    scaling_window: float
    time_limit: float


QUICK = Sizes(rr=500, hop=100, chain=300, fanout=100, stream_items=2_000,
              agently_sqlite_chain=100, agently_sqlite_fanout=30, agently_sqlite_stream=1_000,
              scaling_window=3.0, time_limit=60.0)
FULL = Sizes(rr=2_000, hop=400, chain=2_000, fanout=500, stream_items=10_000,
             agently_sqlite_chain=300, agently_sqlite_fanout=100, agently_sqlite_stream=10_000,
             scaling_window=8.0, time_limit=150.0)


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url: str = args.url
        self.base_prefix: str = args.prefix
        self.sizes = QUICK if args.quick else FULL
        self.agently_python: str | None = args.agently_python
        self.server_pid: int | None = args.server_pid
        self._n = 0

    def prefix(self) -> str:
        self._n += 1
        return f"{self.base_prefix}v{self._n}"


def row(bench: str, measurement: str, value: float | None, unit: str, *,
        anchor: str | None = None, anchor_value: float | None = None,
        ratio: float | None = None, target: str | None = None,
        passed: bool | None = None, note: str | None = None) -> dict[str, Any]:
    if ratio is None and value is not None and anchor_value:
        ratio = value / anchor_value
    return {
        "bench": bench, "measurement": measurement, "value": value, "unit": unit,
        "anchor": anchor, "anchor_value": anchor_value,
        "ratio": None if ratio is None else round(ratio, 3),
        "target": target, "pass": passed, "note": note,
    }


def in_loop(coro_factory: Callable[[], Any]) -> Any:
    """Run one variant on a fresh event loop, closing its triggerbus runtime at the end."""

    async def main() -> Any:
        quiet_shutdown_noise(NOISE)
        from triggerbus._runtime import close_runtime

        try:
            return await coro_factory()
        finally:
            await close_runtime()

    return asyncio.run(main())


# --- anchors -----------------------------------------------------------------------------------


def agently(ctx: Context, kind: str, count: int, *, workspace: str = "off",
            time_limit: float | None = None) -> dict[str, Any] | None:
    """Run bench/agently_anchor.py in Agently's venv; None when that venv is unavailable."""
    if not ctx.agently_python:
        return None
    limit = time_limit or ctx.sizes.time_limit
    with tempfile.TemporaryDirectory(prefix="bench-agently-") as cwd:
        completed = subprocess.run(
            [ctx.agently_python, str(REPO / "bench" / "agently_anchor.py"), kind,
             "--count", str(count), "--in-flight", str(IN_FLIGHT), "--workspace", workspace,
             "--time-limit", str(limit)],
            cwd=cwd, capture_output=True, text=True, timeout=limit + 60,
        )
    if completed.returncode != 0:
        return {"error": completed.stderr[-2000:]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


async def raw_jetstream(url: str, prefix: str, count: int, *, window: int,
                        consume: bool = True) -> dict[str, Any]:
    """Publish ``count`` messages (awaited acks, ``window`` outstanding, with Nats-Msg-Id like
    triggerbus) into a file-backed work-queue stream while a pull consumer fetches and acks
    them. Returns msgs/s for the whole publish+consume."""
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream()
    stream = f"{prefix}_raw"
    await js.add_stream(StreamConfig(
        name=stream, subjects=[f"{prefix}.raw.>"], storage=StorageType.FILE,
        retention=RetentionPolicy.WORK_QUEUE if consume else RetentionPolicy.LIMITS,
        duplicate_window=120.0,
    ))
    payload = b'{"kind":"chunk_completed","id":"0123456789abcdef0123456789abcdef:1:done",' \
              b'"execution_id":"0123456789abcdef0123456789abcdef","step":1,"result":4}'
    consumed = 0
    sub = None
    if consume:
        sub = await js.pull_subscribe(f"{prefix}.raw.>", durable="raw", stream=stream)
    permits = asyncio.Semaphore(window)

    async def publish_one(index: int) -> None:
        try:
            await js.publish(f"{prefix}.raw.{index % 100}", payload,
                             headers={"Nats-Msg-Id": f"raw:{index}"})
        finally:
            permits.release()

    async def producer() -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(count):
                await permits.acquire()
                group.create_task(publish_one(index))

    async def consumer() -> None:
        nonlocal consumed
        assert sub is not None
        while consumed < count:
            try:
                msgs = await sub.fetch(100, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
            consumed += len(msgs)

    started = time.perf_counter()
    try:
        async with asyncio.timeout(120):
            if consume:
                await asyncio.gather(producer(), consumer())
            else:
                await producer()
    finally:
        elapsed = time.perf_counter() - started
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.drain()
    return {"messages": count, "window": window, "consumed": consumed,
            "seconds": round(elapsed, 3), "msgs_per_s": round(count / elapsed, 1)}


async def serial_publish(url: str, prefix: str, count: int) -> dict[str, Any]:
    """One awaited JetStream publish at a time: what an awaited put_into_stream can hope for."""
    nc = await nats.connect(url, name="bench-raw-serial")
    js = nc.jetstream()
    stream = f"{prefix}_rawser"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.rawser.>"],
                                     storage=StorageType.FILE, duplicate_window=120.0))
    started = time.perf_counter()
    try:
        for index in range(count):
            await js.publish(f"{prefix}.rawser.x", b'{"kind":"item","value":%d}' % index,
                             headers={"Nats-Msg-Id": f"s:{index}"})
    finally:
        elapsed = time.perf_counter() - started
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.drain()
    return {"messages": count, "seconds": round(elapsed, 3),
            "msgs_per_s": round(count / elapsed, 1)}


@contextlib.asynccontextmanager
async def helper_process(module: str, *args: str) -> AsyncIterator[None]:
    """``python -m module args`` from the repository, once it prints ``ready``; stopped after."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=str(REPO),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = await process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def responder(url: str, prefix: str) -> AsyncIterator[Callable[[], Awaitable[float]]]:
    """A responder in another process; yields a function timing one request/reply to it."""
    subject = f"{prefix}.rr"
    async with helper_process("bench.responder", url, subject):
        nc = await nats.connect(url, name="bench-requester")
        payload = b"x" * 128

        async def round_trip() -> float:
            began = time.perf_counter()
            await nc.request(subject, payload, timeout=5)
            return time.perf_counter() - began

        for _ in range(100):
            await round_trip()
        try:
            yield round_trip
        finally:
            await nc.drain()


BARE_COMPLETION = b"c" * 290
"""About the size of a timed_chain chunk's completion."""


async def bare_step(url: str, prefix: str, executions: int,
                    round_trip: Callable[[], Awaitable[float]], *,
                    mode: str = "three") -> dict[str, Any]:
    """The floor of a step: its three bus operations by nats-py alone, between two processes.

    This process plays the worker (it receives an invocation by standing pull, publishes a
    completion into the mailbox stream and, once stored, acks the invocation);
    ``bench.bare_host`` plays the execution host (it receives the completion, writes a snapshot
    by compare-and-set, publishes the next invocation, acks). A step is one invocation's
    arrival to the next one's, as a triggerbus step is one chunk's start to the next one's;
    executions of three invocations are timed one at a time with request/replies between them,
    as ``timed_latency`` does, so both see the same idle gaps.

    ``mode`` ``atomic``: the host writes the snapshot and the invocation as one atomic batch
    into one stream holding both: a step of two durable operations. ``core``: the completion
    goes to the host by core NATS request, answered once the snapshot and the invocation are
    stored, and the invocation is acked after the answer: the floor of a chunk outcome handed
    to an execution host in another process (docs/design.md, "Hosts").
    """
    atomic = mode == "atomic"
    nc = await nats.connect(url, name="bench-bare-worker")
    js = nc.jetstream()
    file_stream = {"storage": StorageType.FILE, "duplicate_window": 120.0}
    streams = {
        f"{prefix}_bare_mail": StreamConfig(subjects=[f"{prefix}.bare.mail"],
                                            retention=RetentionPolicy.WORK_QUEUE, **file_stream),
        f"{prefix}_bare_run": StreamConfig(subjects=[f"{prefix}.bare.run"],
                                           retention=RetentionPolicy.WORK_QUEUE, **file_stream),
        f"{prefix}_bare_kv": StreamConfig(subjects=[f"{prefix}.bare.kv.>"],
                                          max_msgs_per_subject=1, **file_stream),
    }
    run = f"{prefix}.bare.run"
    if atomic:
        # A batch goes into one stream: it holds the snapshots and the invocations (the worker's
        # consumer filters the latter), under the run stream's name the worker pulls from.
        del streams[f"{prefix}_bare_run"], streams[f"{prefix}_bare_kv"]
        run = f"{prefix}.bare.ex.run"
        streams[f"{prefix}_bare_run"] = StreamConfig(
            subjects=[f"{prefix}.bare.ex.>"], allow_atomic=True,
            retention=RetentionPolicy.WORK_QUEUE, **file_stream,
        )
    for name, config in streams.items():
        await js.add_stream(config, name=name)
    for stream, durable in ((f"{prefix}_bare_mail", "host"), (f"{prefix}_bare_run", "worker")):
        await js.add_consumer(stream, ConsumerConfig(durable_name=durable,
                                                     ack_policy=AckPolicy.EXPLICIT,
                                                     filter_subject=run if durable == "worker"
                                                     else None))  # fmt: skip
    arrivals: asyncio.Queue[tuple[float, Msg]] = asyncio.Queue()

    async def arrived(msg: Msg) -> None:
        arrivals.put_nowait((time.perf_counter(), msg))

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=arrived)
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{prefix}_bare_run.worker",
                     json.dumps({"batch": bare_host.PULL_BATCH,
                                 "expires": bare_host.PULL_EXPIRES_NS}).encode(),
                     reply=inbox)
    completions = 0

    async def complete() -> None:
        nonlocal completions
        completions += 1
        if mode == "core":
            await nc.request(f"{prefix}.bare.outcome", BARE_COMPLETION, timeout=10)
            return
        await js.publish(f"{prefix}.bare.mail", BARE_COMPLETION,
                         headers={"Nats-Msg-Id": f"done:{completions}"})

    steps: list[float] = []
    round_trips: list[float] = []
    try:
        async with helper_process("bench.bare_host", url, prefix, mode):
            for index in range(10 + executions):
                stamps: list[float] = []
                async with asyncio.timeout(30):
                    await complete()  # the start: the host answers with the first invocation
                    for position in range(3):
                        at, msg = await arrivals.get()
                        stamps.append(at)
                        if position < 2:
                            await complete()
                        await msg.ack()
                if index < 10:
                    continue  # warm-up, as one_at_a_time's
                steps.extend((stamps[1] - stamps[0], stamps[2] - stamps[1]))
                await round_trip()  # wakes the responder, idle meanwhile
                round_trips.extend([await round_trip(), await round_trip()])
    finally:
        for name in streams:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.drain()
    return {"step": percentiles(steps), "round_trip": percentiles(round_trips)}


async def request_reply(url: str, prefix: str, count: int) -> dict[str, Any]:
    """nats-py request/reply round trips to a responder in another process."""
    async with responder(url, prefix) as round_trip:
        return percentiles([await round_trip() for _ in range(count)])


# --- triggerbus runs ---------------------------------------------------------------------------


async def one_at_a_time(flow: Any, count: int) -> AsyncIterator[tuple[int, float, float, Any]]:
    """Executions of ``flow`` one after another, after a warm-up, for at most two minutes:
    (value, monotonic time at the call, at the result, the result)."""
    for value in range(10):
        await flow.async_start(value)
    deadline = time.perf_counter() + 120
    for value in range(count):
        if time.perf_counter() > deadline:
            return
        began = time.monotonic()
        async with asyncio.timeout(30):
            result = await flow.async_start(value)
        yield value, began, time.monotonic(), result


async def sequential_latency(flow: Any, count: int, expected: Callable[[int], Any]) -> dict:
    samples: list[float] = []
    wrong = 0
    async for value, began, ended, result in one_at_a_time(flow, count):
        samples.append(ended - began)
        wrong += result.get("$final_result") != expected(value)
    return {**percentiles(samples), "wrong_results": wrong}


async def timed_latency(flow: Any, count: int,
                        round_trip: Callable[[], Awaitable[float]] | None = None) -> dict:
    """One execution at a time of ``flows.timed_chain``: e2e, and its parts from the stamps.

    A step is one chunk's start to the next chunk's start: the completion, the snapshot and the
    next invocation, all durable, plus both hosts' work. The start (the call to the first chunk)
    and the close (the last chunk to the returned result) are reported apart. With
    ``round_trip``, request/replies are timed between executions (the first of each three,
    which wakes an idle responder, is not kept): the anchor sampled across the same minutes as
    the chain, so a host that gets slower or faster moves both alike.
    """
    e2e: list[float] = []
    steps: list[float] = []
    starts: list[float] = []
    closes: list[float] = []
    round_trips: list[float] = []
    wrong = 0
    async for _, began, ended, result in one_at_a_time(flow, count):
        if round_trip is not None:
            await round_trip()  # wakes the responder, idle during the execution
            round_trips.extend([await round_trip(), await round_trip()])
        stamps = result.get("$final_result")
        if not (isinstance(stamps, list) and len(stamps) == 3):
            wrong += 1
            continue
        e2e.append(ended - began)
        steps.extend((stamps[1] - stamps[0], stamps[2] - stamps[1]))
        starts.append(stamps[0] - began)
        closes.append(ended - stamps[2])
    return {**percentiles(e2e), "wrong_results": wrong, "step": percentiles(steps),
            "start": percentiles(starts), "close": percentiles(closes),
            "round_trip": percentiles(round_trips)}


def throughput_run(ctx: Context, prefix: str, flow: Any, count: int,
                         expected: Callable[[int], Any], *, worker_chunks: bool,
                         other_pids: Callable[[], dict[str, int]] | None = None) -> dict:
    """Drive ``count`` executions, IN_FLIGHT at a time; count JetStream writes and CPU.

    ``other_pids`` names more processes whose CPU counts (asked after the warm-up).
    """

    async def body(worker_pids: list[int]) -> dict:
        for value in range(20):  # warm-up: consumers bound, caches hot
            await flow.async_start(value)
        nc = await nats.connect(ctx.url)
        writes_before = await jetstream_writes(nc, prefix)
        pids = {"driver": os.getpid(),
                **({"nats-server": ctx.server_pid} if ctx.server_pid else {}),
                **{f"worker{i}": pid for i, pid in enumerate(worker_pids)},
                **(other_pids() if other_pids is not None else {})}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        result = await drive(
            flow.async_start, count=count, in_flight=IN_FLIGHT, time_limit=ctx.sizes.time_limit,
            check=lambda i, r: r.get("$final_result") == expected(i),
        )
        cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        writes_after = await jetstream_writes(nc, prefix)
        await nc.drain()
        done = max(1, result["executions"])
        writes = writes_after["total"] - writes_before["total"]
        result["jetstream_writes"] = writes
        result["writes_per_execution"] = round(writes / done, 2)
        result["writes_per_execution_by_stream"] = {
            name: round((count - writes_before.get(name, 0)) / done, 2)
            for name, count in writes_after.items() if name != "total"
        }
        result["cpu_ms_per_execution"] = {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / done, 3) for name in pids
        }
        result["cpu_utilisation"] = {
            name: round((cpu_after[name] - cpu_before[name]) / result["seconds"], 2)
            for name in pids
        }
        return result

    async def run() -> dict:
        if not worker_chunks:
            return await body([])
        async with workers(1, flow_variable(flow), url=ctx.url, prefix=prefix) as started:
            return await body([w.pid for w in started])

    try:
        return in_loop(run)
    finally:
        asyncio.run(drop_prefix(ctx.url, prefix))


async def drop_prefix(url: str, prefix: str) -> None:
    """Delete a finished run's streams and bucket. Left behind, every run's streams (their
    de-duplication windows, their files) are the server's background work during the runs
    that follow, and later runs measured slower than earlier ones."""
    nc = await nats.connect(url, name="bench-cleanup")
    try:
        js = nc.jetstream()
        for name in [info.config.name for info in await js.streams_info()]:
            if name and (name.startswith(f"{prefix}_") or name.startswith(f"KV_{prefix}_")):
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
    finally:
        await nc.drain()


def flow_variable(flow: Any) -> str:
    for name in ("chain", "timed_chain", "single", "fanout", "stream", "io_hot", "cpu_hot",
                 "waiting"):
        if getattr(flows, name) is flow:
            return name
    raise ValueError(flow)


def configure_for(ctx: Context, *, worker_chunks: bool) -> str:
    prefix = ctx.prefix()
    configure_runtime(ctx.url, prefix,
                      local_chunks=frozenset() if worker_chunks else None)
    return prefix


# --- 1. hop cost -------------------------------------------------------------------------------


HOP_PLACEMENTS = {
    "worker_hosted": "chunks and executions in a worker process, the driver a client",
    "worker": "chunks in a worker process, executions in the driver",
    "in_process": "all in one process",
}
"""Benchmark 1's placements. The target row is the first: where ``triggerbus worker`` (and
any process with the default settings) puts a flow's actors, side by side, so that a chunk's
outcome is handed to its execution host in process (actors/hand_off.py). In the second the
outcome crosses processes through the mailbox, one durable operation more per step."""


def bare_row(label: str, result: dict, what: str) -> dict:
    """A bare step's row: its p50 step against the request/replies timed between its runs."""
    step = result["step"]
    return row("1 hop", label, step["p50_ms"], "ms", anchor="req/reply p50 between them",
               anchor_value=result["round_trip"]["p50_ms"],
               note=f"p50 of {step['n']} steps, p99 {step['p99_ms']} ms; {what}")


def bench_hop(ctx: Context) -> dict:
    s = ctx.sizes
    details: dict[str, Any] = {}
    details["request_reply"] = asyncio.run(request_reply(ctx.url, ctx.prefix(), s.rr))
    rtt = details["request_reply"]["p50_ms"]
    rtt99 = details["request_reply"]["p99_ms"]

    async def measure_bare(prefix: str, mode: str = "three") -> dict:
        async with responder(ctx.url, prefix) as round_trip:
            return await bare_step(ctx.url, prefix, s.hop, round_trip, mode=mode)

    details["bare_step"] = bare = asyncio.run(measure_bare(ctx.prefix()))
    details["bare_step_atomic"] = atomic = asyncio.run(measure_bare(ctx.prefix(), "atomic"))
    details["bare_step_core"] = core = asyncio.run(measure_bare(ctx.prefix(), "core"))

    for placement in HOP_PLACEMENTS:
        remote = placement != "in_process"
        hosted = placement == "worker_hosted"
        for name, flow in (("chain", flows.timed_chain), ("single", flows.single)):
            prefix = ctx.prefix()
            # The driver hosts the executions unless the worker does; chunks run in the worker
            # unless everything is in one process.
            configure_runtime(ctx.url, prefix, local_chunks=frozenset() if remote else None,
                              host_executions=not hosted)  # fmt: skip

            async def measure(flow=flow, prefix=prefix) -> dict:
                if flow is flows.timed_chain:
                    async with responder(ctx.url, prefix) as round_trip:
                        return await timed_latency(flow, s.hop, round_trip)
                return await sequential_latency(flow, s.hop, lambda v: v + 1)

            async def run(flow=flow, remote=remote, hosted=hosted, prefix=prefix,
                          measure=measure) -> dict:  # fmt: skip
                if not remote:
                    return await measure()
                async with workers(1, flow_variable(flow), url=ctx.url, prefix=prefix,
                                   no_executions=not hosted):  # fmt: skip
                    return await measure()

            details[f"{name}_{placement}"] = in_loop(run)
    rows = [row("1 hop", "nats request/reply p50 / p99 (2 processes)", rtt, "ms",
                note=f"p99 {rtt99} ms"),
            bare_row("bare step: a step's three bus operations by nats-py alone, 2 processes",
                     bare, "completion stored and delivered, snapshot compare-and-set, "
                     "invocation stored and delivered; the floor under CAS-then-publish"),
            bare_row("bare step of two bus operations: compare-and-set and invocation as one "
                     "atomic batch into one stream (nats-server 2.12+), information",
                     atomic, "what dropping a durable operation from a step would give"),
            bare_row("bare step with the completion sent by core NATS request, answered once "
                     "the compare-and-set and the invocation are stored, information",
                     core, "the floor of a chunk outcome handed to an execution host in "
                     "another process (not built)")]  # fmt: skip
    for placement, label in HOP_PLACEMENTS.items():
        chain = details[f"chain_{placement}"]
        single = details[f"single_{placement}"]
        step = chain["step"]
        near = chain["round_trip"]["p50_ms"]
        target = placement == "worker_hosted"
        rows.append(row("1 hop", f"3-chunk chain e2e p50 ({label})", chain["p50_ms"], "ms",
                        note=f"p99 {chain['p99_ms']} ms"))
        rows.append(row("1 hop", f"nats request/reply p50 between the executions ({label})",
                        near, "ms", note=f"p99 {chain['round_trip']['p99_ms']} ms"))
        rows.append(row("1 hop", f"per step: a chunk's start to the next one's ({label})",
                        step["p50_ms"], "ms", anchor="req/reply p50 between them",
                        anchor_value=near,
                        note=f"p50 of {step['n']} steps, p99 {step['p99_ms']} ms; "
                             f"{step['p50_ms'] / rtt:.2f}x the req/reply run before all",
                        target="<= 3x" if target else None,
                        passed=(step["p50_ms"] <= 3 * near) if target else None))  # fmt: skip
        rows.append(row("1 hop", f"per step against the bare step: what triggerbus adds ({label})",
                        step["p50_ms"], "ms", anchor="bare step p50",
                        anchor_value=bare["step"]["p50_ms"]))
        rows.append(row("1 hop", f"start: the call to the first chunk ({label})",
                        chain["start"]["p50_ms"], "ms", anchor="req/reply p50",
                        anchor_value=rtt))
        rows.append(row("1 hop", f"close: the last chunk to the returned result ({label})",
                        chain["close"]["p50_ms"], "ms", anchor="req/reply p50",
                        anchor_value=rtt))
        rows.append(row("1 hop", f"e2e/3, start and close spread over the steps ({label})",
                        round(chain["p50_ms"] / 3, 3), "ms", anchor="req/reply p50",
                        anchor_value=rtt))
        rows.append(row("1 hop", f"marginal step = (chain-single)/2 ({label})",
                        round((chain["p50_ms"] - single["p50_ms"]) / 2, 3), "ms",
                        anchor="req/reply p50", anchor_value=rtt))
    info = agently(ctx, "latency", min(s.hop, 100))
    if info and "p50_ms" in info:
        details["agently_latency"] = info
        rows.append(row("1 hop", "Agently 3-chunk chain e2e p50 (info)", info["p50_ms"], "ms",
                        note="Agently's auto-close monitor polls every >= 50 ms"))
    return {"rows": rows, "details": details}


# --- 2 and 3. throughput -----------------------------------------------------------------------


def bench_throughput_like(ctx: Context, *, bench: str, flow: Any, count: int, steps: int,
                          expected: Callable[[int], Any], kind: str,
                          sqlite_count: int) -> dict:
    details: dict[str, Any] = {}
    for placement, remote in (("in_process", False), ("worker", True)):
        prefix = configure_for(ctx, worker_chunks=remote)
        details[f"triggerbus_{placement}"] = throughput_run(
            ctx, prefix, flow, count, expected, worker_chunks=remote)
    details["agently_memory"] = agently(ctx, kind, count, workspace="off")
    details["agently_sqlite"] = agently(ctx, kind, sqlite_count, workspace="default",
                                        time_limit=min(ctx.sizes.time_limit, 40.0))
    local = details["triggerbus_in_process"]
    writes = int(local["jetstream_writes"]) or count * 10
    details["raw_jetstream"] = asyncio.run(raw_jetstream(ctx.url, ctx.prefix(), writes,
                                                          window=IN_FLIGHT))
    raw = details["raw_jetstream"]
    raw_exec = raw["msgs_per_s"] / max(local["writes_per_execution"], 1)
    agm = details["agently_memory"] or {}
    ags = details["agently_sqlite"] or {}
    rows = []
    for placement, label in (("in_process", "1 process"), ("worker", "driver + 1 worker")):
        r = details[f"triggerbus_{placement}"]
        eps = r["executions_per_s"]
        note = (f"{r['executions']} execs, {r['writes_per_execution']} JetStream writes/exec, "
                f"steps/s {round(eps * steps, 1)}")
        if r["wrong_results"] or r["errors"]:
            note += f", wrong {r['wrong_results']}, errors {r['errors'][:2]}"
        rows.append(row(bench, f"triggerbus executions/s ({label})", eps, "exec/s",
                        anchor="Agently in-memory", anchor_value=agm.get("executions_per_s"),
                        target=">= 2x", passed=(eps >= 2 * agm["executions_per_s"])
                        if agm.get("executions_per_s") else None, note=note))
    if ags.get("executions_per_s"):
        eps = local["executions_per_s"]
        rows.append(row(bench, "triggerbus executions/s (1 process)", eps, "exec/s",
                        anchor="Agently default (SQLite workspace)",
                        anchor_value=ags["executions_per_s"],
                        note=f"Agently ran {ags.get('executions')} executions"))
    rows.append(row(bench, "triggerbus executions/s (1 process)", local["executions_per_s"],
                    "exec/s", anchor="raw JetStream pub+consume, same writes/exec",
                    anchor_value=round(raw_exec, 1),
                    note=f"raw {raw['msgs_per_s']} msgs/s for {raw['messages']} msgs"))
    return {"rows": rows, "details": details}


def bench_throughput(ctx: Context) -> dict:
    return bench_throughput_like(ctx, bench="2 chain", flow=flows.chain,
                                 count=ctx.sizes.chain, steps=3, expected=lambda v: v + 3,
                                 kind="chain", sqlite_count=ctx.sizes.agently_sqlite_chain)


def bench_fanout(ctx: Context) -> dict:
    width = flows.FANOUT_WIDTH
    return bench_throughput_like(ctx, bench="3 fan-out", flow=flows.fanout,
                                 count=ctx.sizes.fanout, steps=width + 2,
                                 expected=lambda v: sum(v + i for i in range(width)),
                                 kind="fanout", sqlite_count=ctx.sizes.agently_sqlite_fanout)


# --- 4. runtime stream -------------------------------------------------------------------------


async def read_stream(count: int) -> dict:
    began = time.perf_counter()
    first = last = None
    received = 0
    async with asyncio.timeout(180):
        async for item in flows.stream.get_async_runtime_stream(count, timeout=30):
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            if item != received:
                raise AssertionError(f"item {received} out of order: {item!r}")
            received += 1
    elapsed = (last or time.perf_counter()) - began
    steady = (last - first) if (first and last and last > first) else None
    return {
        "items": received,
        "seconds": round(elapsed, 3),
        "items_per_s": round(received / elapsed, 1) if elapsed else None,
        "steady_items_per_s": round((received - 1) / steady, 1) if steady else None,
        "first_item_ms": round((first - began) * 1000, 3) if first else None,
    }


def bench_stream(ctx: Context) -> dict:
    n = ctx.sizes.stream_items
    details: dict[str, Any] = {}
    for placement, remote in (("worker", True), ("in_process", False)):
        prefix = configure_for(ctx, worker_chunks=remote)

        async def run() -> dict:
            await read_stream(10)  # warm-up: consumers bound
            return await read_stream(n)

        async def run_remote(prefix=prefix) -> dict:
            async with workers(1, "stream", url=ctx.url, prefix=prefix):
                await read_stream(10)
                return await read_stream(n)

        details[f"triggerbus_{placement}"] = in_loop(run_remote if remote else run)
    details["agently_memory"] = agently(ctx, "stream", n, workspace="off")
    details["agently_sqlite"] = agently(ctx, "stream", min(n, ctx.sizes.agently_sqlite_stream),
                                        workspace="default")
    details["raw_serial_publish"] = asyncio.run(serial_publish(ctx.url, ctx.prefix(), n))
    details["raw_windowed_publish"] = asyncio.run(
        raw_jetstream(ctx.url, ctx.prefix(), n, window=IN_FLIGHT, consume=False))
    remote = details["triggerbus_worker"]
    local = details["triggerbus_in_process"]
    agm = details["agently_memory"] or {}
    ags = details["agently_sqlite"] or {}
    rows = [
        row("4 stream", "items/s at a reader in another process", remote["items_per_s"],
            "items/s", anchor="Agently in-memory stream", anchor_value=agm.get("items_per_s"),
            target=">= 1x", passed=(remote["items_per_s"] >= agm["items_per_s"])
            if agm.get("items_per_s") else None,
            note=f"{remote['items']} items; producer in a worker"),
        row("4 stream", "items/s (all in one process)", local["items_per_s"], "items/s",
            anchor="Agently in-memory stream", anchor_value=agm.get("items_per_s")),
        row("4 stream", "items/s at a reader in another process", remote["items_per_s"],
            "items/s", anchor="raw JetStream serial awaited publish",
            anchor_value=details["raw_serial_publish"]["msgs_per_s"]),
        row("4 stream", "items/s at a reader in another process", remote["items_per_s"],
            "items/s", anchor="raw JetStream windowed publish (100)",
            anchor_value=details["raw_windowed_publish"]["msgs_per_s"]),
        row("4 stream", "time to first item (reader in another process)",
            remote["first_item_ms"], "ms", anchor="Agently in-memory",
            anchor_value=agm.get("first_item_ms"), note="includes starting the execution"),
    ]
    if ags.get("items_per_s"):
        rows.append(row("4 stream", "items/s at a reader in another process",
                        remote["items_per_s"], "items/s",
                        anchor="Agently default (SQLite workspace)",
                        anchor_value=ags["items_per_s"], note=f"Agently {ags['items']} items"))
    return {"rows": rows, "details": details}


# --- 5. hot chunk scaling ----------------------------------------------------------------------

SCALING_WORKER_CONCURRENCY = 1


def bench_scaling(ctx: Context) -> dict:
    window = ctx.sizes.scaling_window
    details: dict[str, Any] = {}
    rows = []
    for variable, _chunk, label, ideal_per_worker in (
        ("io_hot", "io_wait", "I/O 20 ms", SCALING_WORKER_CONCURRENCY / flows.IO_WAIT_SECONDS),
        ("cpu_hot", "cpu_burn", "CPU 5 ms", SCALING_WORKER_CONCURRENCY / flows.CPU_BURN_SECONDS),
    ):
        flow = getattr(flows, variable)
        per_k: dict[int, dict] = {}
        for k in (1, 2, 4):
            prefix = configure_for(ctx, worker_chunks=True)

            async def run(k=k, prefix=prefix, variable=variable, flow=flow) -> dict:
                async with workers(k, variable, url=ctx.url, prefix=prefix,
                                   concurrency=SCALING_WORKER_CONCURRENCY) as started:
                    in_flight = 8 * k * SCALING_WORKER_CONCURRENCY
                    await drive(flow.async_start, count=4 * in_flight, in_flight=in_flight,
                                time_limit=30)  # warm-up
                    pids = {"driver": os.getpid(), "server": ctx.server_pid or 0,
                            **{f"worker{i}": w.pid for i, w in enumerate(started)}}
                    before = {n: cpu_seconds(p) for n, p in pids.items() if p}
                    result = await drive(flow.async_start, count=10**9, in_flight=in_flight,
                                         time_limit=window)
                    after = {n: cpu_seconds(p) for n, p in pids.items() if p}
                    result["cpu_utilisation"] = {
                        n: round((after[n] - before[n]) / result["seconds"], 2) for n in before
                    }
                    return result

            per_k[k] = in_loop(run)
        details[variable] = per_k
        base = per_k[1]["executions_per_s"]
        for k in (1, 2, 4):
            eps = per_k[k]["executions_per_s"]
            efficiency = eps / (k * base) if base else None
            util = per_k[k]["cpu_utilisation"]
            rows.append(row(
                "5 scaling", f"{label} chunk, {k} worker(s)", eps, "exec/s",
                anchor=f"{k} x 1-worker rate", anchor_value=round(k * base, 1),
                ratio=efficiency,
                note=f"ideal {round(k * ideal_per_worker)}/s; CPU driver {util.get('driver')}, "
                     f"server {util.get('server')}, workers "
                     f"{sum(v for n, v in util.items() if n.startswith('worker')):.2f}",
            ))
        scale = per_k[4]["executions_per_s"] / base if base else 0.0
        rows.append(row("5 scaling", f"{label} chunk, 1 -> 4 workers", round(scale, 2), "x",
                        target=">= 3.5x" if variable == "io_hot" else None,
                        passed=(scale >= 3.5) if variable == "io_hot" else None,
                        note=f"worker --concurrency {SCALING_WORKER_CONCURRENCY}; "
                             "2 cores shared by driver, server and workers"))
    return {"rows": rows, "details": details}


# --- 6. waiting executions --------------------------------------------------------------------

AGENTLY_BYTES_PER_PAUSED = 50 * 1024
"""The issue's anchor: Agently holds about 50 KB per paused execution in its process."""


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_waiting(ctx: Context) -> dict:
    """Pause many executions in pause_for, measure what the hosting worker holds, resume some."""
    paused_count, resumed_count = (1_000, 200) if ctx.sizes is QUICK else (10_000, 1_000)
    prefix = ctx.prefix()
    # The driver is a pure client: the worker hosts the chunks and the execution actors.
    configure_runtime(ctx.url, prefix, local_chunks=frozenset(), host_executions=False)

    async def run() -> dict:
        async with workers(1, "waiting", url=ctx.url, prefix=prefix, no_executions=False) as (
            worker,
        ):
            warm = flows.waiting.create_execution(auto_close=False)
            await warm.async_start(-1)
            await warm.async_continue_with("ok", -1)
            before = rss_bytes(worker.pid)
            handles = [
                flows.waiting.create_execution(auto_close=False) for _ in range(paused_count)
            ]
            window = asyncio.Semaphore(IN_FLIGHT)

            async def pause(index: int) -> None:
                async with window:
                    await handles[index].async_start(index)

            # Paused in two halves: the growth over the second half is what one more waiting
            # execution costs. Growth from the start also counts what any first use of the
            # worker's memory costs (allocator arenas, caches), the same ~2 MB whether 1,000 or
            # 10,000 executions wait, so divided by their number it would depend on that number.
            half = paused_count // 2
            began = time.perf_counter()
            await asyncio.gather(*(pause(i) for i in range(half)))
            middle = rss_bytes(worker.pid)
            await asyncio.gather(*(pause(i) for i in range(half, paused_count)))
            pause_seconds = time.perf_counter() - began
            assert all(h.get_status() == "waiting" for h in handles[:10])
            after = rss_bytes(worker.pid)

            async def resume(index: int) -> None:
                async with window:
                    await handles[index].async_continue_with("ok", index)

            began = time.perf_counter()
            await asyncio.gather(*(resume(i) for i in range(resumed_count)))
            resume_seconds = time.perf_counter() - began
            return {
                "paused": paused_count,
                "resumed": resumed_count,
                "worker_rss_before": before,
                "worker_rss_middle": middle,
                "worker_rss_after": after,
                "bytes_per_waiting_execution": (after - middle) / (paused_count - half),
                "bytes_per_waiting_execution_from_start": max(0, after - before) / paused_count,
                "pause_seconds": round(pause_seconds, 3),
                "resume_seconds": round(resume_seconds, 3),
            }

    details = in_loop(run)
    per = details["bytes_per_waiting_execution"]
    from_start = details["bytes_per_waiting_execution_from_start"]
    rows = [
        row("6 waiting", f"worker memory growth per waiting execution ({paused_count} paused)",
            round(per, 1), "bytes", anchor="Agently ~50 KB per paused execution (issue)",
            anchor_value=AGENTLY_BYTES_PER_PAUSED, target="< 1 KB", passed=per < 1024,
            note="RSS growth of the process hosting chunks and execution actors while the "
            f"second half paused, per execution; from before the first, {from_start:.0f} "
            f"bytes each ({(details['worker_rss_after'] - details['worker_rss_before']) / 1e6:.1f}"
            " MB in all)"),
        row("6 waiting", f"time to resume {resumed_count} waiting executions",
            details["resume_seconds"], "s",
            note=f"{resumed_count / max(details['resume_seconds'], 1e-9):.0f} resumes/s"),
        row("6 waiting", f"time to pause {paused_count} executions", details["pause_seconds"], "s"),
    ]
    return {"rows": rows, "details": details}


def bench_telemetry(ctx: Context) -> dict:
    from bench.telemetry import bench_telemetry as run  # it imports this module

    return run(ctx)


def bench_state(ctx: Context) -> dict:
    from bench.state_cost import bench_state_cost  # it imports this module

    return bench_state_cost(ctx)


BENCHMARKS: dict[str, Callable[[Context], dict]] = {
    "hop": bench_hop,
    "throughput": bench_throughput,
    "fanout": bench_fanout,
    "stream": bench_stream,
    "scaling": bench_scaling,
    "telemetry": bench_telemetry,
    "waiting": bench_waiting,
    "state": bench_state,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--agently-python")
    parser.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    ctx = Context(args)
    began = time.perf_counter()
    result = BENCHMARKS[args.name](ctx)
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["shutdown_noise"] = dict(NOISE)
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
