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
