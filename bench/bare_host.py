"""The bare step anchor's other process: an execution host reduced to its three bus operations.

``python -m bench.bare_host URL PREFIX [three|atomic|core]``; prints ``ready`` once its
standing pull is asked for, exits on SIGTERM or when its stdin closes. For each message
delivered from the mailbox stream it does what a triggerbus execution host does on the bus for
one step, with nothing else: a compare-and-set write to a KV-like stream, then a publish of the
next invocation into the run stream (awaiting both acks), then the delivery's ack. The driver
(``bare_step`` in bench/benchmarks.py) plays the worker and creates the streams and consumers.

``atomic``: the compare-and-set and the invocation go out as one atomic batch (ADR-50,
nats-server 2.12+) into one stream that holds both: the only way NATS offers to make a step two
durable operations instead of three, measured to show what that would be worth.

``core``: the completion arrives by core NATS request instead of from the mailbox stream, and is
answered once the compare-and-set and the invocation are stored: what handing a chunk's outcome
to an execution host in another process would leave of a step.
"""

from __future__ import annotations

import asyncio
import json
import sys

import nats

from bench._common import ready_until_stopped

SNAPSHOT = b"s" * 2_600
"""About the size of a timed_chain snapshot mid-execution (2.0-3.2 KB)."""
INVOCATION = b"i" * 500
"""About the size of a timed_chain invocation."""
PULL_BATCH = 1_000_000
PULL_EXPIRES_NS = 600 * 10**9


async def main(url: str, prefix: str, mode: str = "three") -> None:
    nc = await nats.connect(url, name="bench-bare-host")
    js = nc.jetstream()
    revision = 0
    handled = 0

    async def store_and_invoke() -> None:
        """The snapshot's compare-and-set, then the next invocation, both acks awaited."""
        nonlocal revision, handled
        handled += 1
        ack = await js.publish(f"{prefix}.bare.kv.execution", SNAPSHOT,
                               headers={"Nats-Expected-Last-Subject-Sequence": str(revision)})
        revision = ack.seq
        await js.publish(f"{prefix}.bare.run", INVOCATION,
                         headers={"Nats-Msg-Id": f"run:{handled}"})

    async def step(msg) -> None:
        await store_and_invoke()
        await msg.ack()

    async def atomic_step(msg) -> None:
        nonlocal revision, handled
        handled += 1
        batch = f"step-{handled}"
        # The batch's first message needs no reply: only the commit is acknowledged.
        await nc.publish(f"{prefix}.bare.ex.kv.execution", SNAPSHOT,
                         headers={"Nats-Batch-Id": batch, "Nats-Batch-Sequence": "1",
                                  "Nats-Expected-Last-Subject-Sequence": str(revision)})
        reply = await nc.request(f"{prefix}.bare.ex.run", INVOCATION, timeout=5,
                                 headers={"Nats-Batch-Id": batch, "Nats-Batch-Sequence": "2",
                                          "Nats-Batch-Commit": "1",
                                          "Nats-Msg-Id": f"run:{handled}"})
        ack = json.loads(reply.data)
        if "error" in ack:
            raise RuntimeError(f"atomic batch refused: {ack['error']}")
        revision = ack["seq"] - 1  # the snapshot is the batch's first message
        await msg.ack()

    async def core_step(msg) -> None:
        await store_and_invoke()
        await msg.respond(b"stored")

    if mode == "core":
        await nc.subscribe(f"{prefix}.bare.outcome", cb=core_step)
        await nc.flush()
        await ready_until_stopped()
        await nc.drain()
        return
    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=atomic_step if mode == "atomic" else step)
    request = {"batch": PULL_BATCH, "expires": PULL_EXPIRES_NS}
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{prefix}_bare_mail.host",
                     json.dumps(request).encode(), reply=inbox)
    await nc.flush()
    await ready_until_stopped()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
