"""Idempotent provisioning of the streams, consumers and bucket of ARCHITECTURE §3.

Creating what is missing is safe to repeat from every process at start-up. What exists with a
different configuration is drift: it is reported, never silently overwritten, because another
deployment (or an operator) may depend on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from triggerbus.bus._errors import call_retrying, translate_nats_errors
from triggerbus.bus.subjects import Subjects
from triggerbus.errors import ConfigurationError, ProvisioningDriftError

log = structlog.get_logger()


# JetStream API codes: "replicas > 1 not supported in non-clustered mode", "insufficient
# resources" (fewer servers than replicas).
_REPLICAS_UNSUPPORTED_CODES = frozenset({10074, 10023})


@dataclass(frozen=True, kw_only=True)
class StoragePolicy:
    """Retention and durability knobs an operator may tune.

    ``replicas`` applies to every stream and the bucket (their consumers inherit it): 3 on a
    cluster of at least 3 JetStream servers keeps everything available when one server dies.
    """

    replicas: int = 1
    stream_max_age: float = 24 * 3600.0
    dead_letter_max_age: float = 7 * 24 * 3600.0
    duplicate_window: float = 120.0
    memory: bool = False
    max_consumers: int = 100_000
    """Consumers each stream and the bucket may hold. nats-server 2.15 caps a stream that sets
    none at 1,000, and triggerbus makes one per runtime-stream reader and per ``get_result``
    wait (ephemeral), and one per chunk (durable): a thousand concurrent readers of one
    deployment's streams would otherwise be refused."""


@dataclass(frozen=True, kw_only=True)
class ConsumerPolicy:
    """Delivery knobs of a durable pull consumer."""

    ack_wait: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 10_000
    backoff: tuple[float, ...] = ()


