"""A user's value on its way to the bus: encoded, or refused with the public error before
anything is sent or changed.

Why one place: every call that hands a value over (a start, ``set_state``, ``emit``, a stream
item, flow data, from a handle or inside a chunk) must refuse it the same way, with
:class:`~triggerbus.errors.ValueNotSerializableError`. Before, some raised it, some a bare
``TypeError`` or the codec's internal error, and a cycle a ``RecursionError``.
"""

from __future__ import annotations

from typing import Any

from triggerbus.contracts.codec import NotSerializable, check_value, encode, encode_value
from triggerbus.contracts.messages import EmitEvent, PauseForInterrupt, StateWritten, StreamItem
from triggerbus.errors import ValueNotSerializableError

JSON_ABLE = (
    "dicts with string keys, lists, str, int, finite floats, bool, None; tuples arrive as "
    "lists, dataclasses and msgspec Structs as dicts"
)

_USER_FIELDS = ("value", "result", "payload")
"""The fields of a message that carry a user's value (``Any`` in the contract)."""


def encode_sent(message: Any, *, what: str | None = None, chunk: str | None = None) -> bytes:
    """The JSON bytes of a message that carries a user's value.

    Raises:
        ValueNotSerializableError: the value is not JSON-able; the error says ``what`` it was
            (by default, the message's kind).
    """
    try:
        payload = encode(message)
        for name in _USER_FIELDS:
            value = getattr(message, name, None)
            if value is not None:
                check_value(value)
    except NotSerializable as exc:
        raise _refused(what or _described(message), exc, chunk=chunk) from exc
    return payload


def check_sendable(value: Any, what: str, *, chunk: str | None = None) -> None:
    """Refuse ``value`` now if it could not be sent: for changes applied to a local view (a
    chunk's state and flow data) before the message that carries them is encoded.

    Raises:
        ValueNotSerializableError: the value is not JSON-able.
    """
    try:
        encode_value(value)
    except NotSerializable as exc:
        raise _refused(what, exc, chunk=chunk) from exc


def _refused(
    what: str, exc: NotSerializable, *, chunk: str | None
) -> ValueNotSerializableError:
    # The reason names the offending type itself where it is not the value's own (a dict's
    # int key): "(type int)" beside "the state value" would then name the wrong thing.
    named = not exc.type_name or exc.type_name in str(exc)
    of_type = "" if named else f" (type {exc.type_name})"
    return ValueNotSerializableError(
        f"{what}{of_type} cannot be sent over the bus: {exc}; send JSON-able data "
        f"({JSON_ABLE})",
        chunk=chunk,
        type_name=exc.type_name,
    )


def _described(message: Any) -> str:
    if isinstance(message, StateWritten):
        return f"the state value for {message.key!r}"
    if isinstance(message, EmitEvent):
        return f"the value of event {message.event!r}"
    if isinstance(message, StreamItem):
        return "a stream item"
    if isinstance(message, PauseForInterrupt):
        return "the payload of pause_for"
    return f"the value of a {type(message).__name__} message"
