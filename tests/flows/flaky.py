"""Chunks with retry policies: ``flaky`` raises until its attempt number reaches the value it
was given; ``stubborn`` always raises; ``slow`` outlives its timeout.

Attempts are counted per execution in this process, so the tests run these chunks in-process.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from triggerbus import TriggerFlow, TriggerFlowRuntimeData

attempts: Counter[str] = Counter()
keys: dict[str, list[str]] = {}

flow = TriggerFlow(name="flaky")


@flow.chunk("flaky", retries=3, backoff=(0.05, 0.1))
async def flaky(data: TriggerFlowRuntimeData) -> Any:
    attempts[data.execution_id] += 1
    keys.setdefault(data.execution_id, []).append(data.idempotency_key)
    # An effect before the failure: each retry sends it again with the same id.
    await data.async_append_state("tries", "x", emit=False)
    if attempts[data.execution_id] < int(data.value):
        raise ConnectionError(f"attempt {attempts[data.execution_id]} failed")
    return attempts[data.execution_id]


flow.to(flaky).end()


stubborn_flow = TriggerFlow(name="stubborn")


@stubborn_flow.chunk("stubborn", retries=2, backoff=0.05)
async def stubborn(data: TriggerFlowRuntimeData) -> Any:
    attempts[data.execution_id] += 1
    raise ValueError("never works")


stubborn_flow.to(stubborn).to(lambda data: {"after": data.value}).end()


slow_flow = TriggerFlow(name="slow_policy")


@slow_flow.chunk("slow", timeout=0.2)
async def slow(data: TriggerFlowRuntimeData) -> Any:
    await asyncio.sleep(30)


slow_flow.to(slow).end()
