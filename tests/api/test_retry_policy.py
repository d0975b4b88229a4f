"""Per-chunk retry policy: retries with backoff, dead letters when spent, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats
import pytest

from tests._helpers import load_module
from triggerbus import ChunkFailedError, FlowDefinitionError, TriggerFlow
from triggerbus.bus.subjects import Subjects
from triggerbus.contracts.graph import canonical_json


async def dead_letters(nats_url: str, subject: str) -> list[dict[str, Any]]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True)
        letters = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return letters
            letters.append(msgspec.json.decode(msg.data))
    finally:
        await nc.drain()


class TestRetries:
    async def test_a_failing_chunk_is_retried_and_its_effects_apply_once(
        self, runtime: Any
    ) -> None:
        module = load_module("tests/flows/flaky.py", "flaky_retry")
        execution = module.flow.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(30):
            snapshot = await execution.async_start(3)
        assert snapshot["$final_result"] == 3
        assert module.attempts[execution.id] == 3
        assert snapshot["tries"] == ["x"], "the repeated effect was applied once"
        assert len(set(module.keys[execution.id])) == 1, "one idempotency key for all attempts"

    async def test_spent_retries_dead_letter_the_invocation_and_fail_the_execution(
        self, runtime: Any, nats_url: str, prefix: str
    ) -> None:
        module = load_module("tests/flows/flaky.py", "flaky_spent")
        flow = module.stubborn_flow
        execution = flow.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(30):
            with pytest.raises(ChunkFailedError, match="never works") as raised:
                await execution.async_start("go")
            subject = Subjects(prefix).dead_letter(flow.name, flow.graph().chunks[0].token)
            letters = await dead_letters(nats_url, subject)
        assert module.attempts[execution.id] == 3
        assert raised.value.error_type == "ValueError"
        [letter] = letters
        assert letter["execution_id"] == execution.id and letter["chunk"] == "stubborn"
        assert letter["reason"] == "retries exhausted after 3 attempts: ValueError: never works"
        assert msgspec.json.decode(letter["data"])["kind"] == "invoke"

    async def test_skip_exceptions_continues_after_spent_retries(self, runtime: Any) -> None:
        module = load_module("tests/flows/flaky.py", "flaky_skip")
        execution = module.stubborn_flow.create_execution(
            auto_close_timeout=0.0, skip_exceptions=True
        )
        async with asyncio.timeout(30):
            snapshot = await execution.async_start("go")
        assert module.attempts[execution.id] == 3
        assert "$final_result" not in snapshot  # nothing downstream of a skipped failure runs


class TestTimeout:
    async def test_an_attempt_past_its_timeout_fails_with_timeout_error(
        self, runtime: Any
    ) -> None:
        module = load_module("tests/flows/flaky.py", "flaky_timeout")
        execution = module.slow_flow.create_execution(auto_close_timeout=0.0)
        async with asyncio.timeout(30):
            with pytest.raises(ChunkFailedError, match=r"timeout of 0\.2 s") as raised:
                await execution.async_start("go")
        assert raised.value.error_type == "TimeoutError"


class TestPolicyInTheGraph:
    def test_default_policy_leaves_the_graph_encoding_unchanged(self) -> None:
        flow = TriggerFlow(name="plain_policy")

        @flow.chunk
        def a(data: Any) -> None: ...

        flow.to(a)
        encoded = canonical_json(flow.graph()).decode()
        assert "retries" not in encoded and "timeout" not in encoded

    def test_policy_is_in_the_chunk_spec_and_changes_the_fingerprint(self) -> None:
        def build(**policy: Any) -> TriggerFlow:
            flow = TriggerFlow(name="with_policy")
            flow.to(flow.chunk("a", **policy)(lambda data: None))
            return flow

        plain, retried = build(), build(retries=2, backoff=(1, 2), timeout=60)
        [spec] = retried.graph().chunks
        assert (spec.retries, spec.backoff, spec.timeout) == (2, (1.0, 2.0), 60.0)
        assert plain.graph().fingerprint != retried.graph().fingerprint
        [default] = build(retries=1).graph().chunks
        assert default.backoff == (1.0, 5.0, 30.0)

    def test_policy_survives_a_flow_config_round_trip(self) -> None:
        module = load_module("tests/flows/flaky.py", "flaky_config")
        config = module.flow.get_flow_config()
        loaded = TriggerFlow().load_flow_config(config, handlers={"flaky": module.flaky})
        assert loaded.graph().fingerprint == module.flow.graph().fingerprint

    @pytest.mark.parametrize(
        "policy", [{"retries": -1}, {"backoff": (-1,)}, {"timeout": 0}, {"retries": 1.5}]
    )
    def test_bad_policy_is_refused_at_definition(self, policy: dict[str, Any]) -> None:
        flow = TriggerFlow(name="bad_policy")
        with pytest.raises(FlowDefinitionError):
            flow.chunk("a", **policy)


class TestRetriedAwaitedEmit:
    async def test_a_retried_attempt_gets_its_awaited_emit_answered_without_reapplying_it(
        self, runtime: Any
    ) -> None:
        """The second attempt sends the same emit (same message id, well inside JetStream's
        duplicate window): it is answered with the first cascade's results, and the listener
        ran once."""
        flow = TriggerFlow(name="retried_emit")
        attempts = 0

        @flow.chunk("ask", retries=1, backoff=0.05)
        async def ask(data: Any) -> Any:
            nonlocal attempts
            attempts += 1
            answer = await data.async_emit("Ping", "hello")
            if attempts == 1:
                raise RuntimeError("the first attempt dies after its emit")
            return answer

        @flow.chunk("pong")
        async def pong(data: Any) -> str:
            data.state.append("pongs", data.value)
            return f"pong:{data.value}"

        flow.to(ask).end()
        flow.when("Ping").to(pong)
        async with asyncio.timeout(30):
            snapshot = await flow.async_start(None)
        assert attempts == 2
        assert snapshot == {"pongs": ["hello"], "$final_result": ["pong:hello"]}
