"""The NATS permission table of docs/operations.md is enough, and it is the one tested.

The table is read from the document itself, and a nats-server account is given a user holding
exactly those permissions for prefix ``tb`` and flow ``F``. This process then hosts and drives
a flow as that user: it provisions, starts an execution, reads a runtime stream long enough to
need JetStream's flow control, pauses and resumes, writes flow data, waits on ``get_result``
(a KV watch) and closes by a timer. A permission the table lacks shows as a violation the server
reports and a request that never gets an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats

from tests._helpers import ROOT, child_env, configure_pure_client
from triggerbus import TriggerFlow, TriggerFlowRuntimeData
from triggerbus._runtime import close_runtime, configure
from triggerbus.bus.embedded import EmbeddedServer
from triggerbus.bus.subjects import Subjects
from triggerbus.config import Settings
from triggerbus.contracts.codec import encode
from triggerbus.contracts.messages import DeadLetter, EmitEvent
from triggerbus.testing import WorkerProcess

ITEMS = 1500
"""Stream items of 2 KB: past the point (about 2 MB) where the reader must answer flow control."""

flow = TriggerFlow(name="F")


@flow.chunk("produce")
async def produce(data: TriggerFlowRuntimeData) -> Any:
    for n in range(ITEMS):
        await data.async_put_into_stream({"n": n, "pad": "x" * 2000})
    await data.async_set_flow_data("produced", ITEMS)
    return data.value


@flow.chunk("approve")
async def approve(data: TriggerFlowRuntimeData) -> Any:
    return await data.async_pause_for(type="approval", payload=data.value, resume_to="next")


@flow.chunk("publish")
async def publish(data: TriggerFlowRuntimeData) -> Any:
    return {"approved": data.value, "produced": data.get_flow_data("produced")}


flow.to(produce).to(approve).to(publish).end()


def documented_permissions() -> tuple[list[str], list[str]]:
    """(publish, subscribe) subjects from the table under "## NATS permissions"."""
    document = (ROOT / "docs" / "operations.md").read_text()
    section = document.split("## NATS permissions", 1)[1].split("\n## ", 1)[0]
    publish: list[str] = []
    subscribe: list[str] = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[1].startswith("`"):
            continue
        kind, subjects = cells[0], _subjects(cells[1])
        if kind == "subscribe":
            subscribe += subjects
        elif kind.startswith("JetStream, for each stream"):
            streams = [name for name in _subjects(kind) if name != "S"]
            publish += [_per_stream(subject, stream) for subject in subjects for stream in streams]
        else:
            publish += subjects
    return publish, subscribe


def _subjects(cell: str) -> list[str]:
    return [s for s in re.findall(r"`([^`]+)`", cell) if "." in s or "_" in s]


def _per_stream(subject: str, stream: str) -> str:
    return ".".join(stream if token == "S" else token for token in subject.split("."))


def server_config(directory: Path, publish: list[str], subscribe: list[str]) -> Path:
    user = {
        "user": "worker",
        "password": "worker-secret",
        "permissions": {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}},
    }
    config = {"accounts": {"APP": {"jetstream": "enabled", "users": [user]}}}
    path = directory / "nats.conf"
    path.write_text(json.dumps(config))  # JSON is a valid nats-server configuration
    return path


@contextlib.asynccontextmanager
async def restricted_user(
    tmp_path: Path, publish: list[str], subscribe: list[str]
) -> AsyncIterator[str]:
    """A server whose one user holds exactly ``publish`` and ``subscribe``, and this process's
    runtime pointed at it as that user; yields the user's URL."""
    config = server_config(tmp_path, publish, subscribe)
    store = str(tmp_path / "store")
    with EmbeddedServer(store_dir=store, extra_args=["-c", str(config)]) as server:
        url = server.url.replace("nats://", "nats://worker:worker-secret@")
        configure(Settings(nats_url=url, prefix="tb"))
        try:
            yield url
        finally:
            await close_runtime()
            configure(None)


async def run_the_flow() -> tuple[int, dict[str, Any], Any]:
    execution = flow.create_execution(auto_close_timeout=0.2)  # closed by a timer
    start = asyncio.create_task(execution.async_start("draft"))
    read = 0
    async for item in execution.get_async_runtime_stream(timeout=20):
        if "n" in item:
            read += 1
        elif item.get("action") == "pause":
            await execution.async_continue_with(item["interrupt"]["id"], "yes")
    snapshot = await start
    return read, snapshot, await execution.async_get_result()


