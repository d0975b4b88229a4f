"""The request/reply anchor's other process: answers every request on a subject with its payload.

``python -m bench.responder URL SUBJECT``; prints ``ready`` once subscribed and flushed, exits on
SIGTERM or when its stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

import nats

from bench._common import ready_until_stopped


async def main(url: str, subject: str) -> None:
    nc = await nats.connect(url, name="bench-responder")

    async def answer(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=answer)
    await nc.flush()
    await ready_until_stopped()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
