"""What the execution actor asks its host to do after a transition is stored.

The outbox is data: the pure actor produces it, the host performs it only after the
compare-and-set write of the new snapshot succeeded, and re-performs it (same message ids) when
it finds a stored outbox whose publication it cannot vouch for.
"""

from __future__ import annotations

from typing import Any

import msgspec

from triggerbus.contracts.messages import (
    ExecutionClosed,
    InvokeChunk,
    Reply,
    StartExecution,
    StreamEnded,
    StreamItem,
    SubFlowClosed,
)


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="do"):
    """Base of outbox commands."""


class Invoke(Command, tag="invoke"):
    """Publish an invocation on the chunk's run subject."""

    chunk_token: str
    message: InvokeChunk


class AppendStream(Command, tag="stream"):
    """Append to the execution's runtime stream (to the stream of ``flow``, when set: a
    sub-flow's items go to its parent's stream)."""

    message: StreamItem | StreamEnded
    flow: str = ""


class SendMailbox(Command, tag="mailbox"):
    """Publish into another execution's mailbox (a sub-flow's start, a parent's notice);
    ``flow`` names the flow whose mailbox it is."""

    flow: str
    message: StartExecution | SubFlowClosed


class SendReply(Command, tag="reply"):
    """Answer a caller waiting on ``reply_to``."""

    reply_to: str
    message: Reply


class NotifyClosed(Command, tag="closed"):
    """Announce the close on the core-NATS close subject."""

    message: ExecutionClosed


class ScheduleTimer(Command, tag="timer"):
    """Deliver a ``TimerFired`` to the mailbox after ``delay`` seconds, at ``due_at``
    (wall clock, fixed by the transition, so a re-published outbox sets the same timer)."""

    timer: str
    generation: int
    delay: float
    due_at: float = 0.0


class Observe(Command, tag="observe"):
    """An observation event for the Event Center; never reaches the runtime stream."""

    name: str
    attributes: dict[str, Any] = {}


OutboxCommand = (
    Invoke | AppendStream | SendReply | NotifyClosed | ScheduleTimer | Observe | SendMailbox
)


class StoredOutbox(msgspec.Struct, frozen=True, kw_only=True):
    """The outbox of the last transition, kept with the snapshot for re-publication."""

    message_id: str = ""
    commands: list[OutboxCommand] = []