async def test_a_user_holding_the_documented_permissions_runs_a_flow(tmp_path: Path) -> None:
    publish, subscribe = documented_permissions()
    assert "$JS.FC.tb_stream.>" in publish and "tb.F.flow_data" in subscribe, "table not read"
    async with restricted_user(tmp_path, publish, subscribe), asyncio.timeout(60):
        read, snapshot, result = await run_the_flow()
    assert read == ITEMS
    assert snapshot["$final_result"] == {"approved": "yes", "produced": ITEMS}
    assert result == {"approved": "yes", "produced": ITEMS}


async def test_a_worker_and_a_client_holding_the_documented_permissions(tmp_path: Path) -> None:
    """The same, with the chunks and the execution actors in a ``triggerbus worker`` process
    and this process a pure client: both hold only the table."""
    publish, subscribe = documented_permissions()
    async with restricted_user(tmp_path, publish, subscribe) as url:
        worker = WorkerProcess(
            "tests.bus.test_permissions:flow", nats_url=url, prefix="tb", cwd=str(ROOT),
            env=child_env(),
        )  # fmt: skip
        configure_pure_client(url, "tb")
        async with asyncio.timeout(90), worker:
            read, snapshot, result = await run_the_flow()
            assert await worker.wait_for("chunk_attempt_succeeded"), "the worker ran them"
    assert read == ITEMS
    assert snapshot["$final_result"] == {"approved": "yes", "produced": ITEMS}
    assert result == {"approved": "yes", "produced": ITEMS}


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**child_env(), "TRIGGERBUS_NATS_URL": url, "TRIGGERBUS_PREFIX": "tb"}
    return subprocess.run([sys.executable, "-m", "triggerbus", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def _dlq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _cli(url, "dlq", *args)


async def _dead_letter(url: str, letter: DeadLetter) -> int:
    """Store ``letter`` as the user, once this process has provisioned the streams as it;
    returns its sequence."""
    await flow.create_execution(execution_id="p1", auto_close=False).async_set_state("k", 1)
    connection = await nats.connect(url)
    try:
        subject = Subjects("tb").dead_letter("F", "__mailbox__")
        return (await connection.jetstream().publish(subject, encode(letter))).seq
    finally:
        await connection.drain()


async def test_the_operator_commands_holding_the_documented_permissions(tmp_path: Path) -> None:
    """An operator's ``triggerbus dlq`` (list, show, replay ``--delete``), ``list`` and
    ``status`` as that user."""
    publish, subscribe = documented_permissions()
    emit = EmitEvent(id="e1:emit:1", execution_id="e1", event="none")
    letter = DeadLetter(subject=Subjects("tb").mailbox("F", "e1"), data=encode(emit).decode(),
                        reason="retries exhausted (test)", execution_id="e1")  # fmt: skip
    async with restricted_user(tmp_path, publish, subscribe) as url, asyncio.timeout(90):
        seq = await _dead_letter(url, letter)
        listed = await asyncio.to_thread(_dlq, url, "list")
        shown = await asyncio.to_thread(_dlq, url, "show", str(seq))
        replayed = await asyncio.to_thread(_dlq, url, "replay", str(seq), "--delete")
        after = await asyncio.to_thread(_dlq, url, "list")
        executions = await asyncio.to_thread(_cli, url, "list", "F")
        status = await asyncio.to_thread(_cli, url, "status", "F", "p1")
    for done in (listed, shown, replayed, after, executions, status):
        assert done.returncode == 0, done.stderr[-2000:]
    sequences = [[line.split("\t")[0] for line in done.stdout.splitlines()]
                 for done in (listed, after)]  # fmt: skip
    assert str(seq) in sequences[0] and str(seq) not in sequences[1]
    assert json.loads(shown.stdout)["reason"] == "retries exhausted (test)"
    assert executions.stdout.startswith("p1\tcreated\topen\t")
    assert json.loads(status.stdout)["state"] == {"k": 1}


async def test_a_missing_permission_is_named_not_just_timed_out(tmp_path: Path) -> None:
    """The server refuses a request asynchronously and never answers it: the timeout's error
    names the refusal, so an operator learns which permission is missing."""
    publish, subscribe = documented_permissions()
    lacking = [s for s in publish if not s.startswith("$JS.API.STREAM.MSG.DELETE.")]
    letter = DeadLetter(subject="tb.F.exec.x", reason="test", data="{}")
    async with restricted_user(tmp_path, lacking, subscribe) as url, asyncio.timeout(60):
        seq = await _dead_letter(url, letter)
        refused = await asyncio.to_thread(_dlq, url, "replay", str(seq), "--delete")
    error = refused.stderr.strip().splitlines()[-1].lower()  # the command's own message
    assert refused.returncode == 1
    assert error.startswith("triggerbus: nats did not answer in time"), error
    assert 'permissions violation for publish to "$js.api.stream.msg.delete.tb_dlq"' in error
    assert "nats_permission_denied" in refused.stderr  # and the log says so as it happens
