"""``continue_with`` returns once the continuation has settled, as TriggerFlow's does, and
an emit whose cascade paused leaves the handle waiting when it returns.

Agently's ``continue_with`` awaits the cascade the resume dispatches, so the human-in-the-loop
loop ``while execution.is_waiting(): ... await execution.async_continue_with(...)`` walks
every pause in turn. Here the answer comes from the execution actor when the continuation's
node finishes: at the next pause, at the end of its chain, or with its failure. No test reads
the status by polling: each reads it once, right after the call returns.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests._helpers import ROOT, child_env, configure_pure_client
from triggerbus import ChunkFailedError, Execution, TriggerFlow, TriggerFlowRuntimeData
from triggerbus._runtime import close_runtime, configure
from triggerbus.testing import WorkerProcess

TIMEOUT_SECONDS = 30

# Three approvals in a row, each resumed to the next chunk, then a chunk that records them.
approvals = TriggerFlow(name="settles_approvals")


@approvals.chunk("legal")
async def legal(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", payload="legal", resume_to="next")


@approvals.chunk("finance")
async def finance(data: TriggerFlowRuntimeData) -> Any:
    await data.async_set_state("legal", data.value)
    return await data.async_pause_for(type="approval", payload="finance", resume_to="next")


@approvals.chunk("ceo")
def ceo(data: TriggerFlowRuntimeData) -> Any:
    data.set_state("finance", data.value)
    return data.pause_for(type="approval", payload="ceo", resume_to="next")


@approvals.chunk("publish")
async def publish(data: TriggerFlowRuntimeData) -> Any:
    return {"ceo": data.value, "legal": data.get_state("legal")}


approvals.to(legal).to(finance).to(ceo).to(publish).end()

# A continuation that fails.
refused = TriggerFlow(name="settles_refused")


@refused.chunk("wait")
async def wait(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", resume_to="next")


@refused.chunk("check")
async def check(data: TriggerFlowRuntimeData) -> Any:
    raise ValueError(f"not acceptable: {data.value}")


refused.to(wait).to(check).end()


# An event from outside asks a question.
asks = TriggerFlow(name="settles_asks")


@asks.chunk("ask")
async def ask(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="question", payload=data.value, resume_to="next")


@asks.chunk("answered")
async def answered(data: TriggerFlowRuntimeData) -> Any:
    return f"answered {data.value}"


asks.when("Ask").to(ask).to(answered).end()


# Every item of a for_each asks, and its answer runs the rest of the item's chain.
per_item = TriggerFlow(name="settles_per_item")


@per_item.chunk("ask_item")
async def ask_item(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="item", payload=data.value, resume_to="next")


@per_item.chunk("after_item")
async def after_item(data: TriggerFlowRuntimeData) -> Any:
    return f"after {data.value}"


per_item.for_each().to(ask_item).to(after_item).end_for_each().end()


async def walk_the_pauses(execution: Execution) -> list[tuple[str, str, Any]]:
    """Agently's loop: answer whatever waits while something does, reading no status twice."""
    seen: list[tuple[str, str, Any]] = []
    await execution.async_start("draft")
    while execution.is_waiting():
        pending = await execution.async_get_pending_interrupts()
        assert len(pending) == 1, pending
        interrupt_id, record = next(iter(pending.items()))
        answered = await execution.async_continue_with(interrupt_id, f"{record['payload']}-ok")
        assert answered is not None
        seen.append((record["payload"], answered["status"], answered["response"]))
    return seen


EXPECTED_WALK = [
    ("legal", "resumed", "legal-ok"),
    ("finance", "resumed", "finance-ok"),
    ("ceo", "resumed", "ceo-ok"),
]


