"""The event loops of this process that host actors: a sync call must never block one.

A sync call inside a running event loop holds that loop until its answer comes. When the
answer comes from an execution actor or a chunk hosted on that very loop, it never comes. So
the sync API asks here first: a loop that hosts nothing may be held, as Agently's sync calls
hold it; a loop that hosts actors may not.
"""

from __future__ import annotations

import asyncio
import weakref

_hosting: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def mark_hosting(loop: asyncio.AbstractEventLoop) -> None:
    """``loop`` runs actors or chunks from now on (until :func:`unmark_hosting`)."""
    _hosting.add(loop)


def unmark_hosting(loop: asyncio.AbstractEventLoop) -> None:
    _hosting.discard(loop)


def hosts_actors(loop: asyncio.AbstractEventLoop) -> bool:
    return loop in _hosting
