"""The one place where nats-py exceptions become triggerbus exceptions.

Every call into nats-py from ``bus/`` runs inside :func:`translate_nats_errors` (or
:func:`call_retrying`, which translates the same way once it gives up), so no nats type escapes
the bus layer and callers above it catch only the tree in :mod:`triggerbus.errors`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import nats.errors
import nats.js.errors
import structlog

from triggerbus.errors import (
    BusError,
    BusUnavailableError,
    PayloadTooLargeError,
    RevisionConflictError,
)

log = structlog.get_logger()

T = TypeVar("T")

RETRY_WINDOW = 15.0
"""Seconds a JetStream call keeps retrying transient failures: a clustered stream whose leader
died elects a new one within a few seconds (raft election timeouts), and a client whose server
died reconnects to another within about as long."""
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0

# JetStream API codes for a failed compare-and-set ("wrong last sequence"); nats-py turns them
# into KeyWrongLastSequenceError only for KV calls, a stream publish with an expected-sequence
# header raises a plain APIError.
_WRONG_LAST_SEQUENCE_CODES = frozenset({10071, 10164})

# Errors that mean the connection cannot carry the call right now, rather than that the call
# itself was wrong.
_UNAVAILABLE = (
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)


DENIAL_MEMORY = 30.0
"""Seconds a permissions violation the server reported stays the likely cause of a timeout."""

_last_denial: list[tuple[float, str]] = []
"""The last permissions violation the server reported, and when (one at most)."""


def note_denial(error: str) -> None:
    """Remember a permissions violation the server reported (asynchronously: the request it
    refused gets no answer, only a timeout, so the timeout's error must name it)."""
    _last_denial[:] = [(time.monotonic(), error)]


def is_denial(error: BaseException) -> bool:
    return "permissions violation" in str(error).lower()


def _recent_denial() -> str | None:
    if _last_denial and time.monotonic() - _last_denial[0][0] <= DENIAL_MEMORY:
        return _last_denial[0][1]
    return None


@contextmanager
def translate_nats_errors(
    *,
    subject: str | None = None,
    key: str | None = None,
    url: str | None = None,
) -> Iterator[None]:
    """Re-raise nats-py errors raised inside the block as triggerbus errors.

    A sync context manager so that it wraps awaits inside coroutines without an ``async with``;
    it never touches ``asyncio.CancelledError`` or the builtin ``TimeoutError`` raised by a
    caller's ``asyncio.timeout``: only ``nats.errors.Error`` subclasses are translated.

    Args:
        subject: The subject, stream or bucket the call addressed, for the error message.
        key: The KV key of a compare-and-set write, carried by ``RevisionConflictError``.
        url: The server URL(s), carried by ``BusUnavailableError``.

    Raises:
        RevisionConflictError: A compare-and-set write found a newer revision.
        BusUnavailableError: The connection is closed, draining, reconnecting or has no server.
        BusError: Any other NATS failure, timeouts included.
    """
    try:
        yield
    except nats.errors.Error as exc:
        raise _translate(exc, subject=subject, key=key, url=url) from exc


def unanswered(exc: nats.errors.Error) -> bool:
    """True when the call certainly had no effect and nobody answered: no responders (a
    stream or API with no leader right now), or JetStream saying it is temporarily unavailable
    (503, e.g. no meta leader). Retrying such a call can never apply it twice."""
    return isinstance(
        exc,
        nats.errors.NoRespondersError
        | nats.js.errors.NoStreamResponseError
        | nats.js.errors.ServiceUnavailableError,
    )


def transient(exc: nats.errors.Error) -> bool:
    """:func:`unanswered`, or a timeout (which may hide a call that did take effect): what a
    leader election or a reconnect to another server produces. Retry only calls that are safe
    to repeat: a publish with a ``Nats-Msg-Id``, a read, a compare-and-set."""
    return unanswered(exc) or isinstance(
        exc, nats.errors.TimeoutError | nats.errors.StaleConnectionError
    )


async def call_retrying(
    call: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[nats.errors.Error], bool] = transient,
    window: float = RETRY_WINDOW,
    subject: str | None = None,
    key: str | None = None,
    url: str | None = None,
) -> T:
    """Await ``call()``, repeating it with bounded backoff while it fails in a way ``retry_if``
    calls transient, for at most ``window`` seconds; then raise as :func:`translate_nats_errors`.

    A compare-and-set conflict, a closed connection or any other error is raised at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    backoff = _FIRST_BACKOFF
    attempt = 1
    while True:
        try:
            result = await call()
        except nats.errors.Error as exc:
            if (
                _is_wrong_last_sequence(exc)
                or not retry_if(exc)
                or loop.time() + backoff > deadline
            ):
                raise _translate(exc, subject=subject, key=key, url=url) from exc
            log.debug(
                "bus_call_retrying", subject=subject, key=key, attempt=attempt, error=repr(exc)
            )
            await asyncio.sleep(backoff)  # backoff between real attempts, not a wait for time
            backoff = min(backoff * 2, _MAX_BACKOFF)
            attempt += 1
            continue
        if attempt > 1:
            log.info("bus_call_recovered", subject=subject, key=key, attempts=attempt)
        return result


def _translate(
    exc: nats.errors.Error, *, subject: str | None, key: str | None, url: str | None
) -> BusError:
    where = _describe(subject=subject, key=key)
    if _is_wrong_last_sequence(exc):
        return RevisionConflictError(
            f"revision conflict{where}: another writer changed it first; reload and retry",
            key=key or "",
        )
    if isinstance(exc, _UNAVAILABLE):
        target = url or "the configured NATS server"
        return BusUnavailableError(
            f"NATS is unavailable at {target}{where}: {exc}; check that the server is running "
            "and TRIGGERBUS_NATS_URL points at it",
            url=url or "",
        )
    if isinstance(exc, nats.errors.MaxPayloadError):
        return PayloadTooLargeError(
            f"message too large{where}: larger than the server's max_payload", subject=subject
        )
    if isinstance(exc, nats.errors.TimeoutError):
        denial = _recent_denial()
        if denial is not None:
            return BusError(
                f"NATS did not answer in time{where}: the server refused a request just "
                f"before ({denial}); the NATS user lacks a permission (docs/operations.md, "
                "\"NATS permissions\", lists what each role needs)",
                subject=subject,
            )
        return BusError(f"NATS did not answer in time{where}: {exc}", subject=subject)
    return BusError(f"NATS call failed{where}: {exc}", subject=subject)


def _is_wrong_last_sequence(exc: nats.errors.Error) -> bool:
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return True
    return isinstance(exc, nats.js.errors.APIError) and (
        getattr(exc, "err_code", None) in _WRONG_LAST_SEQUENCE_CODES
    )


def _describe(*, subject: str | None, key: str | None) -> str:
    parts = []
    if subject:
        parts.append(f"subject {subject!r}")
    if key:
        parts.append(f"key {key!r}")
    return f" on {', '.join(parts)}" if parts else ""
