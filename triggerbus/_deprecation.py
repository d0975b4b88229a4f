"""Agently's deprecated names, kept so that changing the import is all a user does."""

from __future__ import annotations

import warnings


def warn_renamed(owner: str, name: str, instead: str) -> None:
    """A ``DeprecationWarning`` at the caller of ``owner.name()``, naming what to call."""
    warnings.warn(
        f"{owner}.{name}() is Agently's deprecated name; use {owner}.{instead}()",
        DeprecationWarning,
        stacklevel=3,
    )
