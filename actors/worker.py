"""A worker process: hosts chosen chunk actors and execution actors of one flow until told to stop.

Scaling a hot chunk is starting more of these anywhere that reaches NATS: every replica binds
to the same durable consumer, so JetStream spreads invocations across them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from triggerbus._hosting_loops import mark_hosting
from triggerbus.actors.chunk_host import ChunkHost, ChunkHostStatistics
from triggerbus.actors.execution_host import ExecutionHost, ExecutionHostStatistics
from triggerbus.actors.hosted import HostedFlow
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.provision import ConsumerPolicy
from triggerbus.bus.replies import ReplyRouter
from triggerbus.errors import LifecycleError

log = structlog.get_logger()


@dataclass(frozen=True)
class WorkerStatistics:
    chunks: ChunkHostStatistics | None
    executions: ExecutionHostStatistics | None


class Worker:
    """Hosts a flow's actors on an open bus.

    Args:
        bus: An open bus (the worker does not close it).
        flow: The flow to host.
        chunks: Chunk names to host; ``None`` for all, empty for none.
        concurrency: Invocations of each chunk running at once in this process.
        host_executions: Whether to host execution actors too.
        shutdown_grace: Seconds running invocations get to finish after a stop request.
        more_flows: Further flows hosted alongside (a flow's sub-flows, or several flows in
            one process); ``chunks`` filters their chunks by name too.
    """

    def __init__(
        self,
        bus: Bus,
        flow: HostedFlow,
        *,
        chunks: list[str] | None = None,
        concurrency: int = 16,
        host_executions: bool = True,
        shutdown_grace: float = 30.0,
        consumer_policy: ConsumerPolicy | None = None,
        after_store: Callable[[], None] | None = None,
        more_flows: Sequence[HostedFlow] = (),
    ) -> None:
        self._bus = bus
        self._flow = flow
        self._replies = ReplyRouter(bus.nc)
        names = list(flow.handlers) if chunks is None else chunks
        self._execution_host = (
            ExecutionHost(bus, flow, consumer_policy=consumer_policy, after_store=after_store)
            if host_executions
            else None
        )
        self._chunk_host = (
            ChunkHost(
                bus,
                flow,
                self._replies,
                chunks=names,
                concurrency=concurrency,
                consumer_policy=consumer_policy,
                executions=self._execution_host,
            )
            if names
            else None
        )
        self._more_hosts: list[ChunkHost | ExecutionHost] = []
        for other in more_flows:
            executions = (
                ExecutionHost(bus, other, consumer_policy=consumer_policy)
                if host_executions
                else None
            )
            if executions is not None:
                self._more_hosts.append(executions)
            wanted = [n for n in other.handlers if chunks is None or n in chunks]
            if wanted:
                self._more_hosts.append(
                    ChunkHost(
                        bus,
                        other,
                        self._replies,
                        chunks=wanted,
                        concurrency=concurrency,
                        consumer_policy=consumer_policy,
                        executions=executions,
                    )
                )
        if self._chunk_host is None and self._execution_host is None:
            raise LifecycleError("a worker must host at least one chunk or the execution actors")
        self._grace = shutdown_grace
        self._stop = asyncio.Event()
        self._started = False

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            chunks=self._chunk_host.statistics() if self._chunk_host else None,
            executions=self._execution_host.statistics() if self._execution_host else None,
        )

    def shutdown(self) -> None:
        """Ask the worker to stop taking work and drain. Idempotent; safe from a signal."""
        self._stop.set()

    async def run(self) -> None:
        """Host until ``shutdown()``, then drain for at most the grace period."""
        if self._started:
            raise LifecycleError("Worker.run() was already called; create a new worker")
        self._started = True
        mark_hosting(asyncio.get_running_loop())
        await self._replies.start()
        hosts: list[ChunkHost | ExecutionHost] = [
            h for h in (self._execution_host, self._chunk_host) if h is not None
        ] + self._more_hosts
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(host.run()) for host in hosts]
                for host in hosts:
                    await host.wait_ready()
                log.info(
                    "worker_ready",
                    flow=self._flow.name,
                    fingerprint=self._flow.fingerprint,
                    chunks=self._chunk_host.chunks if self._chunk_host else [],
                    executions=self._execution_host is not None,
                    pid=os.getpid(),
                    event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
                    gc_thresholds=list(gc.get_threshold()),
                    gc_frozen=gc.get_freeze_count(),
                )
                await self._stop.wait()
                log.info("worker_draining", grace_seconds=self._grace)
                for host in hosts:
                    host.shutdown()
                try:
                    async with asyncio.timeout(self._grace):
                        await asyncio.gather(*tasks)
                except TimeoutError:
                    log.warning("worker_drain_timed_out", grace_seconds=self._grace)
                    for task in tasks:
                        task.cancel()
        finally:
            await self._replies.stop()
        log.info("worker_stopped", flow=self._flow.name)


def kill_after(stores: int) -> Callable[[], None]:
    """A fault-injection hook that SIGKILLs this process on its ``stores``-th call."""
    calls = 0

    def maybe_die() -> None:
        nonlocal calls
        calls += 1
        if calls >= stores:
            log.warning("fault_injected_kill", after_stores=calls)
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_die


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM and SIGINT ask the worker to drain and stop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.shutdown)
