"""Small helpers shared by tests."""

from __future__ import annotations

import importlib.util
import os
import select
import subprocess
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


def run_python(
    *args: str, env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` from the repository's root with exactly ``env``, to completion."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def without_triggerbus_settings() -> dict[str, str]:
    """This process's environment minus every ``TRIGGERBUS_*``: what a user's shell has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERBUS_")}


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


def process_exited(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not our child) ends within ``timeout``: waits on a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def assert_server_gone(server: int, watchdog: int, store_dir: str) -> None:
    """An embedded nats-server, its watchdog and its temporary store are all gone."""
    assert process_exited(server, 15), "the nats-server outlived the process that started it"
    assert process_exited(watchdog, 15), "the server's watchdog did not exit after it"
    assert not Path(store_dir).exists(), "the temporary store directory was left behind"
