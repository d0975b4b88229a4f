"""Connecting to NATS the way a long-running actor needs.

Once connected, a client reconnects forever and notices a dead peer within seconds; the first
connection, by contrast, fails fast with an error naming the URL, because a wrong URL at
startup is a configuration mistake, not an outage to wait out. A server that is too old or
runs without JetStream is refused at connect rather than failing later in obscure ways.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client

from triggerbus.bus._errors import is_denial, note_denial
from triggerbus.bus.client import BusClient
from triggerbus.errors import (
    BusError,
    BusUnavailableError,
    ConfigurationError,
    ServerTooOldError,
)

from ._errors import call_retrying

if TYPE_CHECKING:
    from triggerbus.config import Settings

log = structlog.get_logger()

__all__ = ["MIN_SERVER_VERSION", "ConnectOptions", "connect"]

MIN_SERVER_VERSION = (2, 10, 0)

# Dead-peer detection: a silent server is declared stale after about
# PING_INTERVAL * MAX_OUTSTANDING_PINGS seconds, then the client reconnects.
PING_INTERVAL = 2
MAX_OUTSTANDING_PINGS = 3
RECONNECT_TIME_WAIT = 1
CONNECT_TIMEOUT = 2
# nats-py treats max_reconnect_attempts <= 0 as "forever" even for the *first* connect, so the
# first connect uses this bound (each server is tried twice) and the client is switched to
# "forever" once connected.
_FIRST_CONNECT_ATTEMPTS = 1
_RECONNECT_FOREVER = -1

# JetStream API error code: "jetstream not enabled for account".
_JS_NOT_ENABLED_FOR_ACCOUNT = 10039
# Seconds one account-info request may take; a cluster without a meta leader does not answer.
_JS_INFO_TIMEOUT = 2.0


@dataclass(frozen=True, kw_only=True)
class ConnectOptions:
    """Where and how to connect, as plain values (built once from :class:`Settings`).

    Attributes:
        servers: Server URLs (a comma-separated string is split); stored as a tuple.
        token, user, password, creds_file, nkey_seed_file: Credentials; at most one kind.
        tls_ca_file, tls_cert_file, tls_key_file: TLS material; any of them turns TLS on.
        name: Client name shown by the server's monitoring.
    """

    servers: Sequence[str]
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    name: str = "triggerbus"

    def __post_init__(self) -> None:
        raw = [self.servers] if isinstance(self.servers, str) else list(self.servers)
        servers = tuple(url.strip() for item in raw for url in item.split(",") if url.strip())
        if not servers:
            raise ConfigurationError("no NATS server URL given; set TRIGGERBUS_NATS_URL")
        object.__setattr__(self, "servers", servers)
        kinds = [
            kind
            for kind, value in (
                ("token", self.token),
                ("user/password", self.user or self.password),
                ("creds file", self.creds_file),
                ("nkey seed file", self.nkey_seed_file),
            )
            if value
        ]
        if len(kinds) > 1:
            raise ConfigurationError(
                f"NATS credentials of more than one kind are set ({', '.join(kinds)}); keep one"
            )
        if self.tls_key_file and not self.tls_cert_file:
            raise ConfigurationError("TRIGGERBUS_NATS_TLS_KEY needs TRIGGERBUS_NATS_TLS_CERT")

    @classmethod
    def from_settings(cls, settings: Settings, url: str) -> ConnectOptions:
        """Options for ``url`` (one URL or a comma-separated list) with the settings' credentials.

        ``url`` is separate from ``settings.nats_url`` because an embedded server's URL is only
        known once it has started.
        """
        return cls(
            servers=[url],
            token=settings.token,
            user=settings.user,
            password=settings.password,
            creds_file=settings.creds_file,
            nkey_seed_file=settings.nkey_seed_file,
            tls_ca_file=settings.tls_ca_file,
            tls_cert_file=settings.tls_cert_file,
            tls_key_file=settings.tls_key_file,
            name=settings.connect_name,
        )

    @property
    def display_url(self) -> str:
        """The server URLs with any password in them masked, for messages and logs."""
        return ",".join(_redact(url) for url in self.servers)


async def connect(options: ConnectOptions) -> Client:
    """Connect to NATS and check that the server can run triggerbus.

    The client reconnects forever after a successful connect, pings every few seconds to
    detect a dead server, and logs disconnects, reconnects and asynchronous errors.

    Args:
        options: Where and how to connect.

    Returns:
        A connected nats-py client; the caller owns it and closes (or drains) it.

    Raises:
        BusUnavailableError: No server answered within a few seconds; names the URL.
        ServerTooOldError: The server is older than 2.10.0 or has JetStream disabled.
        ConfigurationError: The TLS files cannot be loaded.
    """
    url = options.display_url
    nc = BusClient()
    callbacks = _Callbacks(nc, url)
    usable = False
    try:
        await _first_connect(nc, options, callbacks)
        _check_version(nc, url)
        await _check_jetstream(nc, url)
        usable = True
    finally:
        if not usable:  # also on cancellation by the caller's deadline
            await _close_quietly(nc)
    log.info("nats_connected", server=_server_url(nc), name=options.name)
    return nc


async def _first_connect(nc: Client, options: ConnectOptions, callbacks: _Callbacks) -> None:
    try:
        await nc.connect(
            servers=list(options.servers),
            name=options.name,
            allow_reconnect=True,
            max_reconnect_attempts=_FIRST_CONNECT_ATTEMPTS,
            reconnect_time_wait=RECONNECT_TIME_WAIT,
            connect_timeout=CONNECT_TIMEOUT,
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            tls=_tls_context(options),
            **_credentials(options),
            **callbacks.as_kwargs(),
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        cause = callbacks.first_connect_error or exc
        raise BusUnavailableError(
            f"cannot connect to NATS at {options.display_url}: {cause!r}; check that the "
            "server is running and that TRIGGERBUS_NATS_URL and the credentials are right",
            url=options.display_url,
        ) from exc
    nc.options["max_reconnect_attempts"] = _RECONNECT_FOREVER
    callbacks.connected = True


class _Callbacks:
    """nats-py's connection callbacks: log, never raise (an exception would break its loops)."""

    def __init__(self, nc: Client, url: str) -> None:
        self._nc = nc
        self._url = url
        self.connected = False
        self.first_connect_error: BaseException | None = None

    def as_kwargs(self) -> dict[str, Callable[..., Awaitable[None]]]:
        return {
            "error_cb": self.on_error,
            "disconnected_cb": self.on_disconnected,
            "reconnected_cb": self.on_reconnected,
            "closed_cb": self.on_closed,
            "discovered_server_cb": self.on_discovered_server,
            "lame_duck_mode_cb": self.on_lame_duck_mode,
        }

    async def on_error(self, exc: Exception) -> None:
        # Asynchronous errors have no caller to raise into (slow consumer, permissions,
        # failed reconnect attempts); a structured log line is the only place they can go.
        if not self.connected:
            self.first_connect_error = exc
            self._log("debug", "nats_connect_attempt_failed", error=repr(exc))
            return
        if is_denial(exc):
            note_denial(str(exc))
            self._log("warning", "nats_permission_denied", error=str(exc),
                      hint="the NATS user lacks this permission; docs/operations.md, "
                      "\"NATS permissions\", lists what each role needs")  # fmt: skip
            return
        self._log("warning", "nats_async_error", error=repr(exc))

    async def on_disconnected(self) -> None:
        # nats-py also reports a disconnect when the client itself is closed; only an
        # unplanned one is worth a warning.
        if self.connected and not self._nc.is_closed:
            self._log("warning", "nats_disconnected")

    async def on_reconnected(self) -> None:
        self._log("info", "nats_reconnected", server=_server_url(self._nc))

    async def on_closed(self) -> None:
        if not self.connected:
            return
        error = self._nc.last_error
        if error is None:
            self._log("info", "nats_connection_closed")
        else:
            self._log("warning", "nats_connection_closed", error=repr(error))

    async def on_discovered_server(self) -> None:
        self._log("debug", "nats_server_discovered", servers=self._nc.discovered_servers)

    async def on_lame_duck_mode(self) -> None:
        self._log("warning", "nats_server_lame_duck_mode")

    def _log(self, level: str, event: str, **values: object) -> None:
        # A failure to log must not break nats-py's read and reconnect loops.
        with contextlib.suppress(Exception):
            getattr(log, level)(event, url=self._url, **values)


