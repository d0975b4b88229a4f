"""A message for an execution that was never started is refused with its own error type,
``ExecutionNotFoundError``: on the wire for a publisher in any language, and as the Python
error of the same name at the handle."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest

from tests._helpers import load_module
from triggerbus import ExecutionNotFoundError

GHOST = "ghost-1"


async def _ask(nc: Any, subject: str, message: dict[str, Any]) -> dict[str, Any]:
    """Publish ``message`` as the wire contract documents it and return the reply."""
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    try:
        body = {**message, "reply_to": inbox}
        await nc.jetstream().publish(
            subject, json.dumps(body).encode(), headers={"Nats-Msg-Id": message["id"]}
        )
        return json.loads((await replies.next_msg(timeout=None)).data)
    finally:
        await replies.unsubscribe()


async def test_a_plain_publisher_gets_execution_not_found_for_an_unknown_execution(
    runtime: Any, nats_url: str, prefix: str
) -> None:
    """Emit, resume and close for an id nobody started: each reply names the refusal by
    ``error_type``, so a service in another language need not read the message text."""
    flow = load_module("tests/flows/echo.py", "echo_unknown_wire").flow
    subject = f"{prefix}.{flow.name}.exec.{GHOST}"
    messages = [
        {"kind": "emit", "v": 1, "id": f"{GHOST}:emit:1", "execution_id": GHOST,
         "event": "Anything"},
        {"kind": "resume", "v": 1, "id": f"{GHOST}:resume:1", "execution_id": GHOST,
         "interrupt_id": "approve"},
        {"kind": "close", "v": 1, "id": f"{GHOST}:close:1", "execution_id": GHOST},
    ]  # fmt: skip
    async with asyncio.timeout(60):
        await flow.async_start("warm-up")  # an execution host of the flow is running
        nc = await nats.connect(nats_url)
        try:
            replies = [await _ask(nc, subject, message) for message in messages]
        finally:
            await nc.drain()
        with pytest.raises(ExecutionNotFoundError):  # and none of them created it
            await flow.create_execution(execution_id=GHOST).async_get_snapshot()
    for reply in replies:
        assert reply["ok"] is False, reply
        assert reply["error"]["error_type"] == "ExecutionNotFoundError", reply
        assert GHOST in reply["error"]["message"]


async def test_the_handle_raises_execution_not_found_for_an_unknown_execution(
    runtime: Any,
) -> None:
    """A handle made with the id of an execution that does not exist raises
    ``ExecutionNotFoundError`` from emit, continue_with and close."""
    flow = load_module("tests/flows/echo.py", "echo_unknown_handle").flow
    async with asyncio.timeout(60):
        await flow.async_start("warm-up")
        ghost = flow.create_execution(execution_id=GHOST)
        with pytest.raises(ExecutionNotFoundError, match="has not been started"):
            await ghost.async_emit("Anything")
        with pytest.raises(ExecutionNotFoundError, match="has not been started"):
            await ghost.async_continue_with("approve", True)
        with pytest.raises(ExecutionNotFoundError, match="was never started"):
            await ghost.async_close()
