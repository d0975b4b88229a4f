"""Settings, read once from an explicit mapping.

This module is the only reader of ``TRIGGERBUS_*``; everything below it takes plain arguments,
so tests pass a dict instead of touching the real environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from triggerbus._gc import WORKER_GC
from triggerbus._loop import EVENT_LOOPS
from triggerbus.errors import ConfigurationError

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How a process reaches NATS and names its subjects.

    Attributes:
        nats_url: Comma-separated server URLs; ``None`` starts an embedded server.
        prefix: First token of every subject and part of every stream name.
        token, user, password, creds_file, nkey_seed_file: Credentials, at most one kind.
        tls_ca_file, tls_cert_file, tls_key_file: TLS material; a CA alone enables TLS.
        embedded_store_dir: Where an embedded server keeps JetStream data; a temp dir if unset.
        nats_server_bin: Path to a nats-server binary for the embedded server.
        connect_name: Client name shown by the server's monitoring.
        local_chunks: Chunks this process hosts when it uses a flow; ``None`` hosts all of
            them, an empty set none (a pure client, or a process whose chunks run elsewhere).
        host_executions: Whether this process hosts execution actors for the flows it uses.
        chunk_concurrency: Invocations of one chunk running at once in this process.
        log_level: Lowest log level written (the CLI defaults to info, library use to warning).
        log_format: ``auto``, ``json`` or ``console``.
        ack_wait: Seconds JetStream waits for a chunk or mailbox ack before redelivering; a live
            worker's heartbeats keep a slow chunk from being redelivered, so this bounds how
            long the work of a dead worker waits.
        fault_kill_after_stores: Fault injection for tests: an execution host SIGKILLs its own
            process after this many snapshot writes, before publishing the outbox.
        replicas: Copies JetStream keeps of every stream and of the executions bucket; 3 on a
            cluster of at least 3 servers survives the loss of one. Every process provisions
            with it, so all must agree (a difference is reported as drift).
        event_loop: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop``: the loop of
            ``triggerbus worker`` and of the sync API's background thread.
        worker_gc: ``tuned`` (raised collector thresholds, start-up objects frozen) or
            ``python`` (the interpreter's defaults): the garbage collector of
            ``triggerbus worker``; an application's own process is never changed.
    """

    nats_url: str | None = None
    prefix: str = "tb"
    token: str | None = None
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    embedded_store_dir: str | None = None
    nats_server_bin: str | None = None
    connect_name: str = "triggerbus"
    local_chunks: frozenset[str] | None = None
    host_executions: bool = True
    chunk_concurrency: int = 16
    log_level: str = "warning"
    log_format: str = "auto"
    ack_wait: float = 30.0
    fault_kill_after_stores: int | None = None
    replicas: int = 1
    event_loop: str = "auto"
    worker_gc: str = "tuned"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ConfigurationError(
                f"subject prefix {self.prefix!r} must be letters, digits, '_' or '-' "
                "(it is one subject token and part of stream names)"
            )
        if (self.user is None) != (self.password is None):
            raise ConfigurationError("set both TRIGGERBUS_NATS_USER and TRIGGERBUS_NATS_PASSWORD")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigurationError(
                f"TRIGGERBUS_LOG_FORMAT must be auto, json or console, not {self.log_format!r}"
            )
        if self.tls_cert_file and not self.tls_key_file:
            raise ConfigurationError("TRIGGERBUS_NATS_TLS_CERT needs TRIGGERBUS_NATS_TLS_KEY")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigurationError(
                f"TRIGGERBUS_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, "
                f"not {self.event_loop!r}"
            )
        if self.worker_gc not in WORKER_GC:
            raise ConfigurationError(
                f"TRIGGERBUS_WORKER_GC must be one of {', '.join(WORKER_GC)}, "
                f"not {self.worker_gc!r}"
            )

    @property
    def embedded(self) -> bool:
        """True when no URL is configured and the process should start its own server."""
        return self.nats_url is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``TRIGGERBUS_*`` variables (``os.environ`` by default)."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"TRIGGERBUS_{name}")
            return value if value else None

        return cls(
            nats_url=get("NATS_URL"),
            prefix=get("PREFIX") or "tb",
            token=get("NATS_TOKEN"),
            user=get("NATS_USER"),
            password=get("NATS_PASSWORD"),
            creds_file=get("NATS_CREDS"),
            nkey_seed_file=get("NATS_NKEY_SEED"),
            tls_ca_file=get("NATS_TLS_CA"),
            tls_cert_file=get("NATS_TLS_CERT"),
            tls_key_file=get("NATS_TLS_KEY"),
            embedded_store_dir=get("STORE_DIR"),
            nats_server_bin=get("NATS_SERVER_BIN"),
            connect_name=get("CONNECT_NAME") or "triggerbus",
            local_chunks=_chunk_set(env.get("TRIGGERBUS_LOCAL_CHUNKS")),
            host_executions=_flag(get("HOST_EXECUTIONS"), default=True),
            chunk_concurrency=_positive_int(get("CHUNK_CONCURRENCY"), "CHUNK_CONCURRENCY", 16),
            log_level=(get("LOG_LEVEL") or "warning").lower(),
            log_format=(get("LOG_FORMAT") or "auto").lower(),
            ack_wait=_positive_float(get("ACK_WAIT"), "ACK_WAIT", 30.0),
            fault_kill_after_stores=(
                _positive_int(get("FAULT_KILL_AFTER_STORES"), "FAULT_KILL_AFTER_STORES", 1)
                if get("FAULT_KILL_AFTER_STORES")
                else None
            ),
            replicas=_positive_int(get("REPLICAS"), "REPLICAS", 1),
            event_loop=(get("EVENT_LOOP") or "auto").lower(),
            worker_gc=(get("WORKER_GC") or "tuned").lower(),
        )


def _chunk_set(value: str | None) -> frozenset[str] | None:
    """``*`` or unset: every chunk; ``-`` or empty: none; else a comma-separated list."""
    if value is None or value.strip() == "*":
        return None
    names = [name.strip() for name in value.split(",") if name.strip() and name.strip() != "-"]
    return frozenset(names)


def _flag(value: str | None, *, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"expected a boolean (1/0, true/false), got {value!r}")


def _positive_float(value: str | None, name: str, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"TRIGGERBUS_{name} must be a number, got {value!r}") from None
    if number <= 0:
        raise ConfigurationError(f"TRIGGERBUS_{name} must be greater than 0, got {number}")
    return number


def _positive_int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(
            f"TRIGGERBUS_{name} must be a whole number, got {value!r}"
        ) from None
    if number < 1:
        raise ConfigurationError(f"TRIGGERBUS_{name} must be at least 1, got {number}")
    return number
