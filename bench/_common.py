"""Helpers shared by the benchmarks: statistics, worker processes, JetStream write counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKER_READY_TIMEOUT = 60.0
WORKER_STOP_TIMEOUT = 15.0


def percentiles(samples: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99/mean in milliseconds of samples given in seconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "n": len(ordered),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
    }


async def ready_until_stopped() -> None:
    """For a helper process of the anchors: print ``ready``, then return on SIGTERM or when
    stdin closes (``helper_process`` in bench/benchmarks.py waits for the line)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()


def configure_runtime(
    url: str,
    prefix: str,
    *,
    local_chunks: frozenset[str] | None = None,
    host_executions: bool = True,
    chunk_concurrency: int = 16,
) -> None:
    """Point the in-process runtime of the next event loop at the bench's server."""
    import triggerbus._runtime as runtime
    from triggerbus.config import Settings

    runtime.configure(
        Settings(
            nats_url=url,
            prefix=prefix,
            local_chunks=local_chunks,
            host_executions=host_executions,
            chunk_concurrency=chunk_concurrency,
        )
    )


class Worker:
    """A real ``python -m triggerbus worker bench.flows:<flow>`` process.

    Like triggerbus.testing.WorkerProcess, it waits for the worker's own ``worker_ready`` log
    line; unlike it, it keeps no parsed records afterwards (a worker logs a line per chunk
    attempt at info, and the bench should not spend the driver's CPU parsing them).
    """

    def __init__(
        self,
        flow: str,
        *,
        url: str,
        prefix: str,
        chunks: Sequence[str] = (),
        no_executions: bool = True,
        concurrency: int | None = None,
    ) -> None:
        self.argv = [sys.executable, "-m", "triggerbus", "worker", f"bench.flows:{flow}"]
        for chunk in chunks:
            self.argv += ["--chunk", chunk]
        if no_executions:
            self.argv.append("--no-executions")
        if concurrency is not None:
            self.argv += ["--concurrency", str(concurrency)]
        self.env = {
            **os.environ,
            "TRIGGERBUS_NATS_URL": url,
            "TRIGGERBUS_PREFIX": prefix,
            "TRIGGERBUS_LOG_FORMAT": "json",
        }
        self.process: asyncio.subprocess.Process | None = None
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=30)
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=str(REPO),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({ready, self._reader}, timeout=WORKER_READY_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._ready.is_set():
            await self.stop()
            raise RuntimeError(f"worker {self.argv} not ready: {list(self.tail)}")

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines += 1
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.tail.append(line)
            if not self._ready.is_set() and '"worker_ready"' in line:
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("event") == "worker_ready":
                        self._ready.set()

    async def stop(self) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(WORKER_STOP_TIMEOUT):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._reader
        return self.process.returncode


@contextlib.asynccontextmanager
async def workers(count: int, flow: str, **options: Any) -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(count):
            worker = Worker(flow, **options)
            await worker.start()
            started.append(worker)
        yield started
    finally:
        await asyncio.gather(*(w.stop() for w in started), return_exceptions=True)


async def jetstream_writes(nc: Any, prefix: str) -> dict[str, int]:
    """Messages ever stored per stream of this prefix, KV bucket included (last sequences).

    Work-queue streams delete acked messages, so the message count is no use; the last sequence
    counts every write, KV updates included. ``total`` sums them.
    """
    js = nc.jetstream()
    writes: dict[str, int] = {}
    for name in (f"{prefix}_run", f"{prefix}_exec", f"{prefix}_stream", f"{prefix}_dlq",
                 f"KV_{prefix}_executions"):
        try:
            info = await js.stream_info(name)
        except Exception:
            continue
        writes[name.replace(prefix, "<p>")] = int(info.state.last_seq or 0)
    writes["total"] = sum(writes.values())
    return writes


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (and its reaped children) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def drive(
    start: Callable[[int], Awaitable[Any]],
    *,
    count: int,
    in_flight: int,
    time_limit: float,
    check: Callable[[int, Any], bool] | None = None,
    per_call_timeout: float = 60.0,
) -> dict[str, Any]:
    """Run ``start(i)`` for i in range(count), ``in_flight`` at a time, for at most
    ``time_limit`` seconds; returns counts, elapsed seconds and per-call latencies."""
    next_index = 0
    done = 0
    wrong = 0
    errors: list[str] = []
    latencies: list[float] = []
    deadline = time.perf_counter() + time_limit

    async def runner() -> None:
        nonlocal next_index, done, wrong
        while next_index < count and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            began = time.perf_counter()
            try:
                async with asyncio.timeout(per_call_timeout):
                    result = await start(index)
            except Exception as exc:  # a failed execution is a result to report, not a crash
                if len(errors) < 5:
                    errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - began)
            done += 1
            if check is not None and not check(index, result):
                wrong += 1

    began = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(in_flight)))
    elapsed = time.perf_counter() - began
    return {
        "executions": done,
        "attempted": next_index,
        "wrong_results": wrong,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "executions_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "latency": percentiles(latencies),
        "hit_time_limit": time.perf_counter() >= deadline,
    }


def quiet_shutdown_noise(counter: dict[str, int]) -> None:
    """Count (instead of printing) the errors of tasks left behind when a runtime closes.

    A finding for docs/performance.md: LocalRuntime.close() leaves PullConsumer.fetch futures
    that fail with BusUnavailableError once the connection drains.
    """
    loop = asyncio.get_running_loop()
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is not None and type(exc).__name__ in ("BusUnavailableError",
                                                       "ConnectionClosedError"):
            counter["orphaned_task_errors"] = counter.get("orphaned_task_errors", 0) + 1
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