def stream_configs(subjects: Subjects, policy: StoragePolicy) -> list[StreamConfig]:
    storage = StorageType.MEMORY if policy.memory else StorageType.FILE
    common: dict[str, Any] = {
        "storage": storage,
        "num_replicas": policy.replicas,
        "duplicate_window": policy.duplicate_window,
        "max_consumers": policy.max_consumers,
    }
    return [
        StreamConfig(
            name=subjects.run_stream,
            subjects=[subjects.all_runs()],
            retention=RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        StreamConfig(
            name=subjects.exec_stream,
            subjects=[subjects.all_mailboxes()],
            retention=RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        StreamConfig(
            name=subjects.stream_stream,
            subjects=[subjects.all_streams()],
            retention=RetentionPolicy.LIMITS,
            max_age=policy.stream_max_age,
            allow_direct=True,
            **common,
        ),
        StreamConfig(
            # Timers wait here until due (a host hands each back with a delayed nak), so they
            # outlive the process that set them.
            name=subjects.timer_stream,
            subjects=[subjects.all_timers()],
            retention=RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        StreamConfig(
            name=subjects.dlq_stream,
            subjects=[subjects.all_dead_letters()],
            retention=RetentionPolicy.LIMITS,
            max_age=policy.dead_letter_max_age,
            **common,
        ),
    ]


_COMPARED_STREAM_FIELDS = ("subjects", "retention", "storage", "num_replicas", "max_age")
_COMPARED_CONSUMER_FIELDS = ("filter_subject", "ack_policy", "max_deliver")


async def provision(
    js: JetStreamContext, subjects: Subjects, policy: StoragePolicy | None = None
) -> None:
    """Create the streams and the executions bucket, or check that they match."""
    policy = policy or StoragePolicy()
    with _replicas_checked(policy):
        for config in stream_configs(subjects, policy):
            await _ensure_stream(js, config)
        await _ensure_bucket(js, subjects, policy)


async def stream_leader(nc: Client, stream: str) -> str | None:
    """The name of the server leading ``stream`` now, or ``None`` while it elects one (or when
    the server is not clustered)."""
    js = nc.jetstream()
    info = await call_retrying(lambda: js.stream_info(stream), subject=stream)
    return info.cluster.leader if info.cluster is not None else None


@contextmanager
def _replicas_checked(policy: StoragePolicy) -> Iterator[None]:
    """Say what to change when the servers cannot hold ``policy.replicas`` copies."""
    try:
        yield
    except Exception as exc:
        cause = exc.__cause__
        if policy.replicas > 1 and getattr(cause, "err_code", None) in _REPLICAS_UNSUPPORTED_CODES:
            raise ConfigurationError(
                f"TRIGGERBUS_REPLICAS={policy.replicas} needs a NATS cluster with at least "
                f"{policy.replicas} JetStream servers ({getattr(cause, 'description', cause)}); "
                "lower it, or point TRIGGERBUS_NATS_URL at such a cluster"
            ) from exc
        raise


async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> None:
    name = wanted.name or ""
    with translate_nats_errors(subject=name):
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(wanted)
                log.info("stream_created", stream=name)
                return
            except nats.js.errors.BadRequestError:
                # Another process created it between our look and our add: check theirs.
                info = await js.stream_info(name)
    _check_drift(name, wanted, info.config, _COMPARED_STREAM_FIELDS)
    await _raise_consumer_limit(js, info.config, wanted.max_consumers or 0)


async def _raise_consumer_limit(js: JetStreamContext, config: StreamConfig, wanted: int) -> None:
    """Raise a stream's consumer limit to ``wanted`` when it is lower: a stream created by an
    earlier release (or by nats-py's bucket creation, which cannot set it) has the server's
    default. Never lowered (an operator may have raised it); a server that cannot change it
    leaves the stream working, with a warning naming the limit."""
    current = config.max_consumers or 0
    if current >= wanted:
        return
    # Not positive: "no limit" to a server before 2.15, its default of 1,000 to a later one.
    try:
        await js.update_stream(dataclasses.replace(config, max_consumers=wanted))
    except nats.errors.Error as exc:
        # Typically a process without $JS.API.STREAM.UPDATE, or a server that cannot change
        # the limit: the stream works, with the limit it has (not positive: the server's).
        log.warning("stream_consumer_limit_kept", stream=config.name,
                    limit=current if current > 0 else "server default", wanted=wanted,
                    error=str(exc) or type(exc).__name__)  # fmt: skip
        return
    log.info("stream_consumer_limit_raised", stream=config.name, limit=wanted)


async def _ensure_bucket(js: JetStreamContext, subjects: Subjects, policy: StoragePolicy) -> None:
    bucket = subjects.executions_bucket
    with translate_nats_errors(subject=bucket):
        try:
            status = await (await js.key_value(bucket)).status()
        except nats.js.errors.BucketNotFoundError:
            pass
        else:
            wanted = StreamConfig(num_replicas=policy.replicas)
            _check_drift(bucket, wanted, status.stream_info.config, ("num_replicas",))
            await _raise_consumer_limit(js, status.stream_info.config, policy.max_consumers)
            return
        created = await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                history=1,
                storage=StorageType.MEMORY if policy.memory else StorageType.FILE,
                replicas=policy.replicas,
                direct=True,
            )
        )
        log.info("bucket_created", bucket=bucket)
        # Each get_result wait watches its key: a consumer of the bucket's stream.
        info = (await created.status()).stream_info
        await _raise_consumer_limit(js, info.config, policy.max_consumers)


async def ensure_consumer(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subject: str,
    policy: ConsumerPolicy | None = None,
) -> None:
    """Create a durable pull consumer shared by every replica, or check the existing one."""
    policy = policy or ConsumerPolicy()
    wanted = ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=policy.ack_wait,
        max_deliver=policy.max_deliver,
        max_ack_pending=policy.max_ack_pending,
        backoff=list(policy.backoff) or None,
    )
    with translate_nats_errors(subject=f"{stream}/{durable}"):
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, wanted)
            log.info("consumer_created", stream=stream, consumer=durable)
            return
    _check_drift(durable, wanted, info.config, _COMPARED_CONSUMER_FIELDS)


def _check_drift(name: str, wanted: Any, actual: Any, fields: tuple[str, ...]) -> None:
    differences: dict[str, tuple[object, object]] = {}
    for field_name in fields:
        want = getattr(wanted, field_name, None)
        have = getattr(actual, field_name, None)
        if want is None:
            continue
        if field_name == "max_age" and have is not None and abs(float(have) - float(want)) < 1e-3:
            continue
        if want != have:
            differences[field_name] = (want, have)
    if differences:
        detail = ", ".join(f"{k}: want {w!r}, found {h!r}" for k, (w, h) in differences.items())
        raise ProvisioningDriftError(
            f"{name} exists with a different configuration ({detail}); remove it or align "
            "the settings (another deployment may be using the same prefix)",
            name=name,
            differences=differences,
        )
