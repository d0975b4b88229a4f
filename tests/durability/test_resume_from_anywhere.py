"""continue_with from another process: a plain NATS client (no triggerbus import) publishing
the documented JSON, correct, duplicated and malformed; and the ``triggerbus resume`` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from tests._helpers import ROOT, load_module


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=60,
    )


def _plain(url: str, subject: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = _run(str(ROOT / "tests/durability/plain_resume.py"), url, subject,
                json.dumps(messages))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_plain_nats_resume_correct_duplicated_and_malformed(
    runtime: Any, nats_url: str, prefix: str
) -> None:
    flow = load_module("tests/flows/approval.py", "approval_plain").flow
    execution = flow.create_execution(auto_close=False)
    subject = f"{prefix}.{flow.name}.exec.{execution.id}"

    def resume(msg_id: str, **fields: Any) -> dict[str, Any]:
        body = {"kind": "resume", "id": msg_id, "execution_id": execution.id, **fields}
        return {"message": body, "msg_id": msg_id}

    async with asyncio.timeout(90):
        await execution.async_start("doc-9")
        before = await execution.async_get_snapshot()
        assert before["status"] == "waiting"

        # Malformed: no interrupt_id, then a value of the wrong type. A clear error reply,
        # and the execution is exactly as it was.
        malformed = await asyncio.to_thread(_plain, nats_url, subject, [
            resume("bad-1", value="yes"),
            resume("bad-2", interrupt_id=7, value="yes"),
        ])  # fmt: skip
        assert [m["reply"]["ok"] for m in malformed] == [False, False]
        errors = [m["reply"]["error"] for m in malformed]
        assert errors[0]["error_type"] == "ContractError"
        assert "missing required field `interrupt_id`" in errors[0]["message"]
        assert "$.interrupt_id" in errors[1]["message"]
        after_malformed = await execution.async_get_snapshot()
        assert after_malformed["interrupts"] == before["interrupts"]
        assert after_malformed["status"] == "waiting"
        assert after_malformed["applied"] == before["applied"]

        # Correct, then duplicated twice: the same message again (JetStream drops it) and a
        # new message with the same resume_request_id (answered, applied once).
        ok = resume("ok-1", interrupt_id="approve", value="yes", resume_request_id="req-9")
        again = resume("ok-2", interrupt_id="approve", value="yes", resume_request_id="req-9")
        results = await asyncio.to_thread(_plain, nats_url, subject, [ok, ok, again])
        snapshot = await execution.async_close()

    correct, same_id, same_request = results
    assert correct["reply"]["ok"] and correct["reply"]["value"]["status"] == "resumed"
    assert correct["reply"]["value"]["resume_request_id"] == "req-9"
    assert same_id == {"duplicate": True, "reply": None}
    assert same_request["reply"]["ok"]
    assert same_request["reply"]["value"]["resumed_at"] == correct["reply"]["value"]["resumed_at"]
    assert snapshot["published"] == ["yes"], "the resume was applied exactly once"
    assert snapshot["$final_result"]["approved"] == "yes"


async def test_cli_resume_answers_and_refuses_clearly(
    runtime: Any, nats_url: str, prefix: str
) -> None:
    flow = load_module("tests/flows/approval.py", "approval_cli").flow
    execution = flow.create_execution(auto_close=False)
    env = {"TRIGGERBUS_NATS_URL": nats_url, "TRIGGERBUS_PREFIX": prefix,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = ["-m", "triggerbus", "resume", "tests.flows.approval:flow", execution.id]
    async with asyncio.timeout(90):
        await execution.async_start("cli")
        unknown = await asyncio.to_thread(_run, *cli, "nope", "--value", "1", env=env)
        missing = await asyncio.to_thread(
            _run, *cli[:-1], "never-started", "approve", "--value", "1", env=env
        )
        done = await asyncio.to_thread(
            _run, *cli, "approve", "--value", '{"by": "cli"}', "--request-id", "r1", env=env
        )
        snapshot = await execution.async_close()
    assert unknown.returncode == 1
    assert "InterruptNotFoundError" in unknown.stderr and "'nope' not found" in unknown.stderr
    assert missing.returncode == 1
    assert "has no execution 'never-started' (never started" in missing.stderr, missing.stderr
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resume_value"] == {"by": "cli"}
    assert snapshot["$final_result"]["approved"] == {"by": "cli"}


async def test_cli_resume_with_wait_prints_the_settled_continuation(
    runtime: Any, nats_url: str, prefix: str
) -> None:
    """``--wait`` answers after ``publish`` ran (the continuation's end), with its result."""
    flow = load_module("tests/flows/approval.py", "approval_cli_wait").flow
    execution = flow.create_execution(auto_close=False)
    env = {"TRIGGERBUS_NATS_URL": nats_url, "TRIGGERBUS_PREFIX": prefix,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = ["-m", "triggerbus", "resume", "tests.flows.approval:flow", execution.id, "approve"]
    async with asyncio.timeout(90):
        await execution.async_start("cli")
        done = await asyncio.to_thread(_run, *cli, "--value", '"ok"', "--wait", env=env)
        assert done.returncode == 0, done.stderr
        # Already stored when the CLI printed: no wait for the close needed to see it.
        state = await execution.async_get_state()
        snapshot = await execution.async_close()
    printed = json.loads(done.stdout)
    assert printed == {
        "status": "running",
        "result": [{"approved": "ok", "is_resume": True, "interrupt_id": "approve"}],
    }
    assert state["published"] == ["ok"]
    assert snapshot["$final_result"]["approved"] == "ok"


async def test_cli_resume_with_wait_reports_a_failing_continuation(
    runtime: Any, nats_url: str, prefix: str
) -> None:
    flows = load_module("tests/flows/approval.py", "approval_cli_refusing")
    execution = flows.refusing.create_execution(auto_close=False)
    env = {"TRIGGERBUS_NATS_URL": nats_url, "TRIGGERBUS_PREFIX": prefix,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = ["-m", "triggerbus", "resume", "tests.flows.approval:refusing", execution.id]
    async with asyncio.timeout(90):
        await execution.async_start(None)
        done = await asyncio.to_thread(_run, *cli, "approve", "--value", '"no"', "--wait", env=env)
        snapshot = await execution.async_get_snapshot()
    assert done.returncode == 1
    assert "the continuation failed: chunk 'check' raised ValueError: cannot accept 'no'" in (
        done.stderr
    ), done.stderr
    assert snapshot["status"] == "failed"


async def test_cli_status_shows_the_waiting_interrupt_then_the_close(
    runtime: Any, nats_url: str, prefix: str
) -> None:
    """``triggerbus status`` tells an operator what ``resume`` needs: the waiting interrupt's
    id, type and payload; by module:variable or by the flow's name."""
    flow = load_module("tests/flows/approval.py", "approval_cli_status").flow
    execution = flow.create_execution(auto_close=False)
    env = {"TRIGGERBUS_NATS_URL": nats_url, "TRIGGERBUS_PREFIX": prefix,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    status = ["-m", "triggerbus", "status"]
    async with asyncio.timeout(90):
        await execution.async_start("doc-7")
        waiting = await asyncio.to_thread(
            _run, *status, "tests.flows.approval:flow", execution.id, env=env
        )
        await execution.async_continue_with("approve", "yes")
        await execution.async_close()
        closed = await asyncio.to_thread(_run, *status, "approval", execution.id, env=env)
        missing = await asyncio.to_thread(_run, *status, "approval", "never-started", env=env)
    assert waiting.returncode == 0, waiting.stderr
    shown = json.loads(waiting.stdout)
    assert (shown["status"], shown["lifecycle_state"]) == ("waiting", "open")
    assert list(shown["waiting_interrupts"]) == ["approve"]
    interrupt = shown["waiting_interrupts"]["approve"]
    assert (interrupt["type"], interrupt["payload"]) == ("approval", {"draft": "doc-7"})
    assert closed.returncode == 0, closed.stderr
    after = json.loads(closed.stdout)
    assert (after["status"], after["lifecycle_state"], after["waiting_interrupts"]) == (
        "completed", "closed", {},
    )  # fmt: skip
    assert after["state"]["$final_result"]["approved"] == "yes"
    assert after["state_version"] > shown["state_version"]
    assert missing.returncode == 1
    assert "has no execution 'never-started'" in missing.stderr


async def test_cli_list_finds_the_executions_waiting_for_an_answer(
    runtime: Any, nats_url: str, prefix: str
) -> None:
    """An operator's question, "what waits for an approval?", answered from the store."""
    flow = load_module("tests/flows/approval.py", "approval_cli_list").flow
    env = {"TRIGGERBUS_NATS_URL": nats_url, "TRIGGERBUS_PREFIX": prefix,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    listing = ["-m", "triggerbus", "list"]
    executions = [flow.create_execution(auto_close=False) for _ in range(3)]
    async with asyncio.timeout(90):
        for n, execution in enumerate(executions):
            await execution.async_start(f"doc-{n}")
        await executions[1].async_continue_with("approve", "yes")
        await executions[1].async_close()
        await flow.async_set_flow_data("reviewers", ["ana"])  # kept beside the executions
        waiting = await asyncio.to_thread(_run, *listing, "approval", "--status", "waiting",
                                          env=env)  # fmt: skip
        every = await asyncio.to_thread(_run, *listing, "tests.flows.approval:flow", env=env)
        one = await asyncio.to_thread(_run, *listing, "approval", "--limit", "1", env=env)
        none = await asyncio.to_thread(_run, *listing, "nobody", env=env)
        for execution in (executions[0], executions[2]):
            await execution.async_close(pending_interrupts="cancel")
    rows = [line.split("\t") for line in waiting.stdout.splitlines()]
    assert waiting.returncode == 0, waiting.stderr
    assert sorted(row[0] for row in rows) == sorted([executions[0].id, executions[2].id])
    assert all(row[1:3] == ["waiting", "open"] and row[4] == "approve" for row in rows)
    assert len(every.stdout.splitlines()) == 3
    assert f"{executions[1].id}\tcompleted\tclosed\t" in every.stdout
    assert len(one.stdout.splitlines()) == 1
    assert (none.returncode, none.stdout) == (0, "")
    assert "no executions of flow 'nobody'" in none.stderr
