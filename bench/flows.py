"""The flows the benchmarks run, with explicit names so workers and the driver agree.

Workers load them as ``python -m triggerbus worker bench.flows:<variable>``. Handlers do the
least work that still moves a value, so the benchmarks measure the runtime, not the handlers.
bench/agently_anchor.py defines the same flows for Agently (it cannot import this module:
Agently lives in its own venv).
"""

from __future__ import annotations

import asyncio
import time

from triggerbus import TriggerFlow, TriggerFlowRuntimeData

FANOUT_WIDTH = 10
IO_WAIT_SECONDS = 0.020
CPU_BURN_SECONDS = 0.005

# --- 1, 2: a 3-chunk chain, and a 1-chunk flow for the marginal cost of a step ----------------

chain = TriggerFlow(name="bench_chain")


@chain.chunk("step_a")
async def step_a(data: TriggerFlowRuntimeData) -> int:
    return data.value + 1


@chain.chunk("step_b")
async def step_b(data: TriggerFlowRuntimeData) -> int:
    return data.value + 1


@chain.chunk("step_c")
async def step_c(data: TriggerFlowRuntimeData) -> int:
    return data.value + 1


chain.to(step_a).to(step_b).to(step_c).end()

single = TriggerFlow(name="bench_single")


@single.chunk("only_step")
async def only_step(data: TriggerFlowRuntimeData) -> int:
    return data.value + 1


single.to(only_step).end()

# --- 1: the same chain, each chunk stamping when it started ----------------------------------
# time.monotonic() is CLOCK_MONOTONIC, one clock for every process on the machine, so a driver
# can subtract stamps taken in a worker: chunk start to next chunk start is one step, measured
# directly rather than inferred from end-to-end times.

timed_chain = TriggerFlow(name="bench_timed_chain")


@timed_chain.chunk("stamp_a")
async def stamp_a(data: TriggerFlowRuntimeData) -> list[float]:
    return [time.monotonic()]


@timed_chain.chunk("stamp_b")
async def stamp_b(data: TriggerFlowRuntimeData) -> list[float]:
    return [*data.value, time.monotonic()]


@timed_chain.chunk("stamp_c")
async def stamp_c(data: TriggerFlowRuntimeData) -> list[float]:
    return [*data.value, time.monotonic()]


timed_chain.to(stamp_a).to(stamp_b).to(stamp_c).end()

# --- 3: prepare -> batch of 10 -> join -------------------------------------------------------

fanout = TriggerFlow(name="bench_fanout")


@fanout.chunk("prepare")
async def prepare(data: TriggerFlowRuntimeData) -> int:
    return data.value


def _branch(index: int):
    async def branch(data: TriggerFlowRuntimeData) -> int:
        return data.value + index

    return fanout.chunk(f"branch_{index}")(branch)


branches = [_branch(i) for i in range(FANOUT_WIDTH)]


@fanout.chunk("join")
async def join(data: TriggerFlowRuntimeData) -> int:
    return sum(data.value.values())


fanout.to(prepare).batch(*branches).to(join).end()

# --- 4: one chunk puts N items into the runtime stream ---------------------------------------

stream = TriggerFlow(name="bench_stream")


@stream.chunk("produce")
async def produce(data: TriggerFlowRuntimeData) -> int:
    count = int(data.value)
    for index in range(count):
        await data.async_put_into_stream(index)
    await data.async_stop_stream()
    return count


stream.to(produce).end()

# --- 5: hot chunks -----------------------------------------------------------------------------

io_hot = TriggerFlow(name="bench_io_hot")


@io_hot.chunk("io_wait")
async def io_wait(data: TriggerFlowRuntimeData) -> int:
    await asyncio.sleep(IO_WAIT_SECONDS)
    return data.value


io_hot.to(io_wait).end()

cpu_hot = TriggerFlow(name="bench_cpu_hot")


@cpu_hot.chunk("cpu_burn")
def cpu_burn(data: TriggerFlowRuntimeData) -> int:
    # A sync handler, as CPU-bound user code would be written; the runtime runs it in a thread.
    end = time.perf_counter() + CPU_BURN_SECONDS
    spins = 0
    while time.perf_counter() < end:
        spins += 1
    return data.value


cpu_hot.to(cpu_burn).end()

# --- 6: waiting executions ---------------------------------------------------------------------

waiting = TriggerFlow(name="bench_waiting")


@waiting.chunk("ask")
async def ask(data: TriggerFlowRuntimeData) -> object:
    return await data.async_pause_for(type="approval", payload=data.value, interrupt_id="ok")


@waiting.chunk("finish")
async def finish(data: TriggerFlowRuntimeData) -> object:
    return data.value


waiting.to(ask).to(finish).end()
