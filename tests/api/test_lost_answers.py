"""An awaited request whose reply is lost still gets its answer, from the stored snapshot.

Replies are core NATS: a client disconnected when the actor answers never sees the answer.
An emit, a state write and a settling ``continue_with`` wait on their cascade, which is
remembered in the snapshot when it finishes, and the handle consults the snapshot every
``RECHECK_SECONDS`` of waiting. Here the replies of the request under test are sent to a
subject nobody subscribes to, as a disconnection would leave them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest

from triggerbus import TriggerFlow, TriggerFlowRuntimeData
from triggerbus import execution as execution_module
from triggerbus.bus.replies import ReplyRouter

TIMEOUT_SECONDS = 30

flow = TriggerFlow(name="lost_answers")


@flow.chunk("ask")
async def ask(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", payload=data.value, resume_to="next")


@flow.chunk("double")
async def double(data: TriggerFlowRuntimeData) -> Any:
    return data.value * 2


@flow.chunk("ask_again")
async def ask_again(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", payload="again", resume_to="next")


flow.to(ask).to(ask_again).end()
flow.when("Double").to(double)


@contextlib.contextmanager
def replies_lost(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside: the next reply subject opened in this process (the request under test's) is
    one no subscription matches. Only that one: the chunks here await answers of their own."""
    opened = ReplyRouter.open
    lost: list[str] = []

    def open_lost(router: ReplyRouter) -> tuple[str, asyncio.Future[bytes]]:
        subject, future = opened(router)
        if lost:
            return subject, future
        lost.append(subject)
        return f"{subject}.lost", future

    with monkeypatch.context() as patch:
        patch.setattr(ReplyRouter, "open", open_lost)
        yield


@pytest.fixture(autouse=True)
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execution_module, "RECHECK_SECONDS", 0.2)


async def test_an_emit_whose_reply_is_lost_returns_its_cascades_results(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(TIMEOUT_SECONDS):
        await execution.async_start(1)
        with replies_lost(monkeypatch):
            assert await execution.async_emit("Double", 21) == [42]
        await execution.async_close(pending_interrupts="cancel")


async def test_a_continue_with_whose_reply_is_lost_returns_once_settled(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(TIMEOUT_SECONDS):
        await execution.async_start("first")
        interrupt_id = next(iter(await execution.async_get_pending_interrupts()))
        with replies_lost(monkeypatch):
            record = await execution.async_continue_with(interrupt_id, "yes")
        assert (record["status"], record["response"]) == ("resumed", "yes")
        assert execution.is_waiting(), "the continuation's own pause, reached before it returned"
        pending = await execution.async_get_pending_interrupts()
        assert [r["payload"] for r in pending.values()] == ["again"]
        await execution.async_close(pending_interrupts="cancel")


async def test_a_close_whose_reply_is_lost_returns_the_close_snapshot(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It waited forever: a close's answer was looked for nowhere but in its reply."""
    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(TIMEOUT_SECONDS):
        await execution.async_start("first")
        await execution.async_set_state("note", "kept")
        with replies_lost(monkeypatch):
            closed = await execution.async_close(pending_interrupts="cancel")
    assert closed == {"note": "kept"}
    assert (execution.get_status(), execution.is_closed()) == ("cancelled", True)


def test_the_store_is_read_less_often_the_longer_a_wait_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """5 s, then doubling to a minute: a lost answer is found at the first read, and a
    thousand handles waiting on long cascades do not read the store 200 times a second."""
    import itertools

    from triggerbus import execution

    monkeypatch.setattr(execution, "RECHECK_SECONDS", 5.0)  # the shipped schedule
    pauses = list(itertools.islice(execution._recheck_pauses(), 7))
    assert pauses == [5, 10, 20, 40, 60, 60, 60]
    assert execution.RECHECK_MAX_SECONDS == 60


async def test_requests_of_one_handle_waiting_together_share_their_store_reads(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty emits whose replies are all lost are all answered from the store, by a few
    shared reads: one read per request, of a snapshot that holds their answers, is what
    overran the connection when two thousand ``emit_nowait`` answers rechecked together."""
    opened = ReplyRouter.open
    sending = contextvars.ContextVar("sending", default=False)
    send = execution_module.Execution._send_request

    async def sent_by_the_handle(handle: Any, *args: Any, **kwargs: Any) -> Any:
        token = sending.set(True)  # the chunks here open reply subjects of their own
        try:
            return await send(handle, *args, **kwargs)
        finally:
            sending.reset(token)

    def open_lost(router: ReplyRouter) -> tuple[str, asyncio.Future[bytes]]:
        subject, future = opened(router)
        return (f"{subject}.lost" if sending.get() else subject), future

    loads = 0
    load = execution_module.Execution._load

    async def counted(handle: Any, runtime: Any) -> Any:
        nonlocal loads
        loads += 1
        return await load(handle, runtime)

    execution = flow.create_execution(auto_close=False)
    async with asyncio.timeout(TIMEOUT_SECONDS):
        await execution.async_start(1)
        monkeypatch.setattr(ReplyRouter, "open", open_lost)
        monkeypatch.setattr(execution_module.Execution, "_send_request", sent_by_the_handle)
        monkeypatch.setattr(execution_module.Execution, "_load", counted)
        results = await asyncio.gather(*(execution.async_emit("Double", n) for n in range(40)))
        monkeypatch.undo()
        await execution.async_close(pending_interrupts="cancel")
    assert results == [[2 * n] for n in range(40)]
    assert 1 <= loads <= 8, loads
