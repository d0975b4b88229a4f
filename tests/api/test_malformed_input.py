"""Bad input published by hand never crashes an actor and never vanishes: it is dead-lettered
with its reason (and answered where a reply subject exists), and other executions carry on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats

from tests._helpers import load_module
from triggerbus.bus.subjects import MAILBOX_DLQ, Subjects


async def _dead_letters(js: Any, subject: str, count: int) -> list[dict[str, Any]]:
    sub = await js.subscribe(subject, ordered_consumer=True)
    letters: list[dict[str, Any]] = []
    try:
        while len(letters) < count:
            msg = await sub.next_msg(timeout=None)
            letters.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return letters


async def test_malformed_messages_are_dead_lettered_and_others_unaffected(
    runtime, nats_url: str, prefix: str
) -> None:
    flow = load_module("tests/flows/echo.py", "echo_malformed").flow
    subjects = Subjects(prefix)
    name = flow.name
    async with asyncio.timeout(60):
        # An execution that is already running when the garbage arrives.
        before = flow.create_execution(auto_close=False)
        await before.async_start("before")

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        try:
            await js.publish(subjects.mailbox(name, "e1"), b"this is not json")
            await js.publish(
                subjects.mailbox(name, "e2"),
                json.dumps(
                    {
                        "kind": "emit",
                        "id": "e2:x",
                        "execution_id": "e2",
                        "event": 5,
                        "reply_to": inbox,
                    }
                ).encode(),
            )
            await js.publish(
                subjects.mailbox(name, "e3"),
                json.dumps(
                    {"kind": "launch_missiles", "id": "e3:x", "execution_id": "e3"}
                ).encode(),
            )
            await js.publish(
                subjects.mailbox(name, "e4"),
                json.dumps(
                    {"kind": "start", "id": "e5:start", "execution_id": "e5", "reply_to": inbox}
                ).encode(),
            )
            await js.publish(subjects.run(name, "echo"), b'{"kind": "invoke", "step": "one"}')

            reply_one = json.loads((await replies.next_msg(timeout=None)).data)
            reply_two = json.loads((await replies.next_msg(timeout=None)).data)
            mailbox_letters = await _dead_letters(js, subjects.dead_letter(name, MAILBOX_DLQ), 4)
            run_letters = await _dead_letters(js, subjects.dead_letter(name, "echo"), 1)
        finally:
            await nc.drain()

        # The running execution and a new one both still work.
        assert await before.async_emit("nothing-listens") is None
        closed = await before.async_close()
        fresh = await flow.async_start("after")

    for reply in (reply_one, reply_two):
        assert reply["ok"] is False
        assert reply["error"]["error_type"] == "ContractError"
    reasons = {letter["execution_id"]: letter["reason"] for letter in mailbox_letters}
    assert "not a JSON message" in reasons["e1"]
    assert "$.event" in reasons["e2"]
    assert "launch_missiles" in reasons["e3"]
    assert "does not match the subject" in reasons["e4"]
    assert mailbox_letters[0]["data"] == "this is not json"
    assert "$.step" in run_letters[0]["reason"] or "Object missing" in run_letters[0]["reason"]
    assert closed == {"$final_result": "before"}
    assert fresh == {"$final_result": "after"}


def test_an_execution_id_that_is_not_a_subject_token_is_refused_at_once() -> None:
    """A caller-chosen id must be one subject token (and never one of our KV keys)."""
    import pytest

    from triggerbus import ExecutionError, TriggerFlow

    flow = TriggerFlow(name="id_check")
    for bad in ("a.b", "=flow_data", "", "x" * 201, "sp ace"):
        with pytest.raises(ExecutionError, match="must be 1-200 letters"):
            flow.create_execution(execution_id=bad)
    assert flow.create_execution(idempotency_key="any string: fine").id.startswith("k")


async def test_a_start_published_for_an_invalid_execution_id_is_refused_with_a_reply(
    runtime, nats_url: str, prefix: str
) -> None:
    """A hand-made start whose subject token is not a valid execution id (here it would land
    on the flow-data key) is answered with an error and dead-lettered, never stored."""
    flow = load_module("tests/flows/echo.py", "echo_bad_id").flow
    subjects = Subjects(prefix)
    async with asyncio.timeout(30):
        await flow.async_start("warm-up")  # hosts the flow
        nc = await nats.connect(nats_url)
        try:
            inbox = nc.new_inbox()
            replies = await nc.subscribe(inbox)
            start = {"kind": "start", "id": "s", "execution_id": "=flow_data", "reply_to": inbox}
            await nc.jetstream().publish(
                subjects.mailbox(flow.name, "=flow_data"), json.dumps(start).encode()
            )
            reply = json.loads((await replies.next_msg(timeout=None)).data)
        finally:
            await nc.drain()
    assert reply["ok"] is False
    assert "must be 1-200 letters" in reply["error"]["message"]
