"""Standing pull requests: bounded credit, renewal after expiry, recovery after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from triggerbus.bus.connection import ConnectOptions
from triggerbus.bus.embedded import EmbeddedServer
from triggerbus.bus.jetstream import Bus, Delivery, PullConsumer
from triggerbus.bus.provision import ConsumerPolicy
from triggerbus.bus.pull import Permits, StandingPull
from triggerbus.bus.replies import JS_API
from triggerbus.bus.subjects import Subjects
from triggerbus.testing import unique_prefix


async def _open(url: str, prefix: str) -> Bus:
    async with asyncio.timeout(10):
        return await Bus.open(ConnectOptions(servers=[url]), Subjects(prefix))


@pytest.fixture
async def bus(nats_url: str, prefix: str) -> AsyncIterator[Bus]:
    opened = await _open(nats_url, prefix)
    try:
        yield opened
    finally:
        async with asyncio.timeout(10):
            await opened.close()


async def _consumer(bus: Bus, chunk: str = "c") -> tuple[PullConsumer, str, str]:
    subjects = bus.subjects
    durable = subjects.run_consumer("f", chunk)
    consumer = await bus.pull_consumer(
        stream=subjects.run_stream,
        durable=durable,
        filter_subject=subjects.run("f", chunk),
        policy=ConsumerPolicy(ack_wait=30.0),
    )
    next_subject = f"{JS_API}.CONSUMER.MSG.NEXT.{subjects.run_stream}.{durable}"
    return consumer, subjects.run("f", chunk), next_subject


async def test_never_holds_more_than_its_capacity(bus: Bus) -> None:
    consumer, subject, _ = await _consumer(bus)
    total, capacity = 60, 4
    for n in range(total):
        await bus.publish(subject, str(n).encode(), msg_id=f"m{n}")
    stopping, done = asyncio.Event(), asyncio.Event()
    held, most, seen = 0, 0, []

    async def handle(delivery: Delivery, permits: Permits) -> None:
        nonlocal held
        await delivery.ack()
        held -= 1
        seen.append(int(delivery.data))
        permits.release()
        if len(seen) == total:
            done.set()

    def dispatch(delivery: Delivery, permits: Permits) -> None:
        nonlocal held, most
        held += 1
        most = max(most, held)
        asyncio.get_running_loop().create_task(handle(delivery, permits))

    feed = asyncio.create_task(consumer.deliver(capacity, stopping, dispatch))
    async with asyncio.timeout(15):
        await done.wait()
        stopping.set()
        await feed
    assert sorted(seen) == list(range(total))
    assert 1 < most <= capacity


async def test_requests_are_renewed_when_they_expire(bus: Bus) -> None:
    """An idle consumer's requests run out (408) and are asked for again, so a message stored
    long after the first request is still delivered."""
    _, subject, next_subject = await _consumer(bus)
    asks: list[bytes] = []
    renewed = asyncio.Event()

    async def on_ask(msg: Msg) -> None:
        asks.append(msg.data)
        if len(asks) >= 3:
            renewed.set()

    spy = await bus.nc.subscribe(next_subject, cb=on_ask)
    pull = StandingPull(bus.nc, next_subject, "test", capacity=2, expires=0.3, heartbeat=0.1)
    stopping, delivered = asyncio.Event(), asyncio.Queue[bytes]()

    def dispatch(msg: Msg, permits: Permits) -> None:
        delivered.put_nowait(msg.data)
        permits.release()

    feed = asyncio.create_task(pull.run(stopping, dispatch))
    try:
        async with asyncio.timeout(10):
            await renewed.wait()  # two requests expired and were renewed
            await bus.publish(subject, b"late", msg_id="late")
            assert await delivered.get() == b"late"
    finally:
        stopping.set()
        async with asyncio.timeout(10):
            await feed
        await spy.unsubscribe()
    assert all(b'"batch":2' in ask for ask in asks)


async def test_requests_a_crashed_server_forgot_are_asked_again(tmp_path: Path) -> None:
    """A crashed and restarted server holds no pull requests and said nothing about them: the
    reconnect alone (long before heartbeat silence or expiry would tell) makes the consumer
    ask again."""
    store = str(tmp_path / "store")
    first = EmbeddedServer(store_dir=store)
    url = first.start()
    second: EmbeddedServer | None = None
    bus = await _open(url, unique_prefix())
    stopping, delivered = asyncio.Event(), asyncio.Queue[Msg]()
    try:
        _, subject, next_subject = await _consumer(bus)
        pull = StandingPull(bus.nc, next_subject, "test", capacity=4, expires=60, heartbeat=30)

        def dispatch(msg: Msg, permits: Permits) -> None:
            delivered.put_nowait(msg)
            permits.release()

        feed = asyncio.create_task(pull.run(stopping, dispatch))
        async with asyncio.timeout(10):
            await bus.publish(subject, b"before", msg_id="before")
            before = await delivered.get()
            assert before.data == b"before"
            await before.ack_sync()  # stored as acked before the crash: not redelivered
        first.kill()
        second = EmbeddedServer(store_dir=store, port=first.port)
        second.start()
        async with asyncio.timeout(20):
            await bus.publish(subject, b"after", msg_id="after")  # retried until reconnected
        async with asyncio.timeout(5):  # far less than the 60 s a forgotten request would take
            assert (await delivered.get()).data == b"after"
        stopping.set()
        async with asyncio.timeout(10):
            await feed
    finally:
        stopping.set()
        async with asyncio.timeout(10):
            await bus.close()
        first.stop()
        if second is not None:
            second.stop()


async def test_a_slot_released_when_nothing_is_asked_for_is_asked_for_at_once(bus: Bus) -> None:
    """All slots busy and every request filled: the first slot freed is asked for again right
    away, not at the next periodic check (an hour away here)."""
    _, subject, next_subject = await _consumer(bus)
    for n in range(5):
        await bus.publish(subject, b"%d" % n, msg_id=f"busy{n}")
    pull = StandingPull(
        bus.nc, next_subject, "test", capacity=4, expires=7200, heartbeat=3600, recheck=3600
    )
    stopping, delivered = asyncio.Event(), asyncio.Queue[tuple[Msg, Permits]]()

    def dispatch(msg: Msg, permits: Permits) -> None:
        delivered.put_nowait((msg, permits))

    feed = asyncio.create_task(pull.run(stopping, dispatch))
    try:
        async with asyncio.timeout(10):
            held = [await delivered.get() for _ in range(4)]  # every slot taken, none asked
            msg, permits = held[0]
            await msg.ack()
            permits.release()
            fifth, _ = await delivered.get()
        assert fifth.data == b"4"
    finally:
        stopping.set()
        async with asyncio.timeout(10):
            await feed
