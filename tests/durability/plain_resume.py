"""Publish resume messages as a service in another language would: nats-py and JSON only.

Deliberately imports nothing of triggerbus. Usage:

    python plain_resume.py NATS_URL SUBJECT MESSAGES_JSON

MESSAGES_JSON is a list of {"message": {...}, "msg_id": "..."}; each message gets a fresh
reply inbox as its ``reply_to``. Prints one JSON line per message: whether JetStream dropped
it as a duplicate, and the reply (``null`` when none is expected).
"""

from __future__ import annotations

import asyncio
import json
import sys

import nats


async def main(url: str, subject: str, messages: list[dict]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for entry in messages:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            body = {**entry["message"], "reply_to": inbox}
            ack = await js.publish(
                subject, json.dumps(body).encode(), headers={"Nats-Msg-Id": entry["msg_id"]}
            )
            reply = None
            if not ack.duplicate:
                reply = json.loads((await sub.next_msg(timeout=20)).data)
            await sub.unsubscribe()
            print(json.dumps({"duplicate": bool(ack.duplicate), "reply": reply}), flush=True)
    finally:
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
