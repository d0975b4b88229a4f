"""Small helpers shared by tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_module(relative: str, name: str) -> ModuleType:
    """Import a file of this repository under a private module name."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_env() -> dict[str, str]:
    """Environment for worker processes: this repository importable from their cwd."""
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}


def configure_pure_client(url: str, prefix: str, *, ack_wait: float = 2.0) -> None:
    """This process only starts executions and waits for them; workers do all the work."""
    from triggerbus._runtime import configure
    from triggerbus.config import Settings

    configure(
        Settings(
            nats_url=url,
            prefix=prefix,
            local_chunks=frozenset(),
            host_executions=False,
            ack_wait=ack_wait,
        )
    )
