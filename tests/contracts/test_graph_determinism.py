"""The compiled FlowGraph is the wire protocol: the same definition gives the same bytes and
fingerprint in every process, and any change to the definition changes the fingerprint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from triggerbus import TriggerFlow
from triggerbus.contracts.graph import FlowGraph, graph_decoder


def noop(data: Any) -> None:
    """A chunk body; never called, building a flow does no I/O."""


def other(data: Any) -> None:
    """A second chunk body, to show the handler does not enter the graph."""


def seed_like(flow: TriggerFlow) -> None:
    """A definition using every builder form that reaches the graph."""
    normalize = flow.chunk("normalize")(noop)
    flow.to(normalize)
    flow.when({"runtime_data": "topic"}).batch(
        ("fetch_facts", noop), ("fetch_risks", noop), concurrency=2
    ).to(("compile_report", noop)).end()
    flow.when(["A", "B"], mode="and").to(("joined", noop))
    flow.when(["A", "B"], mode="or").to(("either", noop))
    flow.when("Ping").side_branch(("side", noop))


def build(define: Callable[[TriggerFlow], None], name: str = "seed") -> FlowGraph:
    flow = TriggerFlow(name=name)
    define(flow)
    return flow.graph()


class TestSameDefinition:
    def test_two_flows_with_one_definition_encode_identically(self) -> None:
        """Two instances built the same way give byte-identical graphs and fingerprints."""
        first, second = build(seed_like), build(seed_like)
        assert msgspec.json.encode(first) == msgspec.json.encode(second)
        assert first.fingerprint == second.fingerprint
        assert len(first.fingerprint) == 32

    def test_handler_identity_does_not_enter_the_graph(self) -> None:
        """Only names and structure matter, not which function implements a chunk."""

        def with_other(flow: TriggerFlow) -> None:
            flow.to(("a", other)).to(("b", other)).end()

        def with_noop(flow: TriggerFlow) -> None:
            flow.to(("a", noop)).to(("b", noop)).end()

        assert build(with_other).fingerprint == build(with_noop).fingerprint

    def test_fingerprint_is_a_digest_of_the_rest(self) -> None:
        """Recomputing the fingerprint of a decoded graph gives the stored one."""
        graph = build(seed_like)
        decoded = graph_decoder.decode(msgspec.json.encode(graph))
        assert decoded == graph
        assert decoded.with_fingerprint().fingerprint == graph.fingerprint

    def test_graph_is_cached_until_the_definition_changes(self) -> None:
        """``graph()`` recompiles after the builder is used again."""
        flow = TriggerFlow(name="grow")
        flow.to(("a", noop))
        before = flow.graph()
        assert flow.graph() is before
        flow.when("X").to(("b", noop))
        assert flow.graph().fingerprint != before.fingerprint


def variants() -> dict[str, Callable[[TriggerFlow], None]]:
    def base(flow: TriggerFlow) -> None:
        flow.to(("a", noop)).batch(("x", noop), ("y", noop)).to(("b", noop)).end()

    def extra_chunk(flow: TriggerFlow) -> None:
        flow.to(("a", noop)).batch(("x", noop), ("y", noop)).to(("b", noop)).to(("c", noop))

    def renamed_chunk(flow: TriggerFlow) -> None:
        flow.to(("a2", noop)).batch(("x", noop), ("y", noop)).to(("b", noop)).end()

    def branch_order(flow: TriggerFlow) -> None:
        flow.to(("a", noop)).batch(("y", noop), ("x", noop)).to(("b", noop)).end()

    def batch_cap(flow: TriggerFlow) -> None:
        flow.to(("a", noop)).batch(("x", noop), ("y", noop), concurrency=1).to(
            ("b", noop)
        ).end()

    def no_end(flow: TriggerFlow) -> None:
        flow.to(("a", noop)).batch(("x", noop), ("y", noop)).to(("b", noop))

    def listener(flow: TriggerFlow) -> None:
        base(flow)
        flow.when({"runtime_data": "k"}).to(("on_k", noop))

    def when_mode(flow: TriggerFlow) -> None:
        base(flow)
        flow.when(["P", "Q"], mode="or").to(("on_pq", noop))

    def when_mode_and(flow: TriggerFlow) -> None:
        base(flow)
        flow.when(["P", "Q"], mode="and").to(("on_pq", noop))

    return {f.__name__: f for f in [
        base, extra_chunk, renamed_chunk, branch_order, batch_cap, no_end, listener, when_mode,
        when_mode_and,
    ]}


class TestChangedDefinition:
    def test_every_change_gives_a_different_fingerprint(self) -> None:
        """Each variant of the definition has its own fingerprint."""
        prints = {name: build(define).fingerprint for name, define in variants().items()}
        assert len(set(prints.values())) == len(prints), prints

    def test_flow_name_enters_the_fingerprint(self) -> None:
        """The same definition under another name is another graph."""
        define = variants()["base"]
        assert build(define, "one").fingerprint != build(define, "two").fingerprint


FLOW_MODULE = '''
from triggerbus import TriggerFlow


def body(data):
    return data.value


named = TriggerFlow(name="sub_named")
named.to(("a", body)).batch(("x", body), ("y", body), concurrency=2).to(("b", body)).end()
named.when({"runtime_data": "k"}).to(("on_k", body))
named.when(["A", "B"]).to(("joined", body))

unnamed = TriggerFlow()
unnamed.to(body).end()
'''


def fingerprints_in_subprocess(module_dir: Path, hash_seed: str) -> list[str]:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tb_fp_flow as m; "
        "print(m.named.graph().fingerprint, m.unnamed.graph().fingerprint, m.unnamed.name)"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", code, str(module_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


class TestAcrossProcesses:
    @pytest.fixture
    def module_dir(self, tmp_path: Path) -> Path:
        (tmp_path / "tb_fp_flow.py").write_text(textwrap.dedent(FLOW_MODULE))
        return tmp_path

    def test_two_interpreters_build_the_same_fingerprint(self, module_dir: Path) -> None:
        """Separate processes (with different hash seeds) importing one module agree."""
        first = fingerprints_in_subprocess(module_dir, "1")
        second = fingerprints_in_subprocess(module_dir, "2")
        assert len(first) == 3
        assert first == second

    def test_a_different_module_gives_a_different_fingerprint(
        self, module_dir: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """A process whose definition differs disagrees, so it can refuse the work."""
        changed = tmp_path_factory.mktemp("changed")
        (changed / "tb_fp_flow.py").write_text(
            textwrap.dedent(FLOW_MODULE).replace('("y", body), concurrency=2', '("y", body)')
        )
        original = fingerprints_in_subprocess(module_dir, "0")
        modified = fingerprints_in_subprocess(changed, "0")
        assert original[0] != modified[0]
        assert original[1:] == modified[1:]
