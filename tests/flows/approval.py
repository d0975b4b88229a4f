"""Human-in-the-loop flows: a chunk that pauses for an approval, and one that asks itself again.

``approval``: draft -> ask (pauses, resume to next) -> publish. ``publish`` receives the
resume value as ``ask``'s result and records whether it ran as a resume.
``survey``: ``ask_self`` pauses and, resumed to itself, returns what it was answered.
"""

from __future__ import annotations

from typing import Any

from triggerbus import TriggerFlow, TriggerFlowRuntimeData

flow = TriggerFlow(name="approval")


@flow.chunk("draft")
async def draft(data: TriggerFlowRuntimeData) -> Any:
    await data.async_put_into_stream({"drafted": data.value})
    return {"draft": data.value}


@flow.chunk("ask")
async def ask(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(
        type="approval", payload=data.value, interrupt_id="approve"
    )


@flow.chunk("publish")
async def publish(data: TriggerFlowRuntimeData) -> Any:
    await data.async_append_state("published", data.value, emit=False)
    await data.async_put_into_stream({"published": data.value})
    return {
        "approved": data.value,
        "is_resume": data.is_resume,
        "interrupt_id": data.resume.interrupt_id,
    }


flow.to(draft).to(ask).to(publish).end()


survey = TriggerFlow(name="survey")


@survey.chunk("ask_self")
def ask_self(data: TriggerFlowRuntimeData) -> Any:
    """A sync chunk: pauses on its first run; resumed, it returns the answer."""
    data.append_state("runs", {"is_resume": data.is_resume, "value": data.value}, emit=False)
    if not data.is_resume:
        return data.pause_for(payload={"question": data.value}, resume_to="self")
    return {"question": data.value, "answer": data.resume.value}


survey.to(ask_self).end()


refusing = TriggerFlow(name="approval_refusing")


@refusing.chunk("ask_first")
async def ask_first(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", interrupt_id="approve")


@refusing.chunk("check")
async def check(data: TriggerFlowRuntimeData) -> Any:
    raise ValueError(f"cannot accept {data.value!r}")


refusing.to(ask_first).to(check).end()
