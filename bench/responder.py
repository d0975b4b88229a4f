"""The request/reply anchor's other process: answers every request on a subject with its payload.

``python -m bench.responder URL SUBJECT``; prints ``ready`` once subscribed and flushed, exits on
SIGTERM or when its stdin closes.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats


async def main(url: str, subject: str) -> None:
    nc = await nats.connect(url, name="bench-responder")

    async def answer(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=answer)
    await nc.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
