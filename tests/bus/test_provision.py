"""Provisioning creates what is missing, repeats harmlessly, and reports drift."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import RetentionPolicy, StreamConfig

from triggerbus.bus.connection import ConnectOptions, connect
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.provision import StoragePolicy, provision
from triggerbus.bus.subjects import Subjects
from triggerbus.errors import ProvisioningDriftError


async def test_provisioning_twice_creates_streams_and_bucket_once(
    nats_url: str, prefix: str
) -> None:
    subjects = Subjects(prefix)
    async with asyncio.timeout(20):
        first = await Bus.open(ConnectOptions(servers=[nats_url]), subjects)
        second = await Bus.open(ConnectOptions(servers=[nats_url]), subjects)
        names = {info.config.name for info in await first.js.streams_info()}
        await first.close()
        await second.close()
    assert {
        subjects.run_stream,
        subjects.exec_stream,
        subjects.stream_stream,
        subjects.dlq_stream,
    } <= names
    assert f"KV_{subjects.executions_bucket}" in names


async def test_existing_stream_with_other_retention_is_reported_not_overwritten(
    nats_url: str, prefix: str
) -> None:
    subjects = Subjects(prefix)
    async with asyncio.timeout(20):
        nc = await connect(ConnectOptions(servers=[nats_url]))
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=subjects.run_stream,
                subjects=[subjects.all_runs()],
                retention=RetentionPolicy.LIMITS,
            )
        )
        with pytest.raises(ProvisioningDriftError) as caught:
            await provision(js, subjects, StoragePolicy())
        info = await js.stream_info(subjects.run_stream)
        await nc.close()
    assert caught.value.name == subjects.run_stream
    assert "retention" in caught.value.differences
    assert "retention" in str(caught.value)
    assert info.config.retention == RetentionPolicy.LIMITS


async def test_every_stream_and_the_bucket_take_more_than_the_servers_default_consumers(
    nats_url: str, prefix: str
) -> None:
    """nats-server 2.15 caps a stream that sets no limit at 1,000 consumers; triggerbus makes
    one per runtime-stream reader and per get_result wait, so it sets its own."""
    subjects = Subjects(prefix)
    async with asyncio.timeout(60):
        bus = await Bus.open(ConnectOptions(servers=[nats_url]), subjects)
        try:
            limits = {
                info.config.name: info.config.max_consumers
                for info in await bus.js.streams_info()
                if (info.config.name or "").startswith(prefix)
                or info.config.name == f"KV_{subjects.executions_bucket}"
            }
            # 1,001 watches of one key at once: each is a consumer of the bucket's stream.
            key = f"flow.{prefix}"
            await bus.kv.put(key, b"{}")
            watches = [bus.watch(key) for _ in range(1001)]
            firsts = await asyncio.gather(*(anext(watch) for watch in watches))
            await asyncio.gather(*(watch.aclose() for watch in watches))
        finally:
            await bus.close()
    assert len(limits) >= 5, limits
    assert set(limits.values()) == {StoragePolicy().max_consumers}
    assert len(firsts) == 1001


async def test_a_stream_left_at_the_servers_default_is_raised(nats_url: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    async with asyncio.timeout(20):
        nc = await connect(ConnectOptions(servers=[nats_url]))
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=subjects.stream_stream,
                subjects=[subjects.all_streams()],
                retention=RetentionPolicy.LIMITS,
                max_age=StoragePolicy().stream_max_age,
                allow_direct=True,
            )
        )
        before = (await js.stream_info(subjects.stream_stream)).config.max_consumers
        await provision(js, subjects, StoragePolicy(max_consumers=5000))
        after = (await js.stream_info(subjects.stream_stream)).config.max_consumers
        await nc.close()
    assert before in (-1, 0, 1000)
    assert after == 5000
