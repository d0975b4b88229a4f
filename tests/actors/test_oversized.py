"""The actor's answer to a snapshot the bus cannot carry (pure: no NATS)."""

from __future__ import annotations

import msgspec

from triggerbus import TriggerFlow
from triggerbus.actors.execution import apply, fail_oversized
from triggerbus.actors.graph_index import GraphIndex
from triggerbus.contracts.messages import StartExecution, StateWritten
from triggerbus.contracts.outbox import AppendStream, NotifyClosed


def _index() -> GraphIndex:
    flow = TriggerFlow(name="big")

    @flow.chunk("work")
    async def work(data):
        return data.value

    flow.to(work).end()
    return GraphIndex.build(flow.graph())


def test_the_execution_fails_and_closes_without_what_made_it_large() -> None:
    index = _index()
    started = apply(index, None, StartExecution(id="e:start", execution_id="e", value=1),
                    now=1.0).snapshot  # fmt: skip
    assert started is not None
    big = msgspec.structs.replace(started, state={"blob": "x" * 1000})
    write = StateWritten(id="e:1:1", execution_id="e", op="set", key="more", value="y")
    failed = fail_oversized(index, big, write, now=2.0, reason="too large")
    snapshot = failed.snapshot
    assert snapshot is not None
    assert (snapshot.status, snapshot.lifecycle) == ("failed", "closed")
    assert snapshot.error is not None and snapshot.error.error_type == "SnapshotTooLargeError"
    assert snapshot.state == {} and snapshot.nodes == {} and write.id in snapshot.applied
    assert any(isinstance(c, NotifyClosed) for c in failed.outbox)  # the caller hears of it
    assert any(isinstance(c, AppendStream) for c in failed.outbox)  # its stream ends


def test_a_closed_execution_refuses_the_message_instead() -> None:
    index = _index()
    started = apply(index, None, StartExecution(id="e:start", execution_id="e", value=1),
                    now=1.0).snapshot  # fmt: skip
    assert started is not None
    closed = msgspec.structs.replace(started, lifecycle="closed", status="completed")
    write = StateWritten(id="e:9:1", execution_id="e", op="set", key="k", value="v")
    refused = fail_oversized(index, closed, write, now=2.0, reason="too large")
    assert refused.snapshot is None and refused.rejected == "too large"
    assert refused.rejected_as == "ContractError"
