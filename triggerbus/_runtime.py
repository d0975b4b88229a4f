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

from triggerbus._hosting_loops import mark_hosting, unmark_hosting
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
from triggerbus.contracts.codec import decode
from triggerbus.contracts.snapshot import snapshot_decoder
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
        self._flows: dict[str, _Hosting] = {}
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
        """Host ``flow``'s actors in this process, as the settings allow.

        Once per definition: when the same flow object has changed since it was hosted (it
        was extended after it ran), its hosts are replaced by ones for the new definition,
        provided no execution of the earlier one is still open here (see ``_retire``).
        """
        graph = flow.graph()
        hosting = self._flows.get(graph.flow)
        if hosting is not None and hosting.hosted.fingerprint == graph.fingerprint:
            return hosting.hosted
        lock = self._flow_locks.setdefault(graph.flow, asyncio.Lock())
        async with lock:
            hosting = self._flows.get(graph.flow)
            if hosting is not None and hosting.hosted.fingerprint == graph.fingerprint:
                return hosting.hosted
            if hosting is not None:
                await self._retire(hosting, flow, graph.flow)
            hosting = _Hosting(flow, HostedFlow(graph, flow.handlers(),
                               local_resources=local_resources,
                               flow_resources=flow.runtime_resources))  # fmt: skip
            hosting.hosts = await self._start_hosts(hosting)
            self._flows[graph.flow] = hosting
        # The sub-flows it starts run as executions of their own flows, hosted alongside.
        for sub_flow in flow.hosted_flows()[1:]:
            await self.ensure_flow(sub_flow)
        return hosting.hosted

    async def _retire(self, hosting: _Hosting, flow: TriggerFlow, name: str) -> None:
        """Stop hosting an earlier definition of ``name`` so a new one can be hosted.

        Only the same flow object may replace its own definition (two flows that share a
        name would share subjects), and only while no execution of the earlier definition
        is open in this process: its later messages would reach hosts of the new definition,
        which refuse them (a fingerprint mismatch) and leave it stuck.
        """
        if hosting.flow is not flow:
            raise LifecycleError(
                f"two different flows are named {name!r} in this process, with different "
                "definitions; they would share subjects. Give each flow its own name "
                "(TriggerFlow(name=...))"
            )
        if hosting.overflowed:
            raise LifecycleError(
                f"flow {name!r} changed after its first execution in this process, which "
                f"started more than {OPEN_TRACKED} executions of its earlier definition "
                "without seeing them close, so it cannot tell that none is still open; build "
                "the changed flow as a new TriggerFlow with its own name"
            )
        still_open = await self._open_executions(hosting)
        if still_open:
            shown = ", ".join(sorted(still_open)[:3]) + (", ..." if len(still_open) > 3 else "")
            raise LifecycleError(
                f"flow {name!r} changed after its first execution in this process, and "
                f"{len(still_open)} execution(s) of its earlier definition are still open here "
                f"({shown}); this process can host only one definition of a flow. Close or "
                "finish them before changing the flow, or build the changed flow as a new "
                "TriggerFlow with its own name"
            )
        for host in hosting.hosts:
            host.shutdown()  # what it already took finishes; new work goes to the new hosts
            self._hosts.remove(host)
        log.info("flow_rehosted", flow=name, fingerprint=flow.graph().fingerprint,
                 previous=hosting.hosted.fingerprint)  # fmt: skip

    async def _open_executions(self, hosting: _Hosting) -> set[str]:
        """The executions of ``hosting``'s definition that this process's execution host
        started and has not seen close, as the store has them now (KV is the truth: a close
        observed elsewhere, or not observed after a crash, is found there)."""
        still_open: set[str] = set()
        for execution_id in list(hosting.open):
            loaded = await self.bus.load(
                self.subjects.execution_key(hosting.hosted.name, execution_id)
            )
            snapshot = decode(snapshot_decoder, loaded[0]) if loaded else None
            if (
                snapshot is None
                or snapshot.lifecycle == "closed"
                or snapshot.fingerprint != hosting.hosted.fingerprint
            ):
                hosting.open.discard(execution_id)
            else:
                still_open.add(execution_id)
        return still_open

    async def _start_hosts(self, hosting: _Hosting) -> list[ChunkHost | ExecutionHost]:
        assert self._group is not None
        hosted = hosting.hosted
        hosts: list[ChunkHost | ExecutionHost] = []
        executions = None
        if self.settings.host_executions:
            executions = ExecutionHost(
                self.bus,
                hosted,
                consumer_policy=ConsumerPolicy(ack_wait=self.settings.ack_wait),
                on_observe=hosting.observe,
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
        if hosts:
            mark_hosting(asyncio.get_running_loop())
        for host in hosts:
            self._group.create_task(host.run())
        for host in hosts:
            await host.wait_ready()
        self._hosts.extend(hosts)
        log.debug("flow_hosted", flow=hosted.name, chunks=chunks)
        return hosts

    async def close(self) -> None:
        unmark_hosting(asyncio.get_running_loop())
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


OPEN_TRACKED = 10_000
"""Open executions a hosted flow keeps track of; past that, its definition may not change."""


class _Hosting:
    """One flow hosted on this loop: the flow object, its compiled form, its hosts, and the
    executions its execution host started and has not seen close (what a change of the
    flow's definition would strand)."""

    def __init__(self, flow: TriggerFlow, hosted: HostedFlow) -> None:
        self.flow = flow
        self.hosted = hosted
        self.hosts: list[ChunkHost | ExecutionHost] = []
        self.open: set[str] = set()
        self.overflowed = False

    def observe(self, name: str, execution_id: str, attributes: dict[str, Any]) -> None:
        if name == "execution_started" and not self.overflowed:
            self.open.add(execution_id)
            if len(self.open) > OPEN_TRACKED:
                self.overflowed, self.open = True, set()
        elif name == "execution_closed":
            self.open.discard(execution_id)


async def close_runtime() -> None:
    """Close the running loop's runtime: stop its hosts, drain its connection."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.pop(loop, None)
    if runtime is not None:
        await runtime.close()
