"""Helpers for testing code that runs on triggerbus: an isolated NATS server, a unique prefix.

They ship in the package so that users test their flows the way triggerbus tests itself: against
a real nats-server, never a mock. Where a Docker engine is reachable the server is testcontainers'
NATS image; otherwise it is the same embedded server that triggerbus starts by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from triggerbus.bus.connection import ConnectOptions, connect
from triggerbus.bus.embedded import ClusterConfig, EmbeddedServer
from triggerbus.bus.provision import stream_leader

log = structlog.get_logger()

__all__ = [
    "NatsCluster",
    "NatsServerHandle",
    "WorkerProcess",
    "docker_available",
    "nats_cluster",
    "nats_server",
    "unique_prefix",
]

NATS_IMAGE = "nats:2.11"
_DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")


class NatsServerHandle(Protocol):
    """What a test may rely on from a server started by :func:`nats_server`."""

    @property
    def url(self) -> str:
        """The client URL, ``nats://host:port``."""
        ...


@contextlib.contextmanager
def nats_server(store_dir: str | None = None) -> Iterator[NatsServerHandle]:
    """Run a private JetStream-enabled nats-server for the duration of the block.

    Args:
        store_dir: JetStream store directory for the embedded server (a temporary one when
            ``None``). A Docker-hosted server keeps its store inside the container.

    Yields:
        A handle with the server's ``url``; for the embedded server it is the
        :class:`~triggerbus.bus.embedded.EmbeddedServer` itself (``kill``, ``port``, ...).
    """
    if docker_available():
        with _container_server() as handle:
            yield handle
        return
    with EmbeddedServer(store_dir=store_dir) as server:
        yield server


class NatsCluster:
    """A JetStream cluster of embedded nats-servers on loopback, started by :func:`nats_cluster`.

    Servers are named ``n0``, ``n1``, ...; stream infos name their leader the same way, so a
    test can find the server leading a stream and kill it.
    """

    def __init__(self, servers: Sequence[EmbeddedServer]) -> None:
        self._servers = {str(server.server_name): server for server in servers}

    @property
    def names(self) -> list[str]:
        return list(self._servers)

    @property
    def urls(self) -> list[str]:
        """Every server's client URL, dead ones included (as a client would be configured)."""
        return [server.url for server in self._servers.values()]

    @property
    def url(self) -> str:
        """The client URLs joined by commas: a ``TRIGGERBUS_NATS_URL`` value."""
        return ",".join(self.urls)

    def server(self, name: str) -> EmbeddedServer:
        return self._servers[name]

    def kill(self, name: str) -> None:
        """SIGKILL one server, as a crash would."""
        self._servers[name].kill()

    async def wait_ready(self) -> None:
        """Wait until JetStream answers through the running servers (a meta leader is elected);
        bound it by the caller. Connecting does the waiting (see ``bus.connection``)."""
        nc = await connect(self._options())
        await nc.close()

    async def leader_of(self, stream: str) -> str | None:
        """The name of the server leading ``stream``, or ``None`` while it elects one."""
        nc = await connect(self._options())
        try:
            return await stream_leader(nc, stream)
        finally:
            await nc.close()

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()

    def _options(self) -> ConnectOptions:
        running = [s.url for s in self._servers.values() if s.running]
        return ConnectOptions(servers=running, name="triggerbus-testing")


@contextlib.asynccontextmanager
async def nats_cluster(size: int = 3, base_dir: str | None = None) -> AsyncIterator[NatsCluster]:
    """Run a JetStream cluster of ``size`` nats-servers on loopback for the block.

    Yields once JetStream has a meta leader. Clustered JetStream needs its routes configured
    up front, so the route ports are picked free beforehand (a port another process grabs in
    between makes the start fail with the server's log, never hang).

    Args:
        size: How many servers; 3 keeps a quorum when one dies.
        base_dir: Parent of the servers' store directories (``n0``, ``n1``, ...); temporary
            directories when ``None``.
    """
    cluster_name = "tb-" + secrets.token_hex(4)
    ports = _free_ports(size)
    routes = [f"nats://127.0.0.1:{port}" for port in ports]
    servers = [
        EmbeddedServer(
            store_dir=None if base_dir is None else str(Path(base_dir) / f"n{i}"),
            server_name=f"n{i}",
            cluster=ClusterConfig(name=cluster_name, port=port, routes=routes),
        )
        for i, port in enumerate(ports)
    ]
    cluster = NatsCluster(servers)
    try:
        for server in servers:
            server.start()
        await cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (held together while choosing)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def unique_prefix() -> str:
    """A fresh subject prefix, so tests sharing a server never see each other's messages.

    A letter then 10 hex digits: a valid subject token and stream-name part.
    """
    return "t" + secrets.token_hex(5)


