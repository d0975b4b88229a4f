"""triggerbus benchmarks, run side by side with their anchors: ``python bench/run.py``.

Never part of the test run (pytest's testpaths is tests/ only).
"""