class TestInThisProcess:
    async def test_each_pause_is_waiting_when_continue_with_returns(self, runtime: Any) -> None:
        execution = approvals.create_execution(auto_close=False)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            assert await walk_the_pauses(execution) == EXPECTED_WALK
            # The last continuation ran to the end of its chain before the call returned.
            assert execution.get_status() == "running"
            snapshot = await execution.async_close()
        assert snapshot["$final_result"] == {"ceo": "ceo-ok", "legal": "legal-ok"}
        assert snapshot["finance"] == "finance-ok"

    async def test_an_auto_closing_execution_is_closed_when_the_last_one_returns(
        self, runtime: Any
    ) -> None:
        execution = approvals.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            assert await execution.async_start("draft", wait_for_result=False) is None
            for payload in ("legal", "finance", "ceo"):
                # Read once: the start's own pause is stored before async_start returns.
                pending = await execution.async_get_pending_interrupts()
                assert [r["payload"] for r in pending.values()] == [payload]
                await execution.async_continue_with(next(iter(pending)), payload)
            snapshot = await execution.async_get_snapshot()
        assert (snapshot["status"], snapshot["lifecycle"]) == ("completed", "closed")
        assert execution.is_closed()
        assert execution.get_result() == {"ceo": "ceo", "legal": "legal"}

    async def test_a_failing_continuation_raises_from_continue_with(self, runtime: Any) -> None:
        execution = refused.create_execution(auto_close=False)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await execution.async_start("draft")
            assert execution.is_waiting()
            interrupt_id = next(iter(await execution.async_get_pending_interrupts()))
            with pytest.raises(ChunkFailedError, match="not acceptable: no") as raised:
                await execution.async_continue_with(interrupt_id, "no")
        assert isinstance(raised.value, ValueError)
        assert execution.get_status() == "failed"


    async def test_an_emit_whose_cascade_paused_returns_waiting(self, runtime: Any) -> None:
        execution = asks.create_execution(auto_close=False)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await execution.async_start(None)
            # No status read before the emit: nothing watches the snapshot for this handle.
            [record] = await execution.async_emit("Ask", "why?")  # what the paused chunk returned
            assert (record["payload"], record["status"]) == ("why?", "waiting")
            assert (execution.is_waiting(), execution.get_status()) == (True, "waiting")
            interrupt_id = next(iter(await execution.async_get_pending_interrupts()))
            await execution.async_continue_with(interrupt_id, "because")
            assert execution.get_status() == "running"
            snapshot = await execution.async_close()
        assert snapshot["$final_result"] == "answered because"


    async def test_for_each_items_that_pause_are_joined_once_resumed(self, runtime: Any) -> None:
        """Each answer settles at its own item's end; the for_each's list comes with the
        last one (Agently closes without a result here: docs/compatibility.md)."""
        execution = per_item.create_execution(auto_close=False)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await execution.async_start([1, 2])
            pending = await execution.async_get_pending_interrupts()
            by_item = {record["payload"]: key for key, record in pending.items()}
            assert sorted(by_item) == [1, 2]
            await execution.async_continue_with(by_item[2], "two")
            assert execution.is_waiting(), "item 1 still waits"
            await execution.async_continue_with(by_item[1], "one")
            assert execution.get_status() == "running"
            snapshot = await execution.async_close()
        assert snapshot["$final_result"] == ["after one", "after two"]


def test_the_sync_form_settles_too(sync_runtime: Any) -> None:
    execution = approvals.create_execution(auto_close=False)
    execution.start("draft")
    answered = []
    while execution.is_waiting():
        interrupt_id = next(iter(execution.get_pending_interrupts()))
        answered.append(execution.continue_with(interrupt_id, "yes")["response"])
    assert answered == ["yes", "yes", "yes"]
    assert execution.close()["$final_result"] == {"ceo": "yes", "legal": "yes"}


async def test_a_client_of_an_execution_hosted_by_a_worker_walks_the_pauses(
    nats_url: str, prefix: str
) -> None:
    """The worker hosts the execution and its chunks: the answer comes from its actor."""
    worker = WorkerProcess(
        "tests.api.test_continue_with_settles:approvals",
        nats_url=nats_url,
        prefix=prefix,
        cwd=str(ROOT),
        env=child_env(),
    )
    configure_pure_client(nats_url, prefix)
    try:
        async with asyncio.timeout(60), worker:
            execution = approvals.create_execution(auto_close=False)
            assert await walk_the_pauses(execution) == EXPECTED_WALK
            snapshot = await execution.async_close()
            assert await worker.wait_for("chunk_attempt_succeeded", execution_id=execution.id)
    finally:
        await close_runtime()
        configure(None)
    assert snapshot["$final_result"] == {"ceo": "ceo-ok", "legal": "legal-ok"}