@functools.cache
def docker_available() -> bool:
    """True when a Docker engine answers a ping; decided once per process.

    Cheap on machines without Docker: with no ``DOCKER_HOST`` and no local socket file, the
    Docker client is never imported.
    """
    if not os.environ.get("DOCKER_HOST") and not _DEFAULT_DOCKER_SOCKET.exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:  # any failure to reach the engine means "use the embedded server"
        log.debug("docker_unreachable", error=repr(exc))
        return False


class _ContainerHandle:
    def __init__(self, url: str) -> None:
        self._url = url

    @property
    def url(self) -> str:
        return self._url


@contextlib.contextmanager
def _container_server() -> Iterator[NatsServerHandle]:
    from testcontainers.community.nats import NatsContainer

    with NatsContainer(NATS_IMAGE, jetstream=True) as container:
        yield _ContainerHandle(container.nats_uri())


class WorkerProcess:
    """A real ``triggerbus worker`` child process whose JSON log lines a test can wait on.

    Tests prove where work ran and when a worker is ready by waiting for its own log events
    (``worker_ready``, ``chunk_attempt_succeeded``), never by sleeping.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        nats_url: str,
        prefix: str,
        chunks: Sequence[str] | None = None,
        no_executions: bool = False,
        no_chunks: bool = False,
        concurrency: int | None = None,
        gc: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        targets = [target] if isinstance(target, str) else list(target)
        self._argv = [sys.executable, "-m", "triggerbus", "worker", *targets]
        for chunk in chunks or ():
            self._argv += ["--chunk", chunk]
        if no_executions:
            self._argv.append("--no-executions")
        if no_chunks:
            self._argv.append("--no-chunks")
        if concurrency is not None:
            self._argv += ["--concurrency", str(concurrency)]
        if gc is not None:
            self._argv += ["--gc", gc]
        self._env = {
            **os.environ,
            "TRIGGERBUS_NATS_URL": nats_url,
            "TRIGGERBUS_PREFIX": prefix,
            "TRIGGERBUS_LOG_FORMAT": "json",
            "TRIGGERBUS_LOG_LEVEL": "info",
            **(env or {}),
        }
        self._cwd = cwd
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.records: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._changed: asyncio.Condition | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self) -> dict[str, Any]:
        """Start the worker and wait for its ``worker_ready`` line (bound it by the caller)."""
        self._changed = asyncio.Condition()
        self._process = await asyncio.create_subprocess_exec(
            *self._argv,
            cwd=self._cwd,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return await self.wait_for("worker_ready")

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """Wait for a log record with this event name and these field values."""
        assert self._changed is not None
        async with self._changed:
            while True:
                for record in self.records:
                    if record.get("event") == event and all(
                        record.get(k) == v for k, v in fields.items()
                    ):
                        return record
                if self._reader is not None and self._reader.done():
                    raise RuntimeError(
                        f"worker exited (code {self.returncode}) before logging {event!r}; "
                        f"its output: {self.other_lines[-20:]} {self.records[-5:]}"
                    )
                await self._changed.wait()

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]

    async def terminate(self) -> int:
        """SIGTERM, then wait for the exit code (bound it by the caller)."""
        assert self._process is not None
        self._signal(signal.SIGTERM)
        code = await self._process.wait()
        if self._reader is not None:
            await self._reader
        return code

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        """Signal the worker without ``Process.send_signal``.

        Why: that goes through ``subprocess.Popen.send_signal``, which polls first
        (``waitpid(pid, WNOHANG)``). A worker that has just exited (killed by an injected
        fault) is reaped by that poll, before asyncio's child watcher thread gets to it: the
        watcher then finds no child and reports exit code 255 instead of -9 (seen as a flaky
        ``assert 255 == -9`` in the crash tests). Signalling a zombie is harmless, and a
        worker already reaped is gone (``ProcessLookupError``).
        """
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)

    async def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        assert self._changed is not None
        try:
            async for raw in self._process.stderr:
                line = raw.decode("utf-8", errors="replace").rstrip()
                async with self._changed:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        self.other_lines.append(line)
                    else:
                        if isinstance(record, dict):
                            self.records.append(record)
                        else:
                            self.other_lines.append(line)
                    self._changed.notify_all()
            await self._process.wait()
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def __aenter__(self) -> WorkerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._signal(signal.SIGKILL)
            await self._process.wait()
        if self._reader is not None:
            await self._reader
