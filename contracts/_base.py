"""The base every wire struct derives from, and the version rule."""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1
"""The schema version this code writes. Bump only for a change old readers cannot ignore."""


class Wire(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", omit_defaults=False):
    """Base of every tagged wire message: frozen, keyword-only, tagged by ``kind``."""

    v: int = SCHEMA_VERSION
