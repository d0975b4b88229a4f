"""The layers are visible in the imports, and this test keeps them so.

``contracts`` imports nothing of the project; the pure execution actor imports only contracts,
its two helper modules, the standard library and msgspec, and nothing that does I/O or reads a
clock; only ``bus/`` talks to ``nats``. Imports are read with ``ast``, so a forbidden import
inside a function or under ``TYPE_CHECKING`` is caught too.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "triggerbus": "triggerbus",
    "actors": "triggerbus.actors",
    "bus": "triggerbus.bus",
    "contracts": "triggerbus.contracts",
    "observability": "triggerbus.observability",
}
PURE_ACTOR = ["actors/execution.py", "actors/graph_index.py", "actors/state_paths.py"]
PURE_ACTOR_MAY_IMPORT = (
    "triggerbus.contracts",
    "triggerbus.actors.graph_index",
    "triggerbus.actors.state_paths",
)
IMPURE_STDLIB = {
    "asyncio", "concurrent", "datetime", "io", "multiprocessing", "os", "random", "secrets",
    "select", "selectors", "signal", "socket", "ssl", "subprocess", "threading", "time", "uuid",
}  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str
    line: int


def module_name(path: Path) -> str:
    """``actors/execution.py`` -> ``triggerbus.actors.execution``."""
    relative = path.relative_to(ROOT)
    package = PACKAGES[relative.parts[0]]
    parts = [package, *relative.parts[1:-1]]
    if relative.stem != "__init__":
        parts.append(relative.stem)
    return ".".join(parts)


def imports_of(path: Path) -> list[Import]:
    """Every module ``path`` imports, relative imports resolved to absolute names."""
    return imports_in(path.read_text(), module_name(path), is_package=path.stem == "__init__")


def imports_in(source: str, name: str, *, is_package: bool = False) -> list[Import]:
    tree = ast.parse(source)
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append(Import(target, node.lineno))
            # ``from triggerbus import bus`` imports the subpackage, not just a name
            found.extend(Import(f"{target}.{alias.name}", node.lineno) for alias in node.names)
    return found


def project_files() -> list[Path]:
    return sorted(p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py"))


def top(module: str) -> str:
    return module.partition(".")[0]


def is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def where(path: Path, imp: Import) -> str:
    return f"{path.relative_to(ROOT)}:{imp.line} imports {imp.module}"


def project_modules() -> set[str]:
    return {module_name(p) for p in project_files()}


def real_imports(path: Path) -> list[Import]:
    """Imports, minus the ``module.name`` guesses that are names, not modules."""
    known = project_modules()
    result = []
    for imp in imports_of(path):
        if is_under(imp.module, "triggerbus") and imp.module not in known:
            parent = imp.module.rpartition(".")[0]
            if parent in known and imp.module not in known:
                continue  # ``from triggerbus.x import Name``: the module is ``parent``
        result.append(imp)
    return result


class TestContracts:
    @pytest.mark.parametrize(
        "path", sorted((ROOT / "contracts").rglob("*.py")), ids=lambda p: p.name
    )
    def test_contracts_import_nothing_of_the_project(self, path: Path) -> None:
        """A contracts module imports only contracts, the standard library and msgspec."""
        bad = [
            where(path, imp)
            for imp in real_imports(path)
            if not (
                is_under(imp.module, "triggerbus.contracts")
                or top(imp.module) in sys.stdlib_module_names
                or top(imp.module) == "msgspec"
                or imp.module == "__future__"
            )
        ]
        assert not bad, "contracts must stay a leaf:\n" + "\n".join(bad)


class TestPureExecutionActor:
    @pytest.mark.parametrize("relative", PURE_ACTOR)
    def test_pure_actor_imports_only_contracts_stdlib_and_msgspec(self, relative: str) -> None:
        """The reducer and its helpers reach no bus, no NATS and no other actor module."""
        path = ROOT / relative
        bad = [
            where(path, imp)
            for imp in real_imports(path)
            if not (
                any(is_under(imp.module, allowed) for allowed in PURE_ACTOR_MAY_IMPORT)
                or top(imp.module) in sys.stdlib_module_names
                or top(imp.module) == "msgspec"
            )
        ]
        assert not bad, "the pure execution actor may import only contracts:\n" + "\n".join(bad)

    @pytest.mark.parametrize("relative", PURE_ACTOR)
    def test_pure_actor_uses_no_clock_randomness_or_io(self, relative: str) -> None:
        """No time, random, uuid, asyncio or other I/O module: ``now`` is an argument."""
        path = ROOT / relative
        bad = [
            where(path, imp) for imp in real_imports(path) if top(imp.module) in IMPURE_STDLIB
        ]
        assert not bad, "the reducer must stay pure:\n" + "\n".join(bad)


class TestNatsStaysInBus:
    def test_scan_sees_the_whole_project(self) -> None:
        """The scan covers every subpackage, and finds nats where it belongs."""
        files = project_files()
        assert {p.relative_to(ROOT).parts[0] for p in files} == set(PACKAGES)
        assert any(
            top(imp.module) == "nats"
            for p in files
            if p.relative_to(ROOT).parts[0] == "bus"
            for imp in imports_of(p)
        ), "no bus module imports nats: is the scan broken?"

    def test_only_bus_imports_nats(self) -> None:
        """Above ``bus/`` nobody imports nats; they use bus types and our errors."""
        bad = [
            where(path, imp)
            for path in project_files()
            if path.relative_to(ROOT).parts[0] != "bus"
            for imp in imports_of(path)
            if top(imp.module) == "nats"
        ]
        assert not bad, "only bus/ may import nats:\n" + "\n".join(bad)


class TestErrorsLeaf:
    def test_errors_module_imports_nothing_of_the_project(self) -> None:
        """triggerbus/errors.py is a leaf, so every layer may raise its errors."""
        path = ROOT / "triggerbus" / "errors.py"
        bad = [where(path, imp) for imp in imports_of(path) if top(imp.module) == "triggerbus"]
        assert not bad, "\n".join(bad)


class TestTheScanner:
    def test_relative_and_nested_imports_are_resolved(self) -> None:
        """Relative imports resolve against the package; imports in functions are seen."""
        source = "from . import graph_index\nfrom ..bus import subjects\ndef f():\n import time\n"
        found = {imp.module for imp in imports_in(source, "triggerbus.actors.probe")}
        assert {"triggerbus.actors.graph_index", "triggerbus.bus.subjects", "time"} <= found
