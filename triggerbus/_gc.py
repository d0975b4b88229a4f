"""The cyclic garbage collector's settings in the one process triggerbus owns: the worker.

Why: on Python's defaults the collector took 14-15 % of a fan-out's CPU (docs/performance.md,
round seven). Most of it is young collections that find nothing, since a message's objects
die by reference counting, and full collections that walk every module, class and function
loaded at start. Raised thresholds, and what start-up loaded frozen out of every later
collection, gave a worker hosting executions and chunks 5 % more fan-out throughput at 7 %
less CPU per execution (median of six alternated pairs, round ten). An application's own
process keeps its own settings: the runtime does not own them there.
"""

from __future__ import annotations

import gc

WORKER_GC = ("tuned", "python")
TUNED_THRESHOLDS = (20_000, 20, 20)
"""A young collection every 20,000 net allocations instead of 700; the older generations'
ratios raised alike."""


def tune_worker_gc(choice: str) -> None:
    """Apply ``choice``: ``tuned`` (raised thresholds, start-up objects frozen) or ``python``
    (the interpreter's settings, untouched)."""
    if choice == "python":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*TUNED_THRESHOLDS)
