"""Helpers for testing code that runs on triggerbus: an isolated NATS server, a unique prefix.

They ship in the package so that users test their flows the way triggerbus tests itself: against
a real nats-server, never a mock. Where a Docker engine is reachable the server is testcontainers'
NATS image; otherwise it is the same embedded server that triggerbus starts by default.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import structlog
from triggerbus.bus.embedded import EmbeddedServer

log = structlog.get_logger()

__all__ = ["NatsServerHandle", "docker_available", "nats_server", "unique_prefix"]

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