def _check_version(nc: Client, url: str) -> None:
    version = nc.connected_server_version
    try:
        found = (version.major, version.minor, version.patch)
    except ValueError as exc:
        raise ServerTooOldError(
            f"NATS server at {url} reports a version triggerbus cannot read ({exc}); "
            f"use nats-server {_dotted(MIN_SERVER_VERSION)} or newer"
        ) from exc
    if found < MIN_SERVER_VERSION:
        raise ServerTooOldError(
            f"NATS server at {url} is version {_dotted(found)}; triggerbus needs "
            f"{_dotted(MIN_SERVER_VERSION)} or newer"
        )


async def _check_jetstream(nc: Client, url: str) -> None:
    """Ask JetStream for the account's info; a cluster still electing its meta leader (it times
    out, then answers 503) is waited out for up to ``RETRY_WINDOW`` seconds."""
    js = nc.jetstream(timeout=_JS_INFO_TIMEOUT)
    try:
        await call_retrying(
            js.account_info, retry_if=_jetstream_starting, subject="$JS.API.INFO", url=url
        )
    except BusError as exc:
        cause = exc.__cause__
        # No responder at all means JetStream is off; 10039 means it is off for this account.
        if not isinstance(cause, nats.js.errors.ServiceUnavailableError) or cause.err_code not in (
            None,
            _JS_NOT_ENABLED_FOR_ACCOUNT,
        ):
            raise
        raise ServerTooOldError(
            f"NATS server at {url} has JetStream disabled; start nats-server with `-js` "
            "(or enable JetStream for this account in its configuration)"
        ) from cause


def _jetstream_starting(exc: nats.errors.Error) -> bool:
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return exc.err_code not in (None, _JS_NOT_ENABLED_FOR_ACCOUNT)
    return isinstance(exc, nats.errors.TimeoutError)


def _credentials(options: ConnectOptions) -> dict[str, str]:
    pairs = {
        "token": options.token,
        "user": options.user,
        "password": options.password,
        "user_credentials": options.creds_file,
        "nkeys_seed": options.nkey_seed_file,
    }
    return {name: value for name, value in pairs.items() if value}


def _tls_context(options: ConnectOptions) -> ssl.SSLContext | None:
    if not (options.tls_ca_file or options.tls_cert_file):
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.tls_ca_file)
        if options.tls_cert_file:
            context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(
            f"cannot load NATS TLS files (ca={options.tls_ca_file}, "
            f"cert={options.tls_cert_file}, key={options.tls_key_file}): {exc}"
        ) from exc
    return context


async def _close_quietly(nc: Client) -> None:
    """Release a client that failed to become usable; its own error is already on its way."""
    try:
        await nc.close()
    except Exception as exc:
        log.debug("nats_close_after_failed_connect_failed", error=repr(exc))


def _server_url(nc: Client) -> str | None:
    current = nc.connected_url
    return None if current is None else _redact(current.geturl())


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)
