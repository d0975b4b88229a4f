"""A chunk's outcome handed to the execution host of the same process, without the mailbox.

Why: a step is three durable operations in a row (the outcome stored in the mailbox and
delivered, the snapshot's compare-and-set, the next invocation stored and delivered), and the
first buys nothing when the execution host sits in the same process as the chunk: the
invocation stays unacked until the outcome's transition is stored, so a crash anywhere before
that redelivers the invocation, and the outcome's id makes a repeat change nothing. The
transition's compare-and-set is what makes the outcome durable, as it is for every message.

A hand-off goes through the execution's lane like a delivered message, so it is serialised
with the mailbox's messages. An outcome whose attempt sent effects without waiting is not
offered: it follows them through the mailbox. Anything but a stored transition (a deferral, a
fingerprint mismatch, a crash, a host stopping) gives it back, and the chunk host publishes it
to the mailbox as it always did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class HandOff:
    """An outcome offered in process; settles the chunk host's wait in place of an ack.

    It answers the calls the execution host makes on a :class:`~triggerbus.bus.jetstream.Delivery`:
    ``ack`` accepts it, ``nak`` and ``term`` give it back.
    """

    num_delivered = 1

    def __init__(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.taken: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._on_stored = on_stored

    def stored(self) -> None:
        """The outcome's transition is stored: from here on the outcome is durable, and its
        sender may say its attempt ended (before the transition's own observations)."""
        on_stored, self._on_stored = self._on_stored, None
        if on_stored is not None:
            on_stored()

    def release(self) -> None:
        """The lane is done with it: one still unsettled (its handling was cancelled) goes
        back to its sender, which publishes it."""
        self.settle(False)

    def settle(self, taken: bool) -> None:
        """Tell the chunk host the outcome is applied (True) or is its to publish (False);
        only the first answer counts."""
        if not self.taken.done():
            self.taken.set_result(taken)

    async def ack(self) -> None:
        self.settle(True)

    async def nak(self, delay: float | None = None) -> None:
        self.settle(False)

    async def term(self) -> None:
        self.settle(False)

    async def in_progress(self) -> None:
        return None
