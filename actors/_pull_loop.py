"""The fetch loop both hosts share: take as many messages as there are free permits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from triggerbus.bus.jetstream import Delivery, PullConsumer


async def pull_with_permits(
    consumer: PullConsumer,
    capacity: int,
    stopping: asyncio.Event,
    dispatch: Callable[[Delivery, asyncio.Semaphore], None],
) -> None:
    """Fetch while not stopping, never holding more than ``capacity`` messages at once.

    Each fetched message takes a permit that ``dispatch`` hands to whoever handles it, and that
    handler releases when it has settled the message; fetching waits for at least one free
    permit and asks for as many messages as there are free permits.
    """
    permits = asyncio.Semaphore(capacity)
    while not stopping.is_set():
        await permits.acquire()
        free = 1
        while free < capacity and not permits.locked():
            await permits.acquire()
            free += 1
        deliveries = await consumer.fetch_until(free, stopping)
        for _ in range(free - len(deliveries)):
            permits.release()
        for delivery in deliveries:
            dispatch(delivery, permits)
