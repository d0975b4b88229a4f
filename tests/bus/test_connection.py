"""Connecting to NATS: fail fast at first, reconnect forever after, refuse unfit servers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from triggerbus.bus._errors import translate_nats_errors
from triggerbus.bus.connection import ConnectOptions, connect
from triggerbus.bus.embedded import EmbeddedServer
from triggerbus.config import Settings
from triggerbus.errors import (
    BusError,
    BusUnavailableError,
    ConfigurationError,
    RevisionConflictError,
    ServerTooOldError,
)


@asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    async with asyncio.timeout(10):
        nc = await connect(ConnectOptions(servers=[url]))
    try:
        yield nc
    finally:
        async with asyncio.timeout(10):
            await nc.close()


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL where nothing listens: the port stays bound, so no one else takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"


class TestConnect:
    async def test_connects_to_a_jetstream_server(self, nats_url: str):
        async with client(nats_url) as nc, asyncio.timeout(10):
            info = await nc.jetstream().account_info()
        assert info.limits is not None
        # Connected clients must never give up reconnecting (the first connect does, quickly).
        assert nc.options["max_reconnect_attempts"] == -1

    async def test_dead_port_raises_bus_unavailable_naming_the_url_quickly(self, dead_url: str):
        started = time.monotonic()
        with pytest.raises(BusUnavailableError) as info:
            async with asyncio.timeout(10):
                await connect(ConnectOptions(servers=[dead_url]))

        assert time.monotonic() - started < 5
        assert info.value.url == dead_url
        assert dead_url in str(info.value)

    async def test_server_without_jetstream_is_refused(self):
        with EmbeddedServer(jetstream=False) as server:
            with pytest.raises(ServerTooOldError, match="-js"):
                async with asyncio.timeout(10):
                    await connect(ConnectOptions(servers=[server.url]))

    async def test_missing_tls_file_is_a_configuration_error(self, nats_url: str, tmp_path: Path):
        options = ConnectOptions(servers=[nats_url], tls_ca_file=str(tmp_path / "missing.pem"))
        with pytest.raises(ConfigurationError, match=r"missing\.pem"):
            async with asyncio.timeout(10):
                await connect(options)

    async def test_client_reconnects_after_the_server_restarts(self, tmp_path: Path, prefix: str):
        store_dir = str(tmp_path / "store")
        with EmbeddedServer(store_dir=store_dir) as first:
            async with client(first.url) as nc:
                js = nc.jetstream()
                async with asyncio.timeout(10):
                    await js.add_stream(name=prefix, subjects=[f"{prefix}.>"])
                first.stop()
                with EmbeddedServer(store_dir=store_dir, port=first.port):
                    async with asyncio.timeout(15):
                        ack = await publish_until_acked(js, f"{prefix}.after", b"restart")
                        info = await js.stream_info(prefix)
        assert ack.seq == 1
        assert info.state.messages == 1


async def publish_until_acked(js: JetStreamContext, subject: str, payload: bytes) -> PubAck:
    """Publish as a producer must across a reconnect: retry with the same message id.

    A publish written before the client noticed the old server's close is lost; the retry
    carries the same ``Nats-Msg-Id``, so JetStream stores the message once.
    """
    while True:
        try:
            return await js.publish(
                subject, payload, timeout=1, headers={"Nats-Msg-Id": f"{subject}:1"}
            )
        except nats.errors.TimeoutError:
            continue


class TestConnectOptions:
    def test_from_settings_splits_urls_and_carries_credentials(self):
        settings = Settings(user="alice", password="s3cret", connect_name="worker-1")
        options = ConnectOptions.from_settings(settings, "nats://a:4222, nats://b:4222")

        assert options.servers == ("nats://a:4222", "nats://b:4222")
        assert (options.user, options.password, options.name) == ("alice", "s3cret", "worker-1")

    def test_repr_and_display_url_hide_secrets(self):
        options = ConnectOptions(servers=["nats://bob:hunter2@h:4222"], token=None)
        secret = ConnectOptions(servers=["nats://h:4222"], token="tok-123")

        assert "hunter2" not in options.display_url
        assert "tok-123" not in repr(secret)

    def test_more_than_one_kind_of_credentials_is_refused(self):
        with pytest.raises(ConfigurationError, match="more than one kind"):
            ConnectOptions(servers=["nats://h:4222"], token="t", creds_file="/x.creds")

    def test_no_server_url_is_refused(self):
        with pytest.raises(ConfigurationError, match="no NATS server URL"):
            ConnectOptions(servers=[" , "])


class TestTranslateNatsErrors:
    async def test_kv_update_with_stale_revision_raises_revision_conflict(
        self, nats_url: str, prefix: str
    ):
        async with client(nats_url) as nc, asyncio.timeout(10):
            kv = await nc.jetstream().create_key_value(bucket=f"{prefix}_kv")
            first = await kv.put("exec.1", b"v1")
            await kv.update("exec.1", b"v2", last=first)

            with pytest.raises(RevisionConflictError) as info:
                with translate_nats_errors(key="exec.1"):
                    await kv.update("exec.1", b"stale", last=first)

        assert info.value.key == "exec.1"
        assert "reload and retry" in str(info.value)

    async def test_publish_on_closed_connection_raises_bus_unavailable(
        self, nats_url: str, prefix: str
    ):
        async with client(nats_url) as nc:
            pass
        with pytest.raises(BusUnavailableError) as info:
            with translate_nats_errors(subject=f"{prefix}.x", url=nats_url):
                await nc.publish(f"{prefix}.x", b"late")
        assert info.value.url == nats_url

    async def test_request_without_responders_raises_bus_error_naming_the_subject(
        self, nats_url: str, prefix: str
    ):
        subject = f"{prefix}.nobody"
        async with client(nats_url) as nc, asyncio.timeout(10):
            with pytest.raises(BusError) as info:
                with translate_nats_errors(subject=subject):
                    await nc.request(subject, b"?", timeout=5)
        assert info.value.subject == subject
        assert subject in str(info.value)

    def test_other_exceptions_pass_through_untouched(self):
        with pytest.raises(ValueError, match="not ours"):
            with translate_nats_errors(subject="x"):
                raise ValueError("not ours")
