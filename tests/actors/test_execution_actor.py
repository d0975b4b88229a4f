"""The pure execution actor, driven message by message with no NATS at all.

A ``Driver`` feeds mailbox messages to ``apply`` and keeps the outstanding ``InvokeChunk``
commands; ``run()`` plays the chunk actors by answering each invocation with a
``ChunkCompleted``. It is a loop over the pure function, not a stand-in for NATS.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triggerbus import TriggerFlow
from triggerbus.actors.execution import AUTO_CLOSE_TIMER, Transition, apply, new_snapshot
from triggerbus.actors.graph_index import GraphIndex
from triggerbus.contracts.messages import (
    EXECUTION_NOT_FOUND,
    ChunkCompleted,
    ChunkFailed,
    CloseExecution,
    EmitEvent,
    ExecutionClosed,
    InvokeChunk,
    MailboxMessage,
    Reply,
    ResumeInterrupt,
    SealExecution,
    StartExecution,
    StateOp,
    StateWritten,
    StreamEnded,
    TimerFired,
)
from triggerbus.contracts.outbox import (
    AppendStream,
    Invoke,
    NotifyClosed,
    Observe,
    OutboxCommand,
    ScheduleTimer,
    SendReply,
    StoredOutbox,
)
from triggerbus.contracts.snapshot import Snapshot

EXECUTION = "ex1"

Result = Callable[[InvokeChunk], Any]


def echo(invocation: InvokeChunk) -> Any:
    """What the fake chunk actor returns by default: ``name(value)``."""
    return f"{invocation.chunk}({invocation.value})"


def noop(data: Any) -> None:
    """A chunk body; the driver never calls it."""


class Driver:
    """Applies messages to one execution and remembers what the actor asked for."""

    def __init__(self, flow: TriggerFlow, execution_id: str = EXECUTION) -> None:
        self.index = GraphIndex.build(flow.graph())
        self.execution_id = execution_id
        self.snapshot: Snapshot | None = None
        self.clock = 1000.0
        self.outstanding: dict[int, InvokeChunk] = {}
        self.transitions: list[Transition] = []
        self._ids = itertools.count(1)

    # --- sending ------------------------------------------------------------------------------

    def send(self, message: MailboxMessage) -> Transition:
        self.clock += 1.0
        transition = apply(self.index, self.snapshot, message, now=self.clock)
        if transition.snapshot is not None:
            self.snapshot = transition.snapshot
        for command in transition.outbox:
            if isinstance(command, Invoke):
                self.outstanding[command.message.step] = command.message
        self.transitions.append(transition)
        return transition

    def start(self, value: Any = None, **options: Any) -> Transition:
        options.setdefault("auto_close_timeout", 0.0)
        return self.send(
            StartExecution(
                id=f"{self.execution_id}:start",
                execution_id=self.execution_id,
                value=value,
                **options,
            )
        )

    def complete(self, step: int, result: Any = None) -> Transition:
        self.outstanding.pop(step, None)
        return self.send(
            ChunkCompleted(
                id=f"{self.execution_id}:{step}:done",
                execution_id=self.execution_id,
                step=step,
                result=result,
            )
        )

    def fail(self, step: int, message: str = "boom") -> Transition:
        self.outstanding.pop(step, None)
        return self.send(
            ChunkFailed(
                id=f"{self.execution_id}:{step}:done",
                execution_id=self.execution_id,
                step=step,
                error_type="ValueError",
                message=message,
            )
        )

    def emit(self, event: str, value: Any = None, **fields: Any) -> Transition:
        return self.send(
            EmitEvent(
                id=self.next_id("emit"),
                execution_id=self.execution_id,
                event=event,
                value=value,
                **fields,
            )
        )

    def write(
        self, key: str, value: Any = None, *, op: StateOp = "set", **fields: Any
    ) -> Transition:
        return self.send(
            StateWritten(
                id=self.next_id("state"),
                execution_id=self.execution_id,
                op=op,
                key=key,
                value=value,
                **fields,
            )
        )

    def close(self, reply_to: str | None = None) -> Transition:
        return self.send(
            CloseExecution(
                id=self.next_id("close"), execution_id=self.execution_id, reply_to=reply_to
            )
        )

    def fire_timer(self, generation: int) -> Transition:
        return self.send(
            TimerFired(
                id=f"{self.execution_id}:timer:{AUTO_CLOSE_TIMER}:{generation}",
                execution_id=self.execution_id,
                timer=AUTO_CLOSE_TIMER,
                generation=generation,
            )
        )

    def next_id(self, kind: str) -> str:
        return f"{self.execution_id}:{kind}:{next(self._ids)}"

    # --- playing the chunk actors -------------------------------------------------------------

    def step_of(self, chunk: str) -> int:
        """The step of the one outstanding invocation of ``chunk``."""
        steps = [s for s, inv in self.outstanding.items() if inv.chunk == chunk]
        assert len(steps) == 1, f"expected one outstanding {chunk!r}, have {self.outstanding}"
        return steps[0]

    def run(self, results: Result = echo, *, limit: int = 200) -> None:
        """Answer invocations, oldest first, until none is outstanding."""
        for _ in range(limit):
            if not self.outstanding:
                return
            step = min(self.outstanding)
            self.complete(step, results(self.outstanding[step]))
        raise AssertionError("the flow did not settle")

    # --- reading what happened ----------------------------------------------------------------

    def commands(self) -> list[OutboxCommand]:
        return [c for t in self.transitions for c in t.outbox]

    def replies(self, reply_to: str) -> list[Reply]:
        """The answers sent to ``reply_to``, less the status each carries (``statuses``)."""
        return [msgspec.structs.replace(r, status="") for r in self.answers(reply_to)]

    def statuses(self, reply_to: str) -> list[str]:
        return [r.status for r in self.answers(reply_to)]

    def answers(self, reply_to: str) -> list[Reply]:
        return [
            c.message
            for c in self.commands()
            if isinstance(c, SendReply) and c.reply_to == reply_to
        ]

    def closed(self) -> ExecutionClosed:
        notes = [c.message for c in self.commands() if isinstance(c, NotifyClosed)]
        assert len(notes) == 1, f"expected one close notification, got {notes}"
        return notes[0]

    def invoked(self) -> list[InvokeChunk]:
        return [c.message for c in self.commands() if isinstance(c, Invoke)]


def invokes(transition: Transition) -> list[InvokeChunk]:
    return [c.message for c in transition.outbox if isinstance(c, Invoke)]


def of_type(commands: Iterable[OutboxCommand], kind: type) -> list[Any]:
    return [c for c in commands if isinstance(c, kind)]


# --- flows ------------------------------------------------------------------------------------


def chain_flow() -> TriggerFlow:
    flow = TriggerFlow(name="chain")
    flow.to(("a", noop)).to(("b", noop)).to(("c", noop)).end()
    return flow


def batch_flow(names: list[str], concurrency: int | None = None) -> TriggerFlow:
    flow = TriggerFlow(name="batch")
    flow.to(("pre", noop)).batch(*[(name, noop) for name in names], concurrency=concurrency).to(
        ("post", noop)
    ).end()
    return flow


def when_flow(mode: str, triggers: Any = ("A", "B")) -> TriggerFlow:
    flow = TriggerFlow(name=f"when_{mode}")
    trigger_list = list(triggers) if isinstance(triggers, tuple) else triggers
    flow.when(trigger_list, mode=mode).to(("joined", noop))  # type: ignore[arg-type]
    return flow


def ping_flow() -> TriggerFlow:
    """Three listeners of Ping; the second has a chunk downstream of it."""
    flow = TriggerFlow(name="ping")
    flow.when("Ping").to(("slow", noop))
    flow.when("Ping").to(("fast", noop)).to(("after_fast", noop))
    flow.when("Ping").to(("sync", noop))
    return flow


# --- tests ------------------------------------------------------------------------------------


class TestStart:
    def test_start_invokes_first_chunk_with_start_value(self) -> None:
        """The first chunk gets the start value with trigger START."""
        driver = Driver(chain_flow())
        transition = driver.start("in")
        [invocation] = invokes(transition)
        assert invocation.chunk == "a"
        assert invocation.value == "in"
        assert invocation.trigger_event == "START"
        assert invocation.trigger_type == "event"
        assert driver.snapshot is not None
        assert driver.snapshot.status == "running"
        assert driver.snapshot.lifecycle == "open"

    def test_invocation_ids_are_execution_step_zero(self) -> None:
        """Every invocation id is ``<execution>:<step>:0``, derived from the snapshot."""
        driver = Driver(chain_flow())
        driver.start("in")
        driver.run()
        ids = [inv.id for inv in driver.invoked()]
        assert ids == [f"{EXECUTION}:{inv.step}:0" for inv in driver.invoked()]
        assert len(set(ids)) == 3

    def test_invocation_carries_flow_fingerprint_and_state(self) -> None:
        """An invocation names its flow and fingerprint and carries state as of dispatch."""
        flow = chain_flow()
        driver = Driver(flow)
        driver.start("in", resources={"db": "dsn"})
        [invocation] = list(driver.outstanding.values())
        assert invocation.flow == flow.graph().flow
        assert invocation.fingerprint == flow.graph().fingerprint
        assert invocation.resources == {"db": "dsn"}
        assert invocation.state == {}

    def test_second_start_with_new_id_does_not_rerun_start(self) -> None:
        """A start for a started execution answers with its id and runs nothing."""
        driver = Driver(chain_flow())
        driver.start("in")
        again = driver.send(
            StartExecution(id="other-start", execution_id=EXECUTION, value="x", reply_to="r2")
        )
        assert invokes(again) == []
        assert driver.replies("r2") == [Reply(ok=True, value=EXECUTION)]

    def test_flow_with_nothing_on_start_closes_at_once_when_idle_timeout_is_zero(self) -> None:
        """An execution with no START handler is idle immediately and closes."""
        flow = TriggerFlow(name="empty")
        flow.when("Other").to(("x", noop))
        driver = Driver(flow)
        driver.start("in", reply_to="start")
        assert driver.closed().snapshot == {}
        assert driver.replies("start") == [Reply(ok=True, value=None)]


class TestChain:
    def test_chain_close_snapshot_holds_final_result(self) -> None:
        """``to().to().to().end()`` closes with ``{"$final_result": ...}``."""
        driver = Driver(chain_flow())
        driver.start("in")
        driver.run()
        closed = driver.closed()
        assert closed.status == "completed"
        assert closed.snapshot == {"$final_result": "c(b(a(in)))"}
        assert closed.error is None

    def test_each_chunk_receives_previous_result_and_its_trigger(self) -> None:
        """A chunk's value is the previous chunk's result; its trigger is that chunk's event."""
        flow = chain_flow()
        driver = Driver(flow)
        driver.start("in")
        driver.run()
        a, b, c = driver.invoked()
        assert (b.value, b.trigger_event) == ("a(in)", flow.get_chunk("a").trigger)
        assert (c.value, c.trigger_event) == ("b(a(in))", flow.get_chunk("b").trigger)
        assert a.trigger_event == "START"

    def test_close_ends_stream_then_notifies(self) -> None:
        """Closing appends the stream end marker and then announces the close."""
        driver = Driver(chain_flow())
        driver.start("in")
        driver.run()
        last = driver.transitions[-1].outbox
        ends = [c for c in last if isinstance(c, AppendStream)]
        assert [type(c.message) for c in ends] == [StreamEnded]
        kinds = [type(c) for c in last if isinstance(c, AppendStream | NotifyClosed)]
        assert kinds == [AppendStream, NotifyClosed]

    def test_start_reply_holds_start_handlers_results_after_cascade(self) -> None:
        """The start reply comes once the whole START cascade finished."""
        driver = Driver(chain_flow())
        driver.start("in", reply_to="start", auto_close_timeout=None)
        step_a = driver.step_of("a")
        driver.complete(step_a, "A")
        assert driver.replies("start") == []
        driver.run()
        assert driver.replies("start") == [Reply(ok=True, value=["A"])]

    def test_first_end_wins(self) -> None:
        """``end()`` reached twice keeps the first value."""
        flow = TriggerFlow(name="two_ends")
        flow.to(("x", noop)).end().to(("y", noop)).end()
        driver = Driver(flow)
        driver.start("in")
        driver.run()
        assert driver.closed().snapshot == {"$final_result": "x(in)"}

    def test_end_with_none_still_sets_final_result(self) -> None:
        """A ``None`` result still puts ``$final_result`` in the snapshot."""
        flow = TriggerFlow(name="none_end")
        flow.to(("x", noop)).end()
        driver = Driver(flow)
        driver.start("in")
        driver.run(lambda inv: None)
        assert driver.closed().snapshot == {"$final_result": None}

    def test_duplicate_chunk_completed_changes_nothing(self) -> None:
        """The same ChunkCompleted applied twice is flagged duplicate and changes nothing."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close_timeout=None)
        step = driver.step_of("a")
        message = ChunkCompleted(
            id=f"{EXECUTION}:{step}:done", execution_id=EXECUTION, step=step, result="A"
        )
        first = driver.send(message)
        second = driver.send(message)
        assert second.duplicate
        assert second.outbox == []
        assert second.snapshot == first.snapshot

    def test_second_completion_of_a_step_with_new_id_changes_no_flow(self) -> None:
        """A late completion of a finished step under another id invokes nothing."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close_timeout=None)
        step = driver.step_of("a")
        driver.complete(step, "A")
        before = driver.snapshot
        late = driver.send(
            ChunkCompleted(id="late", execution_id=EXECUTION, step=step, result="again")
        )
        assert invokes(late) == []
        assert late.snapshot is not None and before is not None
        assert late.snapshot.nodes == before.nodes
        assert late.snapshot.state == before.state

    def test_completion_for_queued_step_is_ignored(self) -> None:
        """A completion naming a step never dispatched (held by the cap) is ignored."""
        driver = Driver(batch_flow(["x", "y"]))
        driver.start("in", concurrency=1)
        driver.complete(driver.step_of("pre"), "P")
        assert driver.snapshot is not None
        [held] = driver.snapshot.queue
        bogus = driver.send(
            ChunkCompleted(id="bogus", execution_id=EXECUTION, step=held.node, result="?")
        )
        assert bogus.rejected == ""
        assert invokes(bogus) == []
        driver.run()
        [post] = [inv for inv in driver.invoked() if inv.chunk == "post"]
        assert post.value == {"x": "x(P)", "y": "y(P)"}


