"""Benchmark 8: what an execution's state, and a fan-in's results, cost the actor per step.

The pure ``apply`` of one step of ``bench_timed_chain`` (a chunk's completion: the next chunk
invoked), timed in a loop for executions whose state is empty, 0.6 KB, 3 KB and 13 KB of
JSON. The anchor is what the execution host must do with that state on every step whatever
the actor does: encode the snapshot it stores (msgspec JSON). A step whose cost grew with the
state (copying it into the transition and into each invocation, as rounds one to nine did)
shows as a ratio that grows with the size. Information: the issue sets no target here.

The same for a fan-in: the last of ``bench_fanout``'s ten branches completing, with the other
nine results (each ``RESULT_KEYS`` records of the kind above) already held in the batch's join.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from bench import flows
from triggerbus.actors.execution import apply
from triggerbus.actors.graph_index import GraphIndex
from triggerbus.contracts.codec import encode
from triggerbus.contracts.messages import ChunkCompleted, StartExecution
from triggerbus.contracts.outbox import Invoke
from triggerbus.contracts.snapshot import Snapshot

KEYS = (0, 10, 50, 200)
"""Entries of the state; each is a small record of a name, two tags, a score and a flag."""
RESULT_KEYS = (0, 10, 50)
"""Entries of each branch's result in the fan-in measurement."""
CALLS = 2_000
REPEATS = 5


def _state(keys: int) -> dict[str, Any]:
    return {
        f"k{i}": {"name": f"item {i}", "tags": ["a", "b"], "score": i * 1.5, "ok": True}
        for i in range(keys)
    }


def _mid_step(index: GraphIndex, state: dict[str, Any]) -> tuple[Snapshot, ChunkCompleted]:
    """A running execution with ``state``, and the completion of its first chunk."""
    started = apply(index, None, StartExecution(id="e:start", execution_id="e", state=state,
                                                auto_close_timeout=0.0), now=1.0)  # fmt: skip
    assert started.snapshot is not None
    invocation = next(c.message for c in started.outbox if isinstance(c, Invoke))
    completed = ChunkCompleted(id=f"e:{invocation.step}:done", execution_id="e",
                               step=invocation.step, result=[1.0], sent_at=1.0)  # fmt: skip
    return started.snapshot, completed


def _best_us(call: Any) -> float:
    """Microseconds per call: the best of a few runs (the least disturbed by the machine)."""
    runs = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        for _ in range(CALLS):
            call()
        runs.append((time.perf_counter() - began) / CALLS * 1e6)
    return min(runs)


def measure() -> list[dict[str, Any]]:
    index = GraphIndex.build(flows.timed_chain.graph())
    warm, completed = _mid_step(index, {})
    _best_us(lambda: apply(index, warm, completed, now=2.0))  # caches and specialisation
    results = []
    for keys in KEYS:
        snapshot, completed = _mid_step(index, _state(keys))
        step = apply(index, snapshot, completed, now=2.0)
        assert step.snapshot is not None and any(isinstance(c, Invoke) for c in step.outbox)
        results.append({
            "state_bytes": len(msgspec.json.encode(snapshot.state)),
            "apply_us": _best_us(lambda s=snapshot, m=completed: apply(index, s, m, now=2.0)),
            "encode_us": _best_us(lambda s=step.snapshot: encode(s)),
        })  # fmt: skip
    return results


def _last_arrival(index: GraphIndex, keys: int) -> tuple[Snapshot, ChunkCompleted]:
    """A fan-out whose join holds nine results, and the tenth branch's completion."""
    snapshot, completed = _mid_step(index, {})
    step = apply(index, snapshot, completed, now=2.0)  # prepare done: the ten branches invoked
    assert step.snapshot is not None
    snapshot = step.snapshot
    branches = [c.message for c in step.outbox if isinstance(c, Invoke)]
    for n, invocation in enumerate(branches):
        done = ChunkCompleted(id=f"e:{invocation.step}:done", execution_id="e",
                              step=invocation.step, result=_state(keys), sent_at=1.0)  # fmt: skip
        if n == len(branches) - 1:
            return snapshot, done
        arrived = apply(index, snapshot, done, now=3.0 + n)
        assert arrived.snapshot is not None
        snapshot = arrived.snapshot
    raise AssertionError("the fan-out invoked no branch")


def measure_fan_in() -> list[dict[str, Any]]:
    index = GraphIndex.build(flows.fanout.graph())
    results = []
    for keys in RESULT_KEYS:
        snapshot, completed = _last_arrival(index, keys)
        step = apply(index, snapshot, completed, now=20.0)
        assert step.snapshot is not None
        results.append({
            "join_bytes": len(msgspec.json.encode(snapshot.joins)),
            "apply_us": _best_us(lambda s=snapshot, m=completed: apply(index, s, m, now=20.0)),
            "encode_us": _best_us(lambda s=snapshot: encode(s)),
        })  # fmt: skip
    return results


def bench_state_cost(ctx: Any) -> dict:
    from bench.benchmarks import row  # bench.benchmarks imports this module

    results = measure()
    smallest = results[0]["apply_us"]
    rows = [
        row("8 state", f"apply of one chain step, state of {r['state_bytes']:,} bytes",
            round(r["apply_us"], 1), "us", anchor="encoding the snapshot to store",
            anchor_value=round(r["encode_us"], 1),
            note=f"{r['apply_us'] / smallest:.2f}x the apply with an empty state")
        for r in results
    ]  # fmt: skip
    largest = results[-1]["apply_us"] / smallest
    rows.append(row("8 state", "apply with the largest state against the empty one",
                    round(largest, 2), "x",
                    note="information, not an issue target: ~1x when a step's actor cost "
                         "does not grow with the state"))  # fmt: skip
    fan_in = measure_fan_in()
    rows += [
        row("8 state", f"apply of a fan-in's last arrival, join holding {r['join_bytes']:,} "
            "bytes", round(r["apply_us"], 1), "us", anchor="encoding the snapshot to store",
            anchor_value=round(r["encode_us"], 1),
            note=f"{r['apply_us'] / fan_in[0]['apply_us']:.2f}x with empty results")
        for r in fan_in
    ]  # fmt: skip
    return {"rows": rows, "details": {"sizes": results, "fan_in": fan_in}}
