"""Names that become subject tokens, stream names and consumer names.

A NATS subject token cannot hold ``.``, ``*``, ``>`` or white space, and stream and consumer
names are stricter still, so user-chosen names are folded to ``[A-Za-z0-9_-]`` with a digest
suffix whenever folding changed them (two different names never fold to one token).
"""

from __future__ import annotations

import re

from triggerbus.contracts.graph import digest

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_TOKEN = 48


def token(name: str) -> str:
    """A subject/consumer-safe token for ``name``; identical when ``name`` is already safe."""
    folded = _UNSAFE.sub("_", name).strip("_") or "x"
    if folded == name and len(name) <= MAX_TOKEN:
        return name
    return f"{folded[: MAX_TOKEN - 9]}-{digest(name, length=8)}"
