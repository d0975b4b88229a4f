"""The in-process runtime: one per event loop, created on first use.

It connects to ``TRIGGERBUS_NATS_URL`` (or starts the process's embedded nats-server), and hosts
the execution actors and chunk actors of every flow this process uses, as Agently would run them
in-process. Processes started with ``triggerbus worker`` compete for the same work.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Any

import structlog

from triggerbus.actors.chunk_host import ChunkHost
from triggerbus.actors.execution_host import ExecutionHost
from triggerbus.actors.hosted import HostedFlow
from triggerbus.bus.connection import ConnectOptions
from triggerbus.bus.embedded import EmbeddedServer
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.provision import ConsumerPolicy, StoragePolicy
from triggerbus.bus.replies import ReplyRouter
from triggerbus.bus.subjects import Subjects
from triggerbus.config import Settings
from triggerbus.errors import LifecycleError
from triggerbus.observability.logging import configure_default_logging

if TYPE_CHECKING:
    from triggerbus.flow import TriggerFlow

log = structlog.get_logger()

_embedded_lock = threading.Lock()
_embedded: EmbeddedServer | None = None
_runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalRuntime] = (
    weakref.WeakKeyDictionary()
)
_resources: dict[str, dict[str, Any]] = {}
_configured: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Use ``settings`` for runtimes created from now on (``None``: read the environment)."""
    global _configured
    _configured = settings


def current_settings() -> Settings:
    """What the next runtime will use: the configured settings, else the environment's."""
    return _configured or Settings.from_env()


def embedded_url(settings: Settings) -> str:
    """Start the process's private nats-server once; every loop's runtime shares it."""
    global _embedded
    with _embedded_lock:
        if _embedded is None or not _embedded.running:
            server = EmbeddedServer(
                store_dir=settings.embedded_store_dir, binary=settings.nats_server_bin
            )
            server.start()
            log.info("embedded_server_started", url=server.url, store_dir=server.store_dir)
            _embedded = server
        return _embedded.url


def register_resources(execution_id: str, resources: dict[str, Any]) -> None:
    """Keep live objects for chunks hosted in this process (they cannot cross the bus)."""
    if resources:
        _resources[execution_id] = resources


def forget_resources(execution_id: str) -> None:
    _resources.pop(execution_id, None)


def local_resources(execution_id: str) -> dict[str, Any]:
    return _resources.get(execution_id, {})


async def get_runtime() -> LocalRuntime:
    """The runtime of the running event loop, opened on first use."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is None or runtime.broken:
        settings = current_settings()
        configure_default_logging(settings.log_level)
        runtime = LocalRuntime(settings)
        _runtimes[loop] = runtime
    await runtime.wait_open()
    return runtime


class LocalRuntime:
    """One connection, one reply router, and the hosts of the flows used on this loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self._bus: Bus | None = None
        self._replies: ReplyRouter | None = None
        self._open_lock = asyncio.Lock()
        self._flows: dict[str, HostedFlow] = {}
        self._flow_locks: dict[str, asyncio.Lock] = {}
        self._hosts: list[ChunkHost | ExecutionHost] = []
        self._group: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._group_ready = asyncio.Event()
        self.broken = False

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise LifecycleError("the runtime is not open")
        return self._bus

    @property
    def replies(self) -> ReplyRouter:
        if self._replies is None:
            raise LifecycleError("the runtime is not open")
        return self._replies

    async def wait_open(self) -> None:
        async with self._open_lock:
            if self._bus is not None:
                return
            url = self.settings.nats_url or embedded_url(self.settings)
            bus = await Bus.open(
                ConnectOptions.from_settings(self.settings, url),
                self.subjects,
                storage=StoragePolicy(replicas=self.settings.replicas),
            )
            replies = ReplyRouter(bus.nc)
            await replies.start()
            self._bus, self._replies = bus, replies
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
            await self._group_ready.wait()

    async def _supervise(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._group_ready.set()
                await asyncio.Event().wait()  # lives until cancelled with its loop
        except Exception:
            self.broken = True
            log.exception("runtime_host_failed")
            raise

    async def ensure_flow(self, flow: TriggerFlow) -> HostedFlow:
        """Host ``flow``'s actors in this process (once), as the settings allow."""
        graph = flow.graph()
        hosted = self._flows.get(graph.flow)
        if hosted is not None:
            if hosted.fingerprint != graph.fingerprint:
                raise LifecycleError(
                    f"flow {graph.flow!r} is already hosted here with a different definition; "
                    "give each flow its own name"
                )
            return hosted
        lock = self._flow_locks.setdefault(graph.flow, asyncio.Lock())
        async with lock:
            if graph.flow in self._flows:
                return self._flows[graph.flow]
            hosted = HostedFlow(graph, flow.handlers(), local_resources=local_resources,
                                flow_resources=flow.runtime_resources)  # fmt: skip
            await self._start_hosts(hosted)
            self._flows[graph.flow] = hosted
        # The sub-flows it starts run as executions of their own flows, hosted alongside.
        for sub_flow in flow.hosted_flows()[1:]:
            await self.ensure_flow(sub_flow)
        return hosted

    async def _start_hosts(self, hosted: HostedFlow) -> None:
        assert self._group is not None
        hosts: list[ChunkHost | ExecutionHost] = []
        executions = None
        if self.settings.host_executions:
            executions = ExecutionHost(
                self.bus,
                hosted,
                consumer_policy=ConsumerPolicy(ack_wait=self.settings.ack_wait),
            )
            hosts.append(executions)
        wanted = self.settings.local_chunks
        chunks = list(hosted.handlers) if wanted is None else [
            name for name in hosted.handlers if name in wanted
        ]
        if chunks:
            hosts.append(
                ChunkHost(
                    self.bus,
                    hosted,
                    self.replies,
                    chunks=chunks,
                    concurrency=self.settings.chunk_concurrency,
                    consumer_policy=ConsumerPolicy(ack_wait=self.settings.ack_wait),
                    executions=executions,
                )
            )
        for host in hosts:
            self._group.create_task(host.run())
        for host in hosts:
            await host.wait_ready()
        self._hosts.extend(hosts)
        log.debug("flow_hosted", flow=hosted.name, chunks=chunks)

    async def close(self) -> None:
        for host in self._hosts:
            host.shutdown()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except (asyncio.CancelledError, Exception):
                pass
        if self._replies is not None:
            await self._replies.stop()
        if self._bus is not None:
            await self._bus.close()


async def close_runtime() -> None:
    """Close the running loop's runtime: stop its hosts, drain its connection."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.pop(loop, None)
    if runtime is not None:
        await runtime.close()
