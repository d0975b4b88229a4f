"""Reading one runtime stream subject: replay then follow, in order; a closed bus ends it."""

from __future__ import annotations

import asyncio

import pytest

from triggerbus.bus.connection import ConnectOptions
from triggerbus.bus.jetstream import Bus
from triggerbus.bus.subjects import Subjects
from triggerbus.errors import BusUnavailableError


async def test_replays_then_follows_in_order_from_a_sequence(nats_url: str, prefix: str) -> None:
    bus = await Bus.open(ConnectOptions(servers=[nats_url]), Subjects(prefix))
    subject = bus.subjects.stream("f", "e1")
    try:
        async with asyncio.timeout(20):
            stored = [await bus.publish(subject, b"%d" % n, msg_id=f"e1:{n}") for n in range(5)]
            reader = bus.read_stream(subject)
            replayed = [await anext(reader) for _ in range(5)]
            later = await bus.publish(subject, b"5", msg_id="e1:5")
            followed = await anext(reader)
            await reader.aclose()
            tail = bus.read_stream(subject, start_sequence=stored[3])
            from_fourth = [await anext(tail) for _ in range(3)]
            await tail.aclose()
    finally:
        await bus.close()
    assert replayed == [(s, b"%d" % n) for n, s in enumerate(stored)]
    assert followed == (later, b"5")
    assert [data for _, data in from_fourth] == [b"3", b"4", b"5"]


async def test_a_reader_waiting_when_the_bus_closes_is_told(nats_url: str, prefix: str) -> None:
    bus = await Bus.open(ConnectOptions(servers=[nats_url]), Subjects(prefix))
    subject = bus.subjects.stream("f", "quiet")
    async with asyncio.timeout(10):
        await bus.publish(subject, b"first", msg_id="quiet:1")
        reader = bus.read_stream(subject)
        assert (await anext(reader))[1] == b"first"  # subscribed: the next read waits
        waiting = asyncio.ensure_future(anext(reader))
        await bus.close()
        with pytest.raises(BusUnavailableError, match="closed while reading"):
            await waiting
