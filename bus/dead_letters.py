"""Reading, replaying and removing dead letters: what an operator needs after a bad deploy."""

from __future__ import annotations

from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.api import DeliverPolicy

from triggerbus.bus._errors import translate_nats_errors
from triggerbus.bus.jetstream import MSG_ID_HEADER, Bus
from triggerbus.contracts.codec import decode
from triggerbus.contracts.messages import DeadLetter, dead_letter_decoder
from triggerbus.errors import BusError


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter and where it sits in the dead-letter stream."""

    sequence: int
    subject: str
    letter: DeadLetter


async def list_dead_letters(
    bus: Bus, *, flow: str = "*", limit: int = 100
) -> list[StoredDeadLetter]:
    """The oldest ``limit`` dead letters of ``flow`` (every flow by default)."""
    subject = bus.subjects.dead_letters(flow)
    letters: list[StoredDeadLetter] = []
    with translate_nats_errors(subject=subject):
        info = await bus.js.stream_info(bus.subjects.dlq_stream)
        if not info.state.messages:
            return []
        sub = await bus.js.subscribe(
            subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        try:
            while len(letters) < limit:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    break
                letters.append(
                    StoredDeadLetter(
                        sequence=msg.metadata.sequence.stream,
                        subject=msg.subject,
                        letter=decode(dead_letter_decoder, msg.data),
                    )
                )
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    return letters


async def get_dead_letter(bus: Bus, sequence: int) -> StoredDeadLetter:
    stream = bus.subjects.dlq_stream
    try:
        with translate_nats_errors(subject=stream):
            msg = await bus.js.get_msg(stream, sequence)
    except BusError as exc:
        if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
            raise BusError(f"no dead letter at sequence {sequence} in {stream}") from exc
        raise
    return StoredDeadLetter(
        sequence=sequence, subject=msg.subject, letter=decode(dead_letter_decoder, msg.data)
    )


async def replay_dead_letter(bus: Bus, sequence: int, *, delete: bool = False) -> str:
    """Publish the dead message again on its original subject; returns that subject.

    The original ``Nats-Msg-Id`` is dropped, or JetStream's duplicate window could swallow the
    replay; the execution actor still recognises any message it already applied.
    """
    stored = await get_dead_letter(bus, sequence)
    headers = {k: v for k, v in stored.letter.headers.items() if k != MSG_ID_HEADER}
    await bus.publish(stored.letter.subject, stored.letter.data.encode("utf-8"), headers=headers)
    if delete:
        await delete_dead_letter(bus, sequence)
    return stored.letter.subject


async def delete_dead_letter(bus: Bus, sequence: int) -> None:
    stream = bus.subjects.dlq_stream
    with translate_nats_errors(subject=stream):
        await bus.js.delete_msg(stream, sequence)