class TestBatch:
    def test_batch_dict_follows_declaration_order_not_completion_order(self) -> None:
        """Branch results join into ``{name: result}`` in declaration order."""
        driver = Driver(batch_flow(["slow", "fast", "mid"]))
        driver.start("in")
        driver.complete(driver.step_of("pre"), "P")
        for name in ["fast", "mid", "slow"]:
            driver.complete(driver.step_of(name), f"{name}(P)")
        driver.run()
        result = driver.closed().snapshot["$final_result"]
        assert result == "post({'slow': 'slow(P)', 'fast': 'fast(P)', 'mid': 'mid(P)'})"
        [post] = [inv for inv in driver.invoked() if inv.chunk == "post"]
        assert list(post.value) == ["slow", "fast", "mid"]
        assert post.trigger_event.startswith("Batch-")

    def test_every_branch_receives_the_same_input(self) -> None:
        """All branches are invoked with the value that reached the batch."""
        driver = Driver(batch_flow(["x", "y", "z"]))
        driver.start("in")
        driver.complete(driver.step_of("pre"), "P")
        assert sorted(inv.chunk for inv in driver.outstanding.values()) == ["x", "y", "z"]
        assert {inv.value for inv in driver.outstanding.values()} == {"P"}

    def test_batch_concurrency_releases_third_branch_after_one_finishes(self) -> None:
        """With ``concurrency=2`` the third branch starts only when a running one returned."""
        driver = Driver(batch_flow(["slow", "fast", "mid"], concurrency=2))
        driver.start("in")
        driver.complete(driver.step_of("pre"), "P")
        assert sorted(inv.chunk for inv in driver.outstanding.values()) == ["fast", "slow"]
        released = driver.complete(driver.step_of("fast"), "F")
        assert [inv.chunk for inv in invokes(released)] == ["mid"]
        driver.run()
        [post] = [inv for inv in driver.invoked() if inv.chunk == "post"]
        assert post.value == {"slow": "slow(P)", "fast": "F", "mid": "mid(P)"}

    def test_batch_of_one_branch_returning_none(self) -> None:
        """A one-branch batch whose branch returns None joins to ``{name: None}``."""
        flow = TriggerFlow(name="batch_one")
        flow.batch(("n", noop)).end()
        driver = Driver(flow)
        driver.start("x")
        driver.run(lambda inv: None)
        assert driver.closed().snapshot == {"$final_result": {"n": None}}

    def test_batch_triggered_twice_joins_independently(self) -> None:
        """Two emissions into one batch give two separate result dicts."""
        flow = TriggerFlow(name="batch_twice")
        flow.when("Go").batch(("x", noop), ("y", noop)).to(("sink", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        driver.emit("Go", "1")
        driver.emit("Go", "2")
        for step in sorted(driver.outstanding, reverse=True):
            if driver.outstanding[step].chunk != "sink":
                driver.complete(step, echo(driver.outstanding[step]))
        sinks = sorted(
            (inv.value for inv in driver.outstanding.values() if inv.chunk == "sink"),
            key=lambda v: v["x"],
        )
        assert sinks == [{"x": "x(1)", "y": "y(1)"}, {"x": "x(2)", "y": "y(2)"}]

    def test_awaited_emit_into_batch_returns_none_for_fanout(self) -> None:
        """The batch fan-out is an internal handler whose result is None."""
        flow = TriggerFlow(name="batch_emit")
        flow.when("Go").batch(("x", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        driver.emit("Go", 1, reply_to="go")
        driver.run()
        assert driver.replies("go") == [Reply(ok=True, value=[None])]


class TestWhen:
    def test_and_mode_joins_in_declaration_order(self) -> None:
        """And-mode fires once with ``{"event": {...}}`` keyed in declaration order."""
        driver = Driver(when_flow("and"))
        driver.start(None, auto_close=False)
        assert invokes(driver.emit("B", 2)) == []
        [joined] = invokes(driver.emit("A", 1))
        assert joined.value == {"event": {"A": 1, "B": 2}}
        assert list(joined.value["event"]) == ["A", "B"]
        assert joined.trigger_event.startswith("When-")

    def test_and_mode_last_value_wins_and_gate_resets(self) -> None:
        """Repeated arrivals overwrite; after firing the gate waits for a full set again."""
        driver = Driver(when_flow("and"))
        driver.start(None, auto_close=False)
        driver.emit("A", 1)
        driver.emit("A", 11)
        [first] = invokes(driver.emit("B", 2))
        assert first.value == {"event": {"A": 11, "B": 2}}
        assert invokes(driver.emit("A", 3)) == []
        [second] = invokes(driver.emit("B", 4))
        assert second.value == {"event": {"A": 3, "B": 4}}

    def test_and_mode_counts_none_as_arrived(self) -> None:
        """A ``None`` value fills its slot like any other."""
        driver = Driver(when_flow("and"))
        driver.start(None, auto_close=False)
        driver.emit("B", None)
        [joined] = invokes(driver.emit("A", None))
        assert joined.value == {"event": {"A": None, "B": None}}

    def test_or_mode_delivers_type_name_value_as_a_list(self) -> None:
        """Or-mode fires per arrival with ``[type, name, value]`` (a list: JSON has no tuple)."""
        driver = Driver(when_flow("or"))
        driver.start(None, auto_close=False)
        [first] = invokes(driver.emit("A", 1))
        [second] = invokes(driver.emit("B", 2))
        assert first.value == ["event", "A", 1]
        assert second.value == ["event", "B", 2]

    def test_simple_or_mode_delivers_bare_value(self) -> None:
        """Simple-or fires per arrival with just the value."""
        driver = Driver(when_flow("simple_or"))
        driver.start(None, auto_close=False)
        assert [inv.value for inv in invokes(driver.emit("A", 1))] == [1]
        assert [inv.value for inv in invokes(driver.emit("B", 2))] == [2]

    def test_and_mode_joins_event_and_state_by_type(self) -> None:
        """A mixed join groups values by trigger type."""
        driver = Driver(when_flow("and", {"event": "A", "runtime_data": "k"}))
        driver.start(None, auto_close=False)
        driver.write("k", "k4")
        [joined] = invokes(driver.emit("A", "a4"))
        assert joined.value == {"event": {"A": "a4"}, "runtime_data": {"k": "k4"}}

    def test_or_mode_mixes_event_and_state(self) -> None:
        """Or-mode reports a state change as ``["runtime_data", key, value]``."""
        driver = Driver(when_flow("or", {"event": "A", "runtime_data": "k"}))
        driver.start(None, auto_close=False)
        assert [i.value for i in invokes(driver.emit("A", 1))] == [["event", "A", 1]]
        assert [i.value for i in invokes(driver.write("k", "kv"))] == [["runtime_data", "k", "kv"]]

    def test_and_mode_joins_chunk_emit_with_outside_emit(self) -> None:
        """At the top level a chunk's emit and an outside emit share one scope and join
        (Agently never fires this join; its documentation promises it does)."""
        flow = TriggerFlow(name="when_mixed")
        flow.to(("emitter", noop))
        flow.when(["A", "B"]).to(("joined", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        step = driver.step_of("emitter")
        driver.emit("A", "from-chunk", step=step)
        [joined] = invokes(driver.emit("B", "from-outside"))
        assert joined.value == {"event": {"A": "from-chunk", "B": "from-outside"}}

    def test_and_mode_joins_event_and_state_change_from_one_chunk(self) -> None:
        """A chunk's emit and its own state write join (Agently never fires this one)."""
        flow = TriggerFlow(name="when_state_chunk")
        flow.to(("writer", noop))
        flow.when({"event": "A", "runtime_data": "k"}).to(("joined", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        step = driver.step_of("writer")
        driver.emit("A", 1, step=step)
        [joined] = invokes(driver.write("k", 2, step=step))
        assert joined.value == {"event": {"A": 1}, "runtime_data": {"k": 2}}

    def test_and_mode_is_scoped_per_batch_run(self) -> None:
        """Inside a batch, arrivals join only with arrivals of the same batch run."""
        flow = TriggerFlow(name="when_scoped")
        flow.when("Go").batch(("x", noop), ("y", noop))
        flow.when(["A", "B"]).to(("joined", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        driver.emit("Go", 1)
        x1, y1 = driver.step_of("x"), driver.step_of("y")
        layers1 = driver.outstanding[x1].layers
        driver.emit("Go", 2)
        x2 = max(s for s, inv in driver.outstanding.items() if inv.chunk == "x")
        layers2 = driver.outstanding[x2].layers
        assert layers1 != layers2
        assert invokes(driver.emit("A", "a1", step=x1, layers=layers1)) == []
        assert invokes(driver.emit("B", "outside")) == []
        assert invokes(driver.emit("B", "b2", step=x2, layers=layers2)) == []
        [joined] = invokes(driver.emit("B", "b1", step=y1, layers=layers1))
        assert joined.value == {"event": {"A": "a1", "B": "b1"}}

    def test_when_on_a_chunk_receives_its_result(self) -> None:
        """``when(chunk)`` listens to the chunk's completion event."""
        flow = TriggerFlow(name="when_chunk")
        first = flow.chunk("first")(noop)
        flow.to(first)
        flow.when(first).to(("after", noop))
        driver = Driver(flow)
        driver.start("in")
        driver.run()
        [after] = [inv for inv in driver.invoked() if inv.chunk == "after"]
        assert after.value == "first(in)"
        assert after.trigger_event == first.trigger


class TestRuntimeData:
    def listener_flow(self) -> TriggerFlow:
        flow = TriggerFlow(name="state_listener")
        flow.when({"runtime_data": "k"}).to(("on_k", noop))
        return flow

    def test_state_write_with_emit_fires_listener(self) -> None:
        """A set with ``emit=True`` invokes the key's listener with the new value."""
        driver = Driver(self.listener_flow())
        driver.start(None, auto_close=False)
        [invocation] = invokes(driver.write("k", 1))
        assert (invocation.value, invocation.trigger_event, invocation.trigger_type) == (
            1,
            "k",
            "runtime_data",
        )
        assert driver.snapshot is not None and driver.snapshot.state == {"k": 1}

    def test_state_write_without_emit_fires_nothing(self) -> None:
        """A set with ``emit=False`` changes state and invokes no listener."""
        driver = Driver(self.listener_flow())
        driver.start(None, auto_close=False)
        transition = driver.write("k", 6, emit=False, reply_to="w")
        assert invokes(transition) == []
        assert driver.snapshot is not None and driver.snapshot.state == {"k": 6}
        assert driver.replies("w") == [Reply(ok=True, value=[])]

    def test_same_value_set_twice_fires_twice(self) -> None:
        """A set fires even when the value did not change."""
        driver = Driver(self.listener_flow())
        driver.start(None, auto_close=False)
        assert len(invokes(driver.write("k", 1))) == 1
        assert len(invokes(driver.write("k", 1))) == 1

    def test_append_delivers_whole_list(self) -> None:
        """Append turns the key into a list and the listener gets all of it."""
        driver = Driver(self.listener_flow())
        driver.start(None, auto_close=False)
        driver.write("k", "x")
        [appended] = invokes(driver.write("k", "y", op="append"))
        assert appended.value == ["x", "y"]

    def test_delete_fires_with_none(self) -> None:
        """Deleting a present key fires the listener with None."""
        driver = Driver(self.listener_flow())
        driver.start(None, auto_close=False)
        driver.write("k", 1)
        [deleted] = invokes(driver.write("k", op="delete"))
        assert deleted.value is None
        assert driver.snapshot is not None and driver.snapshot.state == {}

    def test_delete_of_missing_key_fires_nothing(self) -> None:
        """Deleting a key that is not there changes nothing and fires no listener."""
        driver = Driver(self.listener_flow())
        driver.start(None, auto_close=False)
        assert invokes(driver.write("k", op="delete", reply_to="d")) == []
        assert driver.replies("d") == [Reply(ok=True, value=[])]

    def test_dotted_keys_nest_and_fire_only_their_own_listener(self) -> None:
        """``a.b`` writes ``{"a": {"b": ...}}``; a listener on ``a`` does not fire for it."""
        flow = TriggerFlow(name="dotted")
        flow.when({"runtime_data": "a.b"}).to(("on_ab", noop))
        flow.when({"runtime_data": "a"}).to(("on_a", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        assert [(i.chunk, i.value) for i in invokes(driver.write("a.b", 1))] == [("on_ab", 1)]
        assert invokes(driver.write("a.c", 2)) == []
        driver.run()
        driver.close()
        assert driver.closed().snapshot == {"a": {"b": 1, "c": 2}}

    def test_awaited_state_write_replies_after_listener_cascade(self) -> None:
        """A write with ``reply_to`` is answered once its listeners finished."""
        driver = Driver(self.listener_flow())
        driver.start(None, auto_close=False)
        driver.write("k", 1, reply_to="w")
        assert driver.replies("w") == []
        driver.run()
        assert driver.replies("w") == [Reply(ok=True, value=["on_k(1)"])]

    def test_invocation_sees_state_as_of_dispatch(self) -> None:
        """An invocation's state is a copy taken when it was dispatched."""
        flow = TriggerFlow(name="state_view")
        flow.when("Go").to(("reader", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        driver.write("seen", 1)
        [invocation] = invokes(driver.emit("Go"))
        driver.write("seen", 2)
        assert invocation.state == {"seen": 1}

    def test_state_ends_up_in_close_snapshot_before_final_result(self) -> None:
        """The close snapshot is the state in insertion order with ``$final_result`` last."""
        flow = TriggerFlow(name="state_close")
        flow.to(("x", noop)).end()
        driver = Driver(flow)
        driver.start("in", auto_close_timeout=None)
        step = driver.step_of("x")
        driver.write("b", 1, step=step)
        driver.write("a", 2, step=step)
        driver.complete(step, "z")
        driver.close()
        snapshot = driver.closed().snapshot
        assert list(snapshot.items()) == [("b", 1), ("a", 2), ("$final_result", "z")]


class TestAwaitedEmit:
    def test_awaited_emit_replies_after_whole_cascade_in_registration_order(self) -> None:
        """The reply waits for downstream chunks and lists direct handlers in order."""
        driver = Driver(ping_flow())
        driver.start(None, auto_close=False)
        driver.emit("Ping", "p", reply_to="ping")
        driver.complete(driver.step_of("sync"), "sync")
        driver.complete(driver.step_of("fast"), "fast")
        driver.complete(driver.step_of("slow"), "slow")
        assert driver.replies("ping") == []
        driver.complete(driver.step_of("after_fast"), "after")
        assert driver.replies("ping") == [Reply(ok=True, value=["slow", "fast", "sync"])]

    def test_awaited_emit_with_no_listener_replies_none(self) -> None:
        """Nobody listening gives ``None``, not an empty list."""
        driver = Driver(ping_flow())
        driver.start(None, auto_close=False)
        driver.emit("NobodyListens", 1, reply_to="r")
        assert driver.replies("r") == [Reply(ok=True, value=None)]

    def test_emit_of_chunk_name_does_not_reach_when_chunk(self) -> None:
        """Emitting a chunk's name from outside is just an event of that name."""
        flow = TriggerFlow(name="emit_chunk_name")
        first = flow.chunk("first")(noop)
        flow.when(first).to(("after", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        assert invokes(driver.emit("first", 1)) == []
        assert [i.chunk for i in invokes(driver.emit(first.trigger, 1))] == ["after"]

    def test_chunk_emit_without_reply_runs_alongside(self) -> None:
        """A fire-and-forget emit from a chunk runs its listeners while the chunk runs."""
        flow = TriggerFlow(name="nowait")
        flow.to(("emitter", noop)).end()
        flow.when("Side").to(("side", noop))
        driver = Driver(flow)
        driver.start("in")
        step = driver.step_of("emitter")
        [side] = invokes(driver.emit("Side", 1, step=step))
        driver.complete(step, "done")
        assert driver.snapshot is not None and driver.snapshot.lifecycle == "open"
        driver.complete(side.step, "s")
        assert driver.closed().snapshot == {"$final_result": "done"}


class TestConcurrency:
    def test_cap_of_one_keeps_one_invocation_outstanding(self) -> None:
        """``concurrency=1`` dispatches the next chunk only after the previous returned."""
        driver = Driver(batch_flow(["x", "y", "z"]))
        driver.start("in", concurrency=1)
        driver.complete(driver.step_of("pre"), "P")
        assert [inv.chunk for inv in driver.outstanding.values()] == ["x"]
        seen = []
        while driver.outstanding:
            assert len(driver.outstanding) == 1
            [step] = driver.outstanding
            seen.append(driver.outstanding[step].chunk)
            driver.complete(step, "r")
        assert seen == ["x", "y", "z", "post"]
        assert driver.closed().status == "completed"

    def test_awaited_emit_from_running_step_releases_its_permit(self) -> None:
        """A chunk awaiting its emit gives its slot to the listener, so nothing deadlocks."""
        flow = TriggerFlow(name="nested")
        flow.to(("emitter", noop)).end()
        flow.when("Ping").to(("handler", noop))
        driver = Driver(flow)
        driver.start("in", concurrency=1)
        step = driver.step_of("emitter")
        released = driver.emit("Ping", 1, step=step, reply_to="ping")
        assert [inv.chunk for inv in invokes(released)] == ["handler"]
        driver.complete(driver.step_of("handler"), "h")
        assert driver.replies("ping") == [Reply(ok=True, value=["h"])]
        driver.complete(step, "done")
        assert driver.closed().snapshot == {"$final_result": "done"}

    def test_awaited_state_write_from_running_step_releases_its_permit(self) -> None:
        """A chunk awaiting its state write's listeners gives its slot away too."""
        flow = TriggerFlow(name="nested_state")
        flow.to(("writer", noop))
        flow.when({"runtime_data": "k"}).to(("on_k", noop))
        driver = Driver(flow)
        driver.start("in", concurrency=1)
        step = driver.step_of("writer")
        released = driver.write("k", 1, step=step, reply_to="w")
        assert [inv.chunk for inv in invokes(released)] == ["on_k"]

    def test_queued_invocation_sees_state_at_dispatch_not_at_queueing(self) -> None:
        """A chunk held by the cap reads the state as it is when it is finally dispatched."""
        driver = Driver(batch_flow(["x", "y"]))
        driver.start("in", concurrency=1)
        driver.complete(driver.step_of("pre"), "P")
        step_x = driver.step_of("x")
        driver.write("seen", "x-wrote", step=step_x)
        released = driver.complete(step_x, "X")
        [y] = invokes(released)
        assert y.state == {"seen": "x-wrote"}

    def test_no_cap_dispatches_every_branch(self) -> None:
        """Without a cap every handler of an emit is invoked at once."""
        driver = Driver(batch_flow(["w", "x", "y", "z"]))
        driver.start("in")
        driver.complete(driver.step_of("pre"), "P")
        assert len(driver.outstanding) == 4


class TestFailure:
    def test_chunk_failed_fails_and_closes_naming_the_chunk(self) -> None:
        """A failure without skip closes the execution as failed with the chunk named."""
        driver = Driver(chain_flow())
        driver.start("in", reply_to="start")
        driver.complete(driver.step_of("a"), "A")
        driver.fail(driver.step_of("b"), "kaboom")
        assert driver.snapshot is not None and driver.snapshot.status == "failed"
        closed = driver.closed()
        assert closed.status == "failed"
        assert closed.error is not None
        assert (closed.error.chunk, closed.error.error_type, closed.error.message) == (
            "b",
            "ValueError",
            "kaboom",
        )
        [reply] = driver.replies("start")
        assert not reply.ok
        assert reply.error is not None and reply.error.chunk == "b"

    def test_failure_keeps_state_and_no_final_result(self) -> None:
        """The failed execution's close snapshot holds the state written before the error."""
        flow = TriggerFlow(name="boom")
        flow.to(("boom", noop)).end()
        driver = Driver(flow)
        driver.start("x")
        step = driver.step_of("boom")
        driver.write("before", 1, step=step)
        driver.fail(step)
        assert driver.closed().snapshot == {"before": 1}

    def test_failed_batch_branch_stops_siblings(self) -> None:
        """Without skip, a failing branch ends the execution; siblings' results are dropped."""
        driver = Driver(batch_flow(["x", "y"]))
        driver.start("in")
        driver.complete(driver.step_of("pre"), "P")
        step_y = driver.step_of("y")
        driver.fail(driver.step_of("x"))
        late = driver.complete(step_y, "late")
        assert invokes(late) == []
        assert driver.closed().status == "failed"

    def test_skip_exceptions_keeps_siblings_running(self) -> None:
        """With ``skip_exceptions`` a failing branch only drops its own result."""
        flow = TriggerFlow(name="skip")
        flow.batch(("x", noop), ("y", noop)).end()
        flow.when("Side").to(("side", noop))
        driver = Driver(flow)
        driver.start("in", skip_exceptions=True)
        step_y = driver.step_of("y")
        driver.fail(driver.step_of("x"))
        assert driver.snapshot is not None and driver.snapshot.status == "running"
        driver.write("after", 1, step=step_y)
        driver.complete(step_y, "Y")
        closed = driver.closed()
        assert closed.status == "completed"
        assert closed.snapshot == {"after": 1}

    def test_failure_answers_waiting_emitters_with_error(self) -> None:
        """An awaited emit whose cascade fails is answered with ok=False."""
        driver = Driver(ping_flow())
        driver.start(None, auto_close=False)
        driver.emit("Ping", 1, reply_to="ping")
        driver.fail(driver.step_of("slow"), "handler failed")
        [reply] = driver.replies("ping")
        assert not reply.ok
        assert reply.error is not None and reply.error.message == "handler failed"


class TestAutoClose:
    def test_zero_timeout_closes_when_idle(self) -> None:
        """``auto_close_timeout=0`` closes in the transition that leaves it idle."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close_timeout=0.0)
        driver.run()
        assert driver.snapshot is not None
        assert driver.snapshot.lifecycle == "closed"
        assert driver.snapshot.close_reason == "auto_close_idle_timeout"
        assert of_type(driver.commands(), ScheduleTimer) == []

    def test_positive_timeout_schedules_timer_and_current_generation_closes(self) -> None:
        """Idle with a positive timeout asks for a timer; its firing closes."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close_timeout=0.5)
        driver.run()
        [timer] = of_type(driver.transitions[-1].outbox, ScheduleTimer)
        assert (timer.timer, timer.delay) == (AUTO_CLOSE_TIMER, 0.5)
        assert driver.snapshot is not None and driver.snapshot.lifecycle == "open"
        driver.fire_timer(timer.generation)
        assert driver.closed().snapshot == {"$final_result": "c(b(a(in)))"}

    def test_stale_timer_generation_does_nothing(self) -> None:
        """A timer from an earlier idle period neither closes nor re-arms."""
        flow = TriggerFlow(name="idle")
        flow.when("Go").to(("x", noop))
        driver = Driver(flow)
        driver.start(None, auto_close_timeout=0.5)
        [first] = of_type(driver.transitions[-1].outbox, ScheduleTimer)
        driver.emit("Go")
        driver.run()
        [second] = of_type(driver.transitions[-1].outbox, ScheduleTimer)
        assert second.generation > first.generation
        before = driver.snapshot
        stale = driver.fire_timer(first.generation)
        assert stale.outbox == []
        assert stale.snapshot is not None and before is not None
        assert stale.snapshot.lifecycle == "open"
        assert stale.snapshot.timer_generation == before.timer_generation
        driver.fire_timer(second.generation)
        assert driver.closed().status == "completed"

    def test_none_timeout_never_closes(self) -> None:
        """``auto_close_timeout=None`` schedules no timer and stays open."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close_timeout=None)
        driver.run()
        assert of_type(driver.commands(), ScheduleTimer) == []
        assert of_type(driver.commands(), NotifyClosed) == []
        assert driver.snapshot is not None and driver.snapshot.lifecycle == "open"

    def test_auto_close_false_never_closes(self) -> None:
        """``auto_close=False`` stays open however idle."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close=False, auto_close_timeout=0.0)
        driver.run()
        assert of_type(driver.commands(), NotifyClosed) == []

    def test_timer_while_busy_does_not_close(self) -> None:
        """A timer that fires while work is in flight leaves the execution open."""
        flow = TriggerFlow(name="busy")
        flow.when("Go").to(("x", noop))
        driver = Driver(flow)
        driver.start(None, auto_close_timeout=0.5)
        [timer] = of_type(driver.transitions[-1].outbox, ScheduleTimer)
        driver.emit("Go")
        fired = driver.fire_timer(timer.generation)
        assert of_type(fired.outbox, NotifyClosed) == []


class TestClose:
    def test_close_with_reply_answers_with_close_snapshot(self) -> None:
        """A CloseExecution with ``reply_to`` is answered with the close snapshot."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close=False)
        driver.run()
        driver.close(reply_to="c1")
        assert driver.replies("c1") == [Reply(ok=True, value={"$final_result": "c(b(a(in)))"})]
        assert driver.closed().snapshot == {"$final_result": "c(b(a(in)))"}
        assert driver.snapshot is not None and driver.snapshot.close_reason == "manual"

    def test_close_when_already_closed_answers_again(self) -> None:
        """A second close is answered with the same snapshot and notifies nothing new."""
        driver = Driver(chain_flow())
        driver.start("in")
        driver.run()
        again = driver.close(reply_to="c2")
        assert driver.replies("c2") == [Reply(ok=True, value={"$final_result": "c(b(a(in)))"})]
        assert of_type(again.outbox, NotifyClosed) == []

    def test_close_waits_for_in_flight_work(self) -> None:
        """Close seals the execution and closes once in-flight chunks are done."""
        driver = Driver(chain_flow())
        driver.start("in", auto_close=False)
        driver.close(reply_to="c")
        assert driver.snapshot is not None and driver.snapshot.lifecycle == "sealed"
        assert driver.replies("c") == []
        driver.run()
        assert driver.replies("c") == [Reply(ok=True, value={"$final_result": "c(b(a(in)))"})]

    def test_sealed_execution_ignores_outside_emits_but_not_chunk_emits(self) -> None:
        """Once sealed, emits from outside are ignored while running chunks may still emit."""
        flow = TriggerFlow(name="sealed")
        flow.to(("x", noop))
        flow.when("E").to(("on_e", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        step = driver.step_of("x")
        driver.close()
        assert invokes(driver.emit("E", 1, reply_to="outside")) == []
        assert driver.replies("outside") == [Reply(ok=True, value=None, ignored="sealed")]
        assert [i.chunk for i in invokes(driver.emit("E", 2, step=step))] == ["on_e"]

    def test_closed_execution_ignores_emits(self) -> None:
        """An emit into a closed execution invokes nothing and is answered None, as TriggerFlow
        answers an emit nobody handles."""
        driver = Driver(ping_flow())
        driver.start(None)
        assert driver.snapshot is not None and driver.snapshot.lifecycle == "closed"
        transition = driver.emit("Ping", 1, reply_to="late")
        assert invokes(transition) == []
        assert driver.replies("late") == [Reply(ok=True, value=None, ignored="closed")]


class TestUnknownExecution:
    @pytest.mark.parametrize(
        "message",
        [
            ChunkCompleted(id="m", execution_id="nope", step=1),
            ChunkFailed(id="m", execution_id="nope", step=1, error_type="E", message="m"),
            EmitEvent(id="m", execution_id="nope", event="E"),
            CloseExecution(id="m", execution_id="nope"),
            TimerFired(id="m", execution_id="nope", timer=AUTO_CLOSE_TIMER, generation=1),
            ResumeInterrupt(id="m", execution_id="nope", interrupt_id="i"),
            SealExecution(id="m", execution_id="nope"),
        ],
        ids=lambda m: type(m).__name__,
    )
    def test_non_start_message_for_unknown_execution_is_rejected_as_not_found(
        self, message: MailboxMessage
    ) -> None:
        """Anything but a start (or a state write) for an execution with no snapshot is
        refused with a reason, as ``ExecutionNotFoundError``: the caller learns the kind of
        refusal from its type, not by reading the text."""
        index = GraphIndex.build(chain_flow().graph())
        transition = apply(index, None, message, now=0.0)
        assert transition.snapshot is None
        assert transition.outbox == []
        assert "nope" in transition.rejected
        assert transition.rejected_as == EXECUTION_NOT_FOUND == "ExecutionNotFoundError"

    def test_state_written_before_start_creates_the_execution_and_is_kept(self) -> None:
        """TriggerFlow accepts state before the start; the start then runs with it."""
        index = GraphIndex.build(chain_flow().graph())
        before = apply(
            index,
            None,
            StateWritten(id="s", execution_id="e", op="set", key="k", value=1),
            now=0.0,
        )
        assert before.snapshot is not None
        assert before.snapshot.status == "created"
        assert before.snapshot.state == {"k": 1}
        assert invokes(before) == []
        started = apply(
            index, before.snapshot, StartExecution(id="e:start", execution_id="e"), now=0.0
        )
        assert started.snapshot is not None and started.snapshot.status == "running"
        assert started.snapshot.state == {"k": 1}


# --- property tests ---------------------------------------------------------------------------


def _effects_only(snapshot: Snapshot | None) -> bytes:
    """A snapshot without what a repeated request may touch: who gets the pending answer."""
    assert snapshot is not None
    nodes = {k: msgspec.structs.replace(n, reply_to=None) for k, n in snapshot.nodes.items()}
    bare = msgspec.structs.replace(snapshot, nodes=nodes, applied=[], outbox=StoredOutbox())
    return wire(bare)


def assert_no_effect(message: MailboxMessage, before: Snapshot | None, again: Transition) -> None:
    """Applying ``message`` again changed nothing but, for an awaited request, who is answered;
    its only output is that answer."""
    assert _effects_only(again.snapshot) == _effects_only(before)
    reply_to = getattr(message, "reply_to", None)
    for command in again.outbox:
        assert isinstance(command, SendReply) and command.reply_to == reply_to, command
    if not again.outbox and again.snapshot is before:
        assert again.duplicate


def rich_flow() -> TriggerFlow:
    """A flow that exercises every internal operator: chain, batch with a cap, and-gate,
    or-gate, state listener and result sink."""
    flow = TriggerFlow(name="rich")
    flow.to(("pre", noop)).batch(("x", noop), ("y", noop), ("z", noop), concurrency=2).to(
        ("post", noop)
    ).end()
    flow.when(["A", "B"]).to(("joined", noop))
    flow.when(["A", "B"], mode="or").to(("either", noop))
    flow.when({"runtime_data": "k"}).to(("on_k", noop))
    return flow


RICH_INDEX = GraphIndex.build(rich_flow().graph())

Action = tuple[str, int]
actions = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "complete",
                "complete",
                "complete",
                "fail",
                "emit",
                "write",
                "close",
                "timer",
                "nowrite",
            ]
        ),
        st.integers(min_value=0, max_value=7),
    ),
    max_size=30,
)


def next_message(snapshot: Snapshot | None, action: Action, n: int) -> MailboxMessage:
    """Turn an abstract action into a concrete message against the current snapshot."""
    kind, pick = action
    running = sorted(snapshot.running) if snapshot else []
    if kind == "complete" and snapshot is not None and pick >= 6:
        # a completion nobody should send: a queued step (pick 6) or an unknown one (pick 7)
        queued = [q.node for q in snapshot.queue]
        step = queued[0] if pick == 6 and queued else snapshot.next_node + 5
        return ChunkCompleted(
            id=f"{EXECUTION}:{step}:bogus{n}", execution_id=EXECUTION, step=step, result="?"
        )
    if kind in ("complete", "fail") and running:
        step = running[pick % len(running)]
        if kind == "fail" and pick == 0:
            return ChunkFailed(
                id=f"{EXECUTION}:{step}:done",
                execution_id=EXECUTION,
                step=step,
                error_type="E",
                message="m",
            )
        return ChunkCompleted(
            id=f"{EXECUTION}:{step}:done", execution_id=EXECUTION, step=step, result=pick
        )
    if kind == "emit":
        event = ["A", "B", "Other"][pick % 3]
        step = running[pick % len(running)] if running and pick > 3 else None
        reply = f"r{n}" if pick % 2 else None
        return EmitEvent(
            id=f"{EXECUTION}:emit:{n}",
            execution_id=EXECUTION,
            event=event,
            value=pick,
            step=step,
            reply_to=reply,
        )
    if kind in ("write", "nowrite"):
        op: StateOp = ["set", "append", "delete"][pick % 3]  # type: ignore[assignment]
        return StateWritten(
            id=f"{EXECUTION}:state:{n}",
            execution_id=EXECUTION,
            op=op,
            key="k",
            value=pick,
            emit=kind == "write",
        )
    if kind == "close":
        return CloseExecution(id=f"{EXECUTION}:close:{n}", execution_id=EXECUTION, reply_to="c")
    generation = snapshot.timer_generation - (pick % 2) if snapshot else 0
    return TimerFired(
        id=f"{EXECUTION}:timer:{n}",
        execution_id=EXECUTION,
        timer=AUTO_CLOSE_TIMER,
        generation=generation,
    )


def replay(
    script: list[Action], timeout: float | None, concurrency: int | None = None
) -> list[Transition]:
    snapshot: Snapshot | None = None
    transitions = []
    start = StartExecution(
        id=f"{EXECUTION}:start",
        execution_id=EXECUTION,
        value="in",
        auto_close_timeout=timeout,
        reply_to="s",
        concurrency=concurrency,
    )
    for n, action in enumerate([None, *script]):
        message = start if action is None else next_message(snapshot, action, n)
        transition = apply(RICH_INDEX, snapshot, message, now=float(n))
        transitions.append(transition)
        if transition.snapshot is not None:
            snapshot = transition.snapshot
    return transitions


def wire(value: Any) -> bytes:
    return msgspec.json.encode(value)


timeouts = st.sampled_from([None, 0.0, 0.5])
caps = st.sampled_from([None, 1, 2])
property_settings = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class TestProperties:
    @property_settings
    @given(
        script=actions,
        timeout=timeouts,
        cap=caps,
        repeat_at=st.integers(min_value=0, max_value=30),
    )
    def test_any_message_applied_twice_equals_once(
        self, script: list[Action], timeout: float | None, cap: int | None, repeat_at: int
    ) -> None:
        """Re-applying a message (at once, or redelivered later) is a flagged no-op."""
        snapshot: Snapshot | None = None
        seen: list[MailboxMessage] = []
        for n, action in enumerate([None, *script]):
            if action is None:
                message: MailboxMessage = StartExecution(
                    id=f"{EXECUTION}:start",
                    execution_id=EXECUTION,
                    value="in",
                    auto_close_timeout=timeout,
                    concurrency=cap,
                )
            else:
                message = next_message(snapshot, action, n)
            once = apply(RICH_INDEX, snapshot, message, now=float(n))
            twice = apply(RICH_INDEX, once.snapshot, message, now=float(n) + 0.5)
            assert_no_effect(message, once.snapshot, twice)
            snapshot = once.snapshot
            seen.append(message)
            if n == repeat_at and seen:
                old = seen[repeat_at % len(seen)]
                redelivered = apply(RICH_INDEX, snapshot, old, now=float(n) + 0.7)
                assert_no_effect(old, snapshot, redelivered)

    @property_settings
    @given(script=actions, timeout=timeouts, cap=caps)
    def test_apply_changes_neither_its_input_nor_what_it_sent_before(
        self, script: list[Action], timeout: float | None, cap: int | None
    ) -> None:
        """Snapshots and the messages of earlier outboxes stay as they were written, however
        later transitions change the state (they share it until one does)."""
        written: list[tuple[Transition, bytes]] = []
        snapshot: Snapshot | None = None
        for n, action in enumerate(script):
            message = next_message(snapshot, action, n) if snapshot else StartExecution(
                id=f"{EXECUTION}:start", execution_id=EXECUTION, state={"k": {"n": [n]}},
                auto_close_timeout=timeout, concurrency=cap,
            )  # fmt: skip
            transition = apply(RICH_INDEX, snapshot, message, now=float(n))
            written.append((transition, wire((transition.snapshot, transition.outbox))))
            snapshot = transition.snapshot or snapshot
        for transition, then in written:
            assert wire((transition.snapshot, transition.outbox)) == then

    @property_settings
    @given(script=actions, timeout=timeouts, cap=caps)
    def test_replay_from_scratch_is_deterministic(
        self, script: list[Action], timeout: float | None, cap: int | None
    ) -> None:
        """The same messages from an empty start give the same snapshots and outboxes."""
        first = replay(script, timeout, cap)
        second = replay(script, timeout, cap)
        assert [wire(t.snapshot) for t in first] == [wire(t.snapshot) for t in second]
        assert [wire(t.outbox) for t in first] == [wire(t.outbox) for t in second]
        assert [t.rejected for t in first] == [t.rejected for t in second]

    @property_settings
    @given(script=actions, timeout=timeouts, cap=st.integers(min_value=1, max_value=3))
    def test_execution_cap_is_never_exceeded(
        self, script: list[Action], timeout: float | None, cap: int
    ) -> None:
        """However messages arrive, no more than ``concurrency`` invocations hold a permit,
        and every queued invocation points at a live, undispatched node."""
        for transition in replay(script, timeout, concurrency=cap):
            snapshot = transition.snapshot
            if snapshot is None:
                continue
            assert len(snapshot.running) <= cap
            for queued in snapshot.queue:
                assert queued.node in snapshot.nodes
                assert not snapshot.nodes[queued.node].started

    @property_settings
    @given(script=actions, timeout=timeouts)
    def test_closed_execution_has_nothing_in_flight(
        self, script: list[Action], timeout: float | None
    ) -> None:
        """A closed execution holds no nodes, queue or permits, and announced its close once."""
        transitions = replay(script, timeout)
        notes = [c for t in transitions for c in t.outbox if isinstance(c, NotifyClosed)]
        assert len(notes) <= 1
        final = next(t.snapshot for t in reversed(transitions) if t.snapshot is not None)
        if final.lifecycle == "closed":
            assert len(notes) == 1
            assert final.status in ("completed", "failed")
            assert (final.nodes, final.queue, final.running) == ({}, [], [])
        else:
            assert notes == []

    @property_settings
    @given(script=actions, timeout=timeouts)
    def test_snapshot_survives_json_round_trip(
        self, script: list[Action], timeout: float | None
    ) -> None:
        """Every snapshot re-reads from its JSON as an equal snapshot (what KV stores)."""
        from triggerbus.contracts.snapshot import snapshot_decoder

        for transition in replay(script, timeout):
            if transition.snapshot is not None:
                data = wire(transition.snapshot)
                assert wire(snapshot_decoder.decode(data)) == data

    @property_settings
    @given(
        order=st.integers(min_value=1, max_value=6).flatmap(
            lambda n: st.permutations(list(range(n)))
        ),
        concurrency=st.sampled_from([None, 1, 2, 3]),
    )
    def test_batch_dict_is_in_declaration_order_for_any_completion_order(
        self, order: list[int], concurrency: int | None
    ) -> None:
        """However branches finish, the joined dict lists them as declared."""
        names = [f"b{i}" for i in range(len(order))]
        driver = Driver(batch_flow(names, concurrency=concurrency))
        driver.start("in")
        driver.complete(driver.step_of("pre"), "P")
        remaining = list(order)
        while remaining:
            ready = [
                i
                for i in remaining
                if any(inv.chunk == names[i] for inv in driver.outstanding.values())
            ]
            assert ready, "a branch was never released"
            if concurrency is not None:
                assert len(driver.outstanding) <= concurrency
            branch = ready[0]
            remaining.remove(branch)
            driver.complete(driver.step_of(names[branch]), f"r{branch}")
        [post] = list(driver.outstanding.values())
        assert list(post.value) == names
        assert post.value == {name: f"r{i}" for i, name in enumerate(names)}


# --- the language: for_each, match, collect (issue #3) --------------------------------------


def judged(flow: TriggerFlow, results: Result = echo) -> Result:
    """Answer judge chunks by running their real handler (it only reads ``data.value``);
    every other chunk with ``results``."""
    import asyncio
    from types import SimpleNamespace

    handlers = flow.handlers()

    def answer(invocation: InvokeChunk) -> Any:
        if invocation.chunk.startswith("match-"):
            data = SimpleNamespace(value=invocation.value)
            return asyncio.run(handlers[invocation.chunk](data))
        return results(invocation)

    return answer


def doubled(invocation: InvokeChunk) -> Any:
    return invocation.value * 2


class TestForEach:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [([1, 2, 3], [2, 4, 6]), ("ab", ["abab"]), ({"k": 1}, None), ([], []), (7, [14])],
    )
    def test_lists_split_and_anything_else_is_one_item(self, value: Any, expected: Any) -> None:
        """A list is split into items; a string, a dict or a number is one item; an empty
        list continues at once with []. Results keep the input order."""
        flow = TriggerFlow(name="fe")
        flow.for_each().to(("double", noop)).end_for_each().end()
        driver = Driver(flow)
        driver.start(value)

        def results(invocation: InvokeChunk) -> Any:
            if isinstance(invocation.value, dict):
                return invocation.value
            return invocation.value * 2

        driver.run(results)
        want = [value] if isinstance(value, dict) else expected
        assert driver.closed().snapshot == {"$final_result": want}

    def test_results_are_in_input_order_whatever_the_completion_order(self) -> None:
        flow = TriggerFlow(name="fe")
        flow.for_each().to(("double", noop)).end_for_each().end()
        driver = Driver(flow)
        driver.start([1, 2, 3])
        for step in sorted(driver.outstanding, reverse=True):
            driver.complete(step, driver.outstanding[step].value * 2)
        assert driver.closed().snapshot == {"$final_result": [2, 4, 6]}

    def test_concurrency_caps_items_in_flight(self) -> None:
        """With concurrency=2 the third item is sent only when one of the first two is done."""
        flow = TriggerFlow(name="fe")
        flow.for_each(concurrency=2).to(("double", noop)).end_for_each().end()
        driver = Driver(flow)
        driver.start([1, 2, 3])
        assert sorted(i.value for i in driver.outstanding.values()) == [1, 2]
        step = next(s for s, i in driver.outstanding.items() if i.value == 2)
        driver.complete(step, 4)
        assert sorted(i.value for i in driver.outstanding.values()) == [1, 3]
        driver.run(doubled)
        assert driver.closed().snapshot == {"$final_result": [2, 4, 6]}

    def test_nested_for_each_keeps_each_level_in_order(self) -> None:
        flow = TriggerFlow(name="fe_nested")
        flow.for_each().for_each().to(("inc", noop)).end_for_each().end_for_each().end()
        driver = Driver(flow)
        driver.start([[1, 2], [3], []])
        driver.run(lambda invocation: invocation.value + 1)
        assert driver.closed().snapshot == {"$final_result": [[2, 3], [4], []]}

    def test_items_join_within_their_own_item(self) -> None:
        """A batch inside an item joins that item's branches only."""
        flow = TriggerFlow(name="fe_batch")
        flow.for_each().batch(("x", noop), ("y", noop)).end_for_each().end()
        driver = Driver(flow)
        driver.start([1, 2])
        driver.run()
        assert driver.closed().snapshot == {
            "$final_result": [{"x": "x(1)", "y": "y(1)"}, {"x": "x(2)", "y": "y(2)"}]
        }


def gt1(data: Any) -> bool:
    return data.value > 1


def gt0(data: Any) -> bool:
    return data.value > 0


def lt0(data: Any) -> bool:
    return data.value < 0


class TestMatch:
    @pytest.mark.parametrize(("value", "expected"), [(2, "a(2)"), (1, "b(1)"), (0, "c(0)")])
    def test_hit_first_takes_the_first_case_in_declaration_order(
        self, value: int, expected: str
    ) -> None:
        flow = TriggerFlow(name="m_first")
        flow.match().case(gt1).to(("a", noop)).case(gt0).to(("b", noop)).case_else().to(
            ("c", noop)
        ).end_match().end()
        driver = Driver(flow)
        driver.start(value)
        driver.run(judged(flow))
        assert driver.closed().snapshot == {"$final_result": expected}

    @pytest.mark.parametrize(
        ("value", "expected"),
        [(3, ["a(3)", "b(3)", "c(3)"]), (2, ["a(2)", "b(2)"]), (1, ["b(1)"]), (0, 0)],
    )
    def test_hit_all_runs_every_hit_and_lists_results_in_case_order(
        self, value: int, expected: Any
    ) -> None:
        """Completion order does not matter; without a hit and an else, the value passes."""
        flow = TriggerFlow(name="m_all")
        flow.match(mode="hit_all").case(gt1).to(("a", noop)).case(gt0).to(("b", noop)).case(3).to(
            ("c", noop)
        ).end_match().end()
        driver = Driver(flow)
        driver.start(value)
        answer = judged(flow)
        for _ in range(20):
            if not driver.outstanding:
                break
            step = max(driver.outstanding)  # newest first: the reverse of case order
            driver.complete(step, answer(driver.outstanding[step]))
        assert driver.closed().snapshot == {"$final_result": expected}

    def test_value_cases_are_judged_by_the_actor_without_a_chunk(self) -> None:
        flow = TriggerFlow(name="m_value")
        flow.match().case("x").to(("x", noop)).case("y").to(("y", noop)).end_match().end()
        driver = Driver(flow)
        driver.start("y")
        assert [i.chunk for i in driver.outstanding.values()] == ["y"]
        driver.run()
        assert driver.closed().snapshot == {"$final_result": "y(y)"}

    def test_no_hit_and_no_else_passes_the_value_through(self) -> None:
        flow = TriggerFlow(name="m_pass")
        flow.match().case("x").to(("x", noop)).end_match().to(("after", noop)).end()
        driver = Driver(flow)
        driver.start("z")
        driver.run()
        assert driver.closed().snapshot == {"$final_result": "after(z)"}

    @pytest.mark.parametrize(("value", "expected"), [(1, "pos"), (-1, "neg"), (0, "zero")])
    def test_if_elif_else(self, value: int, expected: str) -> None:
        flow = TriggerFlow(name="ifc")
        flow.if_condition(gt0).to(("pos", noop)).elif_condition(lt0).to(
            ("neg", noop)
        ).else_condition().to(("zero", noop)).end_condition().end()
        driver = Driver(flow)
        driver.start(value)
        driver.run(judged(flow, lambda invocation: invocation.chunk))
        assert driver.closed().snapshot == {"$final_result": expected}

    def test_lambda_conditions_are_distinct_cases(self) -> None:
        """Each case keeps its own condition, lambdas included."""
        flow = TriggerFlow(name="lambdas")
        flow.match().case(lambda d: d.value > 1).to(("a", noop)).case(lambda d: d.value > 0).to(
            ("b", noop)
        ).end_match().end()
        driver = Driver(flow)
        driver.start(1)
        driver.run(judged(flow))
        assert driver.closed().snapshot == {"$final_result": "b(1)"}

    def test_match_inside_for_each_routes_each_item(self) -> None:
        flow = TriggerFlow(name="fe_match")
        flow.for_each().if_condition(gt1).to(("inc", noop)).end_condition().end_for_each().end()
        driver = Driver(flow)
        driver.start([1, 2, 3])
        driver.run(judged(flow, lambda invocation: invocation.value + 1))
        assert driver.closed().snapshot == {"$final_result": [1, 3, 4]}

    def test_builder_refuses_cases_outside_a_match(self) -> None:
        from triggerbus.errors import FlowDefinitionError

        flow = TriggerFlow(name="bad")
        with pytest.raises(FlowDefinitionError):
            flow.to(("a", noop)).case(1)
        with pytest.raises(FlowDefinitionError):
            flow.to(("a", noop)).end_for_each()
        with pytest.raises(FlowDefinitionError):
            flow.match().case_else()


class TestCollect:
    def test_collect_emits_once_every_branch_has_a_value(self) -> None:
        flow = TriggerFlow(name="coll")
        flow.to(("a", noop)).collect("g", "ba")
        flow.to(("b", noop)).collect("g", "bb").to(("after", noop)).end()
        driver = Driver(flow)
        driver.start(None)
        step_b = driver.step_of("b")
        driver.complete(step_b, "B")
        driver.complete(driver.step_of("a"), "A")
        driver.run(lambda invocation: invocation.value)
        assert driver.closed().snapshot == {"$final_result": {"ba": "A", "bb": "B"}}

    @pytest.mark.parametrize(
        ("mode", "fires"), [("filled_and_update", 2), ("filled_then_empty", 1)]
    )
    def test_collect_modes(self, mode: str, fires: int) -> None:
        """filled_and_update emits again on a later arrival; filled_then_empty starts over."""
        flow = TriggerFlow(name="coll_modes")
        flow.when("A").collect("g", "a", mode=mode)  # type: ignore[arg-type]
        flow.when("B").collect("g", "b", mode=mode)  # type: ignore[arg-type]
        flow.when({"collect": "g"}).to(("seen", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        driver.emit("A", 1)
        driver.emit("B", 2)
        driver.emit("A", 3)
        seen = [i.value for i in driver.invoked() if i.chunk == "seen"]
        assert seen == [{"a": 1, "b": 2}, {"a": 3, "b": 2}][:fires]


class TestSealFlowDataSubFlow:
    def test_seal_ignores_outside_state_writes_and_unseal_reopens(self) -> None:
        flow = TriggerFlow(name="seal")
        flow.when({"runtime_data": "k"}).to(("on_k", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        driver.send(SealExecution(id="s1", execution_id=EXECUTION, reply_to="seal"))
        assert driver.replies("seal") == [Reply(ok=True, value="sealed")]
        assert invokes(driver.write("k", 1, reply_to="w")) == []
        assert driver.replies("w") == [Reply(ok=True, value=[], ignored="sealed")]
        driver.send(SealExecution(id="s2", execution_id=EXECUTION, sealed=False))
        assert [i.chunk for i in invokes(driver.write("k", 2))] == ["on_k"]

    def test_flow_data_change_fires_listeners_once_and_reaches_later_chunks(self) -> None:
        from triggerbus.contracts.messages import FlowDataChanged

        flow = TriggerFlow(name="fd")
        flow.when({"flow_data": "t"}).to(("on_t", noop))
        driver = Driver(flow)
        driver.start(None, auto_close=False)
        change = FlowDataChanged(
            id=f"{EXECUTION}:flow_data:3",
            execution_id=EXECUTION,
            key="t",
            value=5,
            revision=3,
            data={"t": 5},
        )
        [invocation] = invokes(driver.send(change))
        assert (invocation.value, invocation.trigger_type, invocation.flow_data) == (
            5,
            "flow_data",
            {"t": 5},
        )
        assert driver.send(change).duplicate

    def test_sub_flow_starts_a_child_and_continues_with_its_result(self) -> None:
        from triggerbus.contracts.messages import SubFlowClosed
        from triggerbus.contracts.outbox import SendMailbox

        child = TriggerFlow(name="child")
        child.to(("c", noop)).end()
        flow = TriggerFlow(name="parent")
        flow.to_sub_flow(child).to(("after", noop)).end()
        driver = Driver(flow)
        transition = driver.start("x")
        [start] = [c for c in transition.outbox if isinstance(c, SendMailbox)]
        assert start.flow == "child" and start.message.value == "x"
        assert start.message.parent is not None
        step = start.message.parent.step
        driver.send(
            SubFlowClosed(
                id=f"{EXECUTION}:{step}:sub_flow_closed",
                execution_id=EXECUTION,
                step=step,
                child_execution_id=start.message.execution_id,
                status="completed",
                snapshot={"$final_result": "c(x)"},
            )
        )
        driver.run()
        assert driver.closed().snapshot == {"$final_result": "after(c(x))"}

    def test_a_child_closing_notifies_its_parent_and_leaves_the_parents_stream_open(
        self,
    ) -> None:
        from triggerbus.contracts.messages import ParentRef
        from triggerbus.contracts.outbox import SendMailbox

        child = TriggerFlow(name="child")
        child.to(("c", noop)).end()
        driver = Driver(child)
        driver.start("x", parent=ParentRef(flow="parent", execution_id="p1", step=4))
        driver.run()
        notices = [c for c in driver.commands() if isinstance(c, SendMailbox)]
        assert [(n.flow, n.message.step, n.message.snapshot) for n in notices] == [
            ("parent", 4, {"$final_result": "c(x)"})
        ]
        assert of_type(driver.commands(), AppendStream) == []


# --- human in the loop -----------------------------------------------------------------------


def pause(
    driver: Driver,
    step: int,
    interrupt_id: str = "i1",
    *,
    reply_to: str = "pause-reply",
    **fields: Any,
) -> Transition:
    """The chunk at ``step`` calls ``pause_for``; its invocation gives the source signal."""
    from triggerbus.contracts.messages import PauseForInterrupt, SignalRecord

    invocation = driver.outstanding[step]
    return driver.send(
        PauseForInterrupt(
            id=f"{EXECUTION}:{step}:{driver.next_id('p')}",
            execution_id=EXECUTION,
            step=step,
            interrupt_id=interrupt_id,
            source_signal=SignalRecord(
                trigger_event=invocation.trigger_event,
                trigger_type=invocation.trigger_type,
                value=invocation.value,
                layers=invocation.layers,
            ),
            reply_to=reply_to,
            **fields,
        )
    )


def resume(
    driver: Driver,
    interrupt_id: str = "i1",
    value: Any = None,
    *,
    reply_to: str = "resume-reply",
    message_id: str | None = None,
    **fields: Any,
) -> Transition:
    return driver.send(
        ResumeInterrupt(
            id=message_id or driver.next_id("resume"),
            execution_id=EXECUTION,
            interrupt_id=interrupt_id,
            value=value,
            reply_to=reply_to,
            **fields,
        )
    )


def stream_values(commands: Iterable[OutboxCommand]) -> list[Any]:
    from triggerbus.contracts.messages import StreamItem

    return [
        c.message.value
        for c in of_type(commands, AppendStream)
        if isinstance(c.message, StreamItem)
    ]


def ask_flow() -> TriggerFlow:
    flow = TriggerFlow(name="ask")
    flow.to(("ask", noop)).to(("after", noop)).end()
    return flow


class TestPauseAndResume:
    def test_pause_records_a_waiting_interrupt_and_streams_a_pause_item(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close_timeout=5.0)
        step = driver.step_of("ask")
        transition = pause(driver, step, payload={"question": "ok?"}, type="approval")
        assert driver.snapshot is not None and driver.snapshot.status == "waiting"
        interrupt = driver.snapshot.interrupts["i1"]
        assert (interrupt.status, interrupt.type, interrupt.payload) == (
            "waiting",
            "approval",
            {"question": "ok?"},
        )
        assert interrupt.resume_to == "next" and interrupt.source_step == step
        [item] = stream_values(transition.outbox)
        assert (item["type"], item["action"]) == ("interrupt", "pause")
        assert item["interrupt"]["id"] == "i1"
        assert item["signal"]["trigger_event"] == "START" and item["signal"]["value"] == "q"
        [reply] = driver.replies("pause-reply")
        assert reply.ok and reply.value["id"] == "i1"

    def test_a_paused_chunk_returning_runs_nothing_downstream_and_never_idles_out(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close_timeout=5.0, reply_to="start")
        step = driver.step_of("ask")
        pause(driver, step)
        transition = driver.complete(step, {"paused": True})
        assert invokes(transition) == []
        assert of_type(transition.outbox, ScheduleTimer) == []
        assert driver.snapshot is not None and driver.snapshot.nodes == {}
        # The start's cascade is over: a caller that did not wait for the close is answered.
        assert driver.replies("start") == [Reply(ok=True, value=[{"paused": True}])]
        assert driver.fire_timer(driver.snapshot.timer_generation).snapshot.lifecycle == "open"

    def test_resume_to_next_gives_the_value_to_the_downstream_chunk_as_a_resume(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q")
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        transition = resume(driver, "i1", {"approved": True})
        [after] = invokes(transition)
        assert (after.chunk, after.value) == ("after", {"approved": True})
        assert after.resume is not None and after.resume.interrupt_id == "i1"
        assert after.resume.value == {"approved": True}
        assert driver.snapshot is not None and driver.snapshot.status == "running"
        [item] = stream_values(transition.outbox)
        assert (item["action"], item["value"]) == ("resume", {"approved": True})
        assert item["interrupt"]["status"] == "resumed"
        [reply] = driver.replies("resume-reply")
        assert reply.ok and reply.value["status"] == "resumed"
        driver.run()
        assert driver.closed().snapshot == {"$final_result": "after({'approved': True})"}
        assert driver.closed().status == "completed"

    def test_a_settling_resume_is_answered_when_its_continuation_finishes(self) -> None:
        """``settle``: the answer waits for the cascade (here ``after``, then the end), and
        is remembered so a caller whose reply was lost finds it in the snapshot."""
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        transition = resume(driver, "i1", "yes", message_id="r1", settle=True)
        assert driver.replies("resume-reply") == []
        [after] = invokes(transition)
        driver.complete(after.step, "done")
        assert driver.replies("resume-reply") == [Reply(ok=True, value=["done"])]
        assert driver.snapshot is not None and driver.snapshot.answers["r1"] == ["done"]

    def test_answers_carry_the_status_they_were_given_in(self) -> None:
        """An emit from outside whose handler paused is answered ``waiting``."""
        flow = TriggerFlow(name="asks")
        flow.when("Ask").to(("ask", noop)).to(("after", noop)).end()
        driver = Driver(flow)
        driver.start(None, auto_close=False, reply_to="start")
        assert driver.statuses("start") == ["running"]
        driver.emit("Ask", "q", reply_to="emit")
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        assert driver.replies("emit") == [Reply(ok=True, value=[None])]
        assert driver.statuses("emit") == ["waiting"]

    def test_a_settling_resume_to_self_is_answered_at_the_next_pause(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step, resume_to="self")
        driver.complete(step, None)
        [again] = invokes(resume(driver, "i1", "answer", settle=True))
        pause(driver, again.step, interrupt_id="i2")
        assert driver.replies("resume-reply") == []
        driver.complete(again.step, {"paused": True})
        assert driver.replies("resume-reply") == [Reply(ok=True, value={"paused": True})]
        assert driver.snapshot is not None and driver.snapshot.status == "waiting"

    def test_a_settling_resume_whose_continuation_fails_is_answered_with_the_error(
        self,
    ) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        [after] = invokes(resume(driver, "i1", "yes", settle=True))
        driver.fail(after.step, "refused")
        [reply] = driver.replies("resume-reply")
        assert not reply.ok and reply.error is not None
        assert (reply.error.chunk, reply.error.message) == ("after", "refused")

    def test_resume_to_self_runs_the_chunk_again_with_its_original_value(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q")
        step = driver.step_of("ask")
        pause(driver, step, resume_to="self")
        driver.complete(step, None)
        [again] = invokes(resume(driver, "i1", "answer"))
        assert (again.chunk, again.value, again.trigger_event) == ("ask", "q", "START")
        assert again.step != step
        assert again.resume is not None and again.resume.value == "answer"
        assert again.resume.resume_count == 1
        driver.run()
        assert driver.closed().snapshot == {"$final_result": "after(ask(q))"}

    def test_resume_event_emits_that_event_with_the_value(self) -> None:
        flow = ask_flow()
        flow.when("Approved").to(("approved", noop))
        driver = Driver(flow)
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step, resume_to={"event": "Approved"}, resume_event="Approved")
        driver.complete(step, None)
        [approved] = invokes(resume(driver, "i1", "yes"))
        assert (approved.chunk, approved.value, approved.trigger_event) == (
            "approved",
            "yes",
            "Approved",
        )

    def test_unknown_interrupt_is_refused_and_changes_nothing(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q")
        pause(driver, driver.step_of("ask"))
        before = driver.snapshot
        transition = resume(driver, "nope", 1)
        assert invokes(transition) == []
        [reply] = driver.replies("resume-reply")
        assert not reply.ok and reply.error is not None
        assert reply.error.error_type == "InterruptNotFoundError"
        assert "'nope' not found" in reply.error.message
        assert driver.snapshot is not None and before is not None
        assert driver.snapshot.interrupts == before.interrupts
        assert driver.snapshot.status == "waiting"

    def test_second_resume_of_an_interrupt_is_refused(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        resume(driver, "i1", 1)
        transition = resume(driver, "i1", 2, reply_to="again")
        assert invokes(transition) == []
        [reply] = driver.replies("again")
        assert reply.error is not None and reply.error.error_type == "InterruptNotWaitingError"

    def test_repeated_resume_request_id_is_answered_and_applied_once(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        first = resume(driver, "i1", "v", resume_request_id="req-1")
        second = resume(driver, "i1", "v", resume_request_id="req-1", reply_to="again")
        assert len(invokes(first)) == 1 and invokes(second) == []
        assert stream_values(second.outbox) == []
        [reply] = driver.replies("again")
        assert reply.ok and reply.value["resume_request_id"] == "req-1"
        conflict = resume(driver, "i1", "other", resume_request_id="req-1", reply_to="conflict")
        assert invokes(conflict) == []
        [refused] = driver.replies("conflict")
        assert refused.error is not None and refused.error.error_type == "ResumeConflictError"

    def test_duplicate_resume_message_changes_nothing(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        resume(driver, "i1", "v", message_id="r-1")
        assert resume(driver, "i1", "v", message_id="r-1").duplicate

    def test_self_resume_limit_refuses_the_pause_beyond_max_resumes(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step, resume_to="self", max_resumes=1)
        driver.complete(step, None)
        [again] = invokes(resume(driver, "i1", "a"))
        # The re-run pauses again, carrying its resume count: the limit is reached.
        pause(
            driver,
            again.step,
            reply_to="second",
            resume_to="self",
            max_resumes=1,
            resume_count=again.resume.resume_count if again.resume else 0,
        )
        [reply] = driver.replies("second")
        assert reply.error is not None and "self resume limit reached" in reply.error.message

    def test_close_while_waiting_is_refused_unless_interrupts_are_cancelled(self) -> None:
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        driver.complete(step, None)
        driver.close(reply_to="close")
        [refused] = driver.replies("close")
        assert refused.error is not None and refused.error.error_type == "PendingInterruptsError"
        assert driver.snapshot is not None and driver.snapshot.lifecycle == "open"
        driver.send(
            CloseExecution(
                id="c2", execution_id=EXECUTION, reply_to="cancel", pending_interrupts="cancel"
            )
        )
        assert driver.closed().status == "cancelled"
        assert driver.snapshot.interrupts["i1"].status == "cancelled"
        ignored = resume(driver, "i1", 1, reply_to="late")
        assert driver.replies("late") == [Reply(ok=True, value=None, ignored="closed")]
        assert invokes(ignored) == []

    def test_outside_emits_still_run_while_waiting(self) -> None:
        flow = ask_flow()
        flow.when("Ping").to(("pong", noop))
        driver = Driver(flow)
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        [pong] = invokes(driver.emit("Ping", 1))
        assert pong.chunk == "pong"

    def test_a_redelivered_pause_after_the_resume_is_answered_and_waits_no_more(self) -> None:
        """A chunk attempt redelivered after its interrupt was resumed pauses again with a new
        message id: the actor answers with the resumed record and stays running."""
        driver = Driver(ask_flow())
        driver.start("q", auto_close=False)
        step = driver.step_of("ask")
        pause(driver, step)
        resume(driver, "i1", "v")
        transition = pause(driver, step, reply_to="again")
        [reply] = driver.replies("again")
        assert reply.ok and reply.value["status"] == "resumed"
        assert stream_values(transition.outbox) == []
        assert driver.snapshot is not None and driver.snapshot.status == "running"


class TestRepeatedAwaitedRequests:
    """A repeated chunk attempt sends its awaited emit again, with the same message id and a new
    reply subject: it is answered, never applied twice."""

    def _emit_again(self, driver: Driver, reply_to: str) -> Transition:
        return driver.send(
            EmitEvent(
                id=f"{EXECUTION}:9:1",
                execution_id=EXECUTION,
                event="Ping",
                value=1,
                step=None,
                reply_to=reply_to,
            )
        )

    def test_a_finished_request_is_answered_from_the_stored_answer(self) -> None:
        driver = Driver(ping_flow())
        driver.start(None, auto_close=False)
        self._emit_again(driver, "first-attempt")
        driver.run()
        assert driver.replies("first-attempt") == [
            Reply(ok=True, value=["slow(1)", "fast(1)", "sync(1)"])
        ]
        again = self._emit_again(driver, "second-attempt")
        assert again.duplicate
        assert invokes(again) == []
        assert driver.replies("second-attempt") == [
            Reply(ok=True, value=["slow(1)", "fast(1)", "sync(1)"])
        ]

    def test_a_request_still_in_flight_answers_the_new_attempt(self) -> None:
        driver = Driver(ping_flow())
        driver.start(None, auto_close=False)
        first = self._emit_again(driver, "first-attempt")
        assert len(invokes(first)) == 3
        again = self._emit_again(driver, "second-attempt")
        assert invokes(again) == [], "the emit is not applied a second time"
        driver.run()
        assert driver.replies("first-attempt") == []
        assert driver.replies("second-attempt") == [
            Reply(ok=True, value=["slow(1)", "fast(1)", "sync(1)"])
        ]


class TestOutcomeAfterEffects:
    """A chunk's outcome names the effects its attempt sent without waiting; it is applied only
    after them, so a redelivered state write cannot be overtaken by the step's completion."""

    def test_an_outcome_that_overtook_its_effect_is_deferred_until_the_effect_is_applied(
        self,
    ) -> None:
        driver = Driver(chain_flow())
        driver.start("in", auto_close=False)
        step = next(iter(driver.outstanding))
        effect = f"{EXECUTION}:{step}:1"
        completed = ChunkCompleted(
            id=f"{EXECUTION}:{step}:done",
            execution_id=EXECUTION,
            step=step,
            result="r",
            effects=[effect],
        )
        early = driver.send(completed)
        assert early.deferred
        assert invokes(early) == []
        driver.send(
            StateWritten(
                id=effect, execution_id=EXECUTION, op="set", key="k", value=1, emit=False, step=step
            )
        )
        late = driver.send(completed)
        assert not late.deferred
        assert len(invokes(late)) == 1, "the next chunk runs once the effect is in"
        assert driver.snapshot is not None and driver.snapshot.state == {"k": 1}


class TestDuplicateAnswers:
    def test_a_repeated_start_is_answered_with_the_execution_id_and_runs_nothing(self) -> None:
        """The actor, not its host, decides what a repeated start is told."""
        driver = Driver(chain_flow())
        start = StartExecution(
            id=f"{EXECUTION}:start", execution_id=EXECUTION, auto_close=False, reply_to="first"
        )
        driver.send(start)
        again = driver.send(msgspec.structs.replace(start, reply_to="second"))
        assert again.duplicate
        assert invokes(again) == []
        assert driver.replies("second") == [Reply(ok=True, value=EXECUTION)]


def test_with_snapshot_keeps_every_other_field_of_the_transition() -> None:
    """The execution host swaps in the traced snapshot with ``with_snapshot``: a field added
    to ``Transition`` and not carried over would be lost on every traced message."""
    first = new_snapshot(GraphIndex.build(chain_flow().graph()), "e1", now=0.0)
    second = msgspec.structs.replace(first, status="waiting")
    values = {"snapshot": first, "outbox": [Observe(name="x", attributes={})],
              "duplicate": True, "rejected": "why", "deferred": True,
              "rejected_as": "ExecutionNotFoundError"}  # fmt: skip
    assert set(values) == {field.name for field in dataclasses.fields(Transition)}
    transition = Transition(**values)
    assert transition.with_snapshot(second) == dataclasses.replace(transition, snapshot=second)


# --- copy on write: what a transition shares with the snapshots before it ---------------------


class _RecordingDriver(Driver):
    """Keeps each transition's snapshot and outbox as the wire saw them when it was made."""

    def __init__(self, flow: TriggerFlow) -> None:
        super().__init__(flow)
        self.written: list[tuple[Transition, bytes]] = []

    def send(self, message: MailboxMessage) -> Transition:
        transition = super().send(message)
        self.written.append((transition, wire((transition.snapshot, transition.outbox))))
        return transition


def _nested_result(invocation: InvokeChunk) -> Any:
    return {"step": invocation.step, "seen": [invocation.value], "inner": {"n": invocation.step}}


def _join_flows() -> list[tuple[TriggerFlow, Any]]:
    batch = batch_flow(["x", "y", "z", "w"])
    each = TriggerFlow(name="cow_each")
    each.for_each().batch(("x", noop), ("y", noop)).end_for_each().end()
    hits = TriggerFlow(name="cow_hits")
    hits.match(mode="hit_all").case(gt1).to(("a", noop)).case(gt0).to(("b", noop)).case(3).to(
        ("c", noop)
    ).end_match().end()
    collected = TriggerFlow(name="cow_collect")
    collected.to(("a", noop)).collect("g", "ba")
    collected.to(("b", noop)).collect("g", "bb").to(("after", noop)).end()
    return [(batch, None), (each, [1, 2, 3]), (hits, 3), (collected, None)]


class TestCopyOnWrite:
    @pytest.mark.parametrize("newest_first", [True, False])
    def test_joins_change_no_earlier_snapshot_or_outbox(self, newest_first: bool) -> None:
        """A join's results are shared between snapshots, its containers copied on change:
        every snapshot and outbox stays as it was made, in every kind of join."""
        for flow, value in _join_flows():
            driver = _RecordingDriver(flow)
            driver.start(value)
            answer = judged(flow, _nested_result)
            for _ in range(100):
                if not driver.outstanding:
                    break
                step = max(driver.outstanding) if newest_first else min(driver.outstanding)
                driver.complete(step, answer(driver.outstanding[step]))
            assert not driver.outstanding, flow.name
            for transition, then in driver.written:
                assert wire((transition.snapshot, transition.outbox)) == then, flow.name

    def test_when_joins_change_no_earlier_snapshot(self) -> None:
        driver = _RecordingDriver(when_flow("and"))
        driver.start(None, auto_close=False)
        driver.emit("A", {"a": [1]})
        driver.emit("A", {"a": [2]})
        driver.emit("B", {"b": {"c": 3}})
        assert driver.outstanding
        for transition, then in driver.written:
            assert wire((transition.snapshot, transition.outbox)) == then
