"""Clustered NATS: replicated provisioning, and JetStream calls that ride out a leader's death."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.js.api import KeyValueConfig

from triggerbus.bus.connection import ConnectOptions, connect
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.provision import StoragePolicy
from triggerbus.bus.subjects import Subjects
from triggerbus.config import Settings
from triggerbus.errors import ConfigurationError, ProvisioningDriftError, RevisionConflictError
from triggerbus.testing import nats_cluster

REPLICATED = StoragePolicy(replicas=3)


class TestReplicatedProvisioning:
    async def test_every_stream_and_the_bucket_get_three_replicas(
        self, tmp_path: Path, prefix: str
    ) -> None:
        subjects = Subjects(prefix)
        async with asyncio.timeout(30), nats_cluster(3, str(tmp_path)) as cluster:
            bus = await Bus.open(ConnectOptions(servers=cluster.urls), subjects, storage=REPLICATED)
            try:
                infos = {info.config.name: info for info in await bus.js.streams_info()}
            finally:
                await bus.close()
        replicas = {name: info.config.num_replicas for name, info in infos.items()}
        assert replicas == {
            subjects.run_stream: 3,
            subjects.exec_stream: 3,
            subjects.stream_stream: 3,
            subjects.dlq_stream: 3,
            subjects.timer_stream: 3,
            f"KV_{subjects.executions_bucket}": 3,
        }
        assert all(info.cluster and info.cluster.leader in cluster.names for info in infos.values())

    async def test_bucket_with_other_replicas_is_reported_as_drift(
        self, tmp_path: Path, prefix: str
    ) -> None:
        subjects = Subjects(prefix)
        async with asyncio.timeout(30), nats_cluster(3, str(tmp_path)) as cluster:
            nc = await connect(ConnectOptions(servers=cluster.urls))
            try:
                await nc.jetstream().create_key_value(
                    KeyValueConfig(bucket=subjects.executions_bucket, replicas=1)
                )
            finally:
                await nc.close()
            with pytest.raises(ProvisioningDriftError) as caught:
                await Bus.open(ConnectOptions(servers=cluster.urls), subjects, storage=REPLICATED)
        assert caught.value.differences == {"num_replicas": (3, 1)}

    async def test_replicas_a_single_server_cannot_hold_say_which_setting_to_change(
        self, nats_url: str, prefix: str
    ) -> None:
        async with asyncio.timeout(20):
            with pytest.raises(ConfigurationError, match="TRIGGERBUS_REPLICAS=3"):
                await Bus.open(
                    ConnectOptions(servers=[nats_url]), Subjects(prefix), storage=REPLICATED
                )

    def test_replicas_setting_is_read_from_the_environment(self) -> None:
        assert Settings.from_env({}).replicas == 1
        assert Settings.from_env({"TRIGGERBUS_REPLICAS": "3"}).replicas == 3
        with pytest.raises(ConfigurationError, match="TRIGGERBUS_REPLICAS"):
            Settings.from_env({"TRIGGERBUS_REPLICAS": "0"})


class TestLeaderLoss:
    async def test_calls_ride_out_the_death_of_the_leader_and_keep_their_semantics(
        self, tmp_path: Path, prefix: str
    ) -> None:
        """Publishes with an id, KV reads and CAS writes retry through the election that follows
        a SIGKILLed leader; a retried publish is stored once, a stale CAS still conflicts."""
        subjects = Subjects(prefix)
        mailbox = subjects.mailbox("f", "e1")
        async with asyncio.timeout(60), nats_cluster(3, str(tmp_path)) as cluster:
            bus = await Bus.open(ConnectOptions(servers=cluster.urls), subjects, storage=REPLICATED)
            try:
                revision = await bus.store("f.e1", b"v1", revision=None)
                await bus.publish(mailbox, b"0", msg_id="m0")
                victim = await cluster.leader_of(subjects.exec_stream)
                assert victim is not None
                cluster.kill(victim)
                for n in range(1, 6):
                    await bus.publish(mailbox, str(n).encode(), msg_id=f"m{n}")
                assert not await bus.publish_once(mailbox, b"1", msg_id="m1")
                assert await bus.load("f.e1") == (b"v1", revision)
                await bus.store("f.e1", b"v2", revision=revision)
                with pytest.raises(RevisionConflictError):
                    await bus.store("f.e1", b"v3", revision=revision)
                info = await bus.js.stream_info(subjects.exec_stream)
                successor = await cluster.leader_of(subjects.exec_stream)
            finally:
                await bus.close()
        assert info.state.messages == 6
        assert successor not in (None, victim)
