"""The lean publish path: one ack inbox per connection, same semantics as ``js.publish``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from triggerbus.bus.connection import ConnectOptions
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.replies import PublishAcks
from triggerbus.bus.subjects import Subjects
from triggerbus.errors import BusError, BusUnavailableError, RevisionConflictError


@pytest.fixture
async def bus(nats_url: str, prefix: str) -> AsyncIterator[Bus]:
    async with asyncio.timeout(10):
        opened = await Bus.open(ConnectOptions(servers=[nats_url]), Subjects(prefix))
    try:
        yield opened
    finally:
        async with asyncio.timeout(10):
            await opened.close()


class TestPublish:
    async def test_publish_returns_increasing_sequences_and_dedupes_ids(self, bus: Bus):
        mailbox = bus.subjects.mailbox("f", "e1")
        async with asyncio.timeout(10):
            first = await bus.publish(mailbox, b"a", msg_id="e1:1:0")
            second = await bus.publish(mailbox, b"b", msg_id="e1:2:0")
            assert second > first
            assert await bus.publish_once(mailbox, b"a again", msg_id="e1:1:0") is False
            assert await bus.publish_once(mailbox, b"c", msg_id="e1:3:0") is True
            stored = await bus.first_message(bus.subjects.exec_stream, mailbox)
        assert stored == (first, b"a")

    async def test_many_concurrent_publishes_each_get_their_own_ack(self, bus: Bus):
        mailbox = bus.subjects.mailbox("f", "e2")
        async with asyncio.timeout(20):
            sequences = await asyncio.gather(
                *(bus.publish(mailbox, str(n).encode(), msg_id=f"e2:{n}:0") for n in range(500))
            )
        assert len(set(sequences)) == 500
        assert bus._acks.statistics().waiting == 0

    async def test_an_unanswered_publish_times_out_as_a_bus_error(self, bus: Bus, prefix: str):
        """A subject a plain subscriber listens on (no stream) never acks: the one timer fails
        the publish after the timeout, and the waiting table is left empty."""
        subject = f"{prefix}.silent"
        listener = await bus.subscribe(subject)
        acks = PublishAcks(bus.nc, timeout=0.2)
        await acks.start()
        try:
            async with asyncio.timeout(5):
                results = await asyncio.gather(
                    *(acks.publish(subject, b"?", None) for _ in range(3)),
                    return_exceptions=True,
                )
        finally:
            await acks.stop()
            await listener.close()
        assert all(type(r).__name__ == "TimeoutError" for r in results), results
        assert acks.statistics().waiting == 0

    async def test_publish_after_close_raises_bus_unavailable(self, nats_url: str, prefix: str):
        bus = await Bus.open(ConnectOptions(servers=[nats_url]), Subjects(prefix))
        await bus.close()
        with pytest.raises(BusUnavailableError):
            async with asyncio.timeout(10):
                await bus.publish(bus.subjects.mailbox("f", "e"), b"late", msg_id="x")


class TestPipelinedPublish:
    async def test_a_run_is_stored_in_send_order_and_settles_later(self, bus: Bus):
        subject = bus.subjects.stream("f", "e3")
        async with asyncio.timeout(20):
            sent = [
                await bus.publish_pipelined(subject, str(n).encode(), msg_id=f"e3:{n}")
                for n in range(300)
            ]
            sequences = [await publish.settled() for publish in sent]
            again = await bus.publish_pipelined(subject, b"0 again", msg_id="e3:0")
            repeated = await again.settled()
            stored = [
                await bus.first_message(bus.subjects.stream_stream, subject, from_sequence=s)
                for s in sequences[:3]
            ]
        assert sequences == sorted(sequences) and len(set(sequences)) == 300
        assert repeated == sequences[0]  # a repeated id is the stored copy, not a new one
        assert stored == [(sequences[n], str(n).encode()) for n in range(3)]
        assert bus._acks.statistics().waiting == 0

    async def test_a_first_attempt_that_timed_out_is_retried_at_settle(
        self, bus: Bus, prefix: str
    ):
        """The first send's ack comes too late (an ack timeout of 0); settling retries with the
        same id, as an awaited publish would, and the message is stored once."""
        impatient = PublishAcks(bus.nc, timeout=0.0)
        await impatient.start()
        bus._acks = impatient
        subject = bus.subjects.stream("f", "e4")
        async with asyncio.timeout(20):
            pending = await bus.publish_pipelined(subject, b"once", msg_id="e4:1")
            bus._acks = PublishAcks(bus.nc)
            await bus._acks.start()
            sequence = await pending.settled()
            stored = await bus.first_message(bus.subjects.stream_stream, subject)
            second = await bus.first_message(
                bus.subjects.stream_stream, subject, from_sequence=sequence + 1
            )
            await impatient.stop()
        assert stored == (sequence, b"once") and second is None


class TestCompareAndSet:
    async def test_store_then_stale_revision_conflicts(self, bus: Bus):
        async with asyncio.timeout(10):
            first = await bus.store("f.e1", b"v1", revision=None)
            second = await bus.store("f.e1", b"v2", revision=first)
            with pytest.raises(RevisionConflictError) as info:
                await bus.store("f.e1", b"stale", revision=first)
            assert await bus.load("f.e1") == (b"v2", second)
        assert info.value.key == "f.e1"

    async def test_create_of_an_existing_key_conflicts(self, bus: Bus):
        async with asyncio.timeout(10):
            await bus.store("f.e2", b"v1", revision=None)
            with pytest.raises(RevisionConflictError):
                await bus.store("f.e2", b"again", revision=None)

    async def test_create_over_a_deleted_key_succeeds(self, bus: Bus):
        """A deleted key leaves a tombstone; creating it again is allowed, as in NATS KV."""
        async with asyncio.timeout(10):
            await bus.store("f.e3", b"v1", revision=None)
            await bus.kv.delete("f.e3")
            revision = await bus.store("f.e3", b"v2", revision=None)
            assert await bus.load("f.e3") == (b"v2", revision)

    async def test_invalid_key_is_refused_before_anything_is_sent(self, bus: Bus):
        with pytest.raises(BusError, match="invalid KV key"):
            await bus.store("f.bad key", b"v", revision=None)


class TestFirstMessage:
    async def test_walks_one_subject_from_a_sequence_and_says_none_at_the_end(self, bus: Bus):
        stream = bus.subjects.exec_stream
        mine, other = bus.subjects.mailbox("f", "e1"), bus.subjects.mailbox("f", "e2")
        async with asyncio.timeout(10):
            assert await bus.first_message(stream, mine) is None
            first = await bus.publish(mine, b"\x00one", msg_id="1")
            await bus.publish(other, b"not mine", msg_id="2")
            third = await bus.publish(mine, b"three", msg_id="3")
            assert await bus.first_message(stream, mine) == (first, b"\x00one")
            assert await bus.first_message(stream, mine, from_sequence=first + 1) == (
                third,
                b"three",
            )
            assert await bus.first_message(stream, mine, from_sequence=third + 1) is None

    async def test_a_stream_that_does_not_exist_reads_as_empty(self, bus: Bus):
        async with asyncio.timeout(10):
            assert await bus.first_message("no_such_stream", "x.y") is None
