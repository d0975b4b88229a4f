"""``triggerbus`` is the one public face: its ``__all__`` stays sorted, honest and complete."""

from __future__ import annotations

import inspect

import pytest

import triggerbus
from triggerbus import errors

REQUIRED = [
    "Execution",
    "TriggerFlow",
    "TriggerFlowEventData",
    "TriggerFlowRuntimeData",
    "TriggerbusError",
]


def error_classes() -> list[type[BaseException]]:
    """Every exception class defined in triggerbus/errors.py."""
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ in (errors.__name__, "triggerbus")
    ]


class TestAll:
    def test_all_is_sorted_without_duplicates(self) -> None:
        """A sorted ``__all__`` makes additions and drift easy to see."""
        assert triggerbus.__all__ == sorted(set(triggerbus.__all__))

    def test_every_exported_name_exists(self) -> None:
        """Nothing in ``__all__`` is missing from the package."""
        missing = [name for name in triggerbus.__all__ if not hasattr(triggerbus, name)]
        assert not missing

    @pytest.mark.parametrize("name", REQUIRED)
    def test_core_names_are_exported(self, name: str) -> None:
        """The names an Agently user imports are all here."""
        assert name in triggerbus.__all__

    def test_star_import_gives_exactly_all(self) -> None:
        """``from triggerbus import *`` binds every exported name and nothing else public."""
        namespace: dict[str, object] = {}
        exec("from triggerbus import *", namespace)
        assert set(namespace) - {"__builtins__"} == set(triggerbus.__all__)

    @pytest.mark.parametrize("name", REQUIRED)
    def test_exported_classes_present_as_triggerbus_members(self, name: str) -> None:
        """Users see ``triggerbus.TriggerFlow``, not the private module it lives in."""
        assert getattr(triggerbus, name).__module__ == "triggerbus"


class TestErrors:
    def test_errors_module_defines_errors(self) -> None:
        """The scan below sees the tree (guards against an empty scan passing)."""
        assert errors.TriggerbusError in error_classes()
        assert len(error_classes()) > 5

    @pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
    def test_every_error_derives_from_triggerbus_error(self, cls: type[BaseException]) -> None:
        """One ``except TriggerbusError`` catches everything triggerbus raises."""
        assert issubclass(cls, triggerbus.TriggerbusError)

    @pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
    def test_every_error_is_exported(self, cls: type[BaseException]) -> None:
        """Each error can be caught by its name from ``triggerbus``."""
        assert cls.__name__ in triggerbus.__all__
        assert getattr(triggerbus, cls.__name__) is cls

    @pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
    def test_every_error_is_drawn_in_the_tree(self, cls: type[BaseException]) -> None:
        """The module docstring's tree names every error class."""
        assert errors.__doc__ is not None and cls.__name__ in errors.__doc__
