"""Agently's deprecated names, kept so that changing the import is all a user does."""

from __future__ import annotations

import warnings
from typing import Any


class Renamed:
    """A class attribute standing for Agently's old name of a method: reading it gives the
    method under its current name, with a ``DeprecationWarning`` naming that one."""

    def __init__(self, owner: str, current: str) -> None:
        self._owner = owner
        self._current = current
        self._name = current

    def __set_name__(self, cls: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: object | None, cls: type | None = None) -> Any:
        if obj is None:
            return self
        warnings.warn(
            f"{self._owner}.{self._name}() is Agently's deprecated name; "
            f"use {self._owner}.{self._current}()",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(obj, self._current)
