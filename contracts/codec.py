"""Encoding and strict decoding, with errors that say what was wrong and where."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import msgspec

from triggerbus.contracts._base import SCHEMA_VERSION

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class WireError(ValueError):
    """A message that does not match its contract; ``reason`` says how (with the JSON path)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSerializable(TypeError):
    """A value msgspec cannot encode; ``type_name`` names the offending type (empty when it
    is not one type: a reference cycle).

    Internal: the layers above raise ``ValueNotSerializableError`` (triggerbus/_sendable.py);
    contracts import nothing of the project."""

    def __init__(self, reason: str, type_name: str) -> None:
        super().__init__(reason)
        self.type_name = type_name


def encode(message: Any) -> bytes:
    """JSON bytes of a contract message or value.

    Raises:
        NotSerializable: some value inside is not JSON-able by msgspec, or refers to itself.
    """
    try:
        return _encoder.encode(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(str(exc), _offending_type(str(exc))) from exc
    except RecursionError as exc:
        # msgspec's depth guard: a reference cycle, or nesting deeper than the interpreter's
        # recursion limit. Neither can be JSON, and a RecursionError says neither.
        raise NotSerializable(
            "the value refers to itself (a reference cycle) or nests too deeply to encode",
            "",
        ) from exc


def encode_value(value: Any) -> bytes:
    """JSON bytes of a user's value, refused unless it arrives as it was sent.

    Why stricter than :func:`encode`: msgspec also encodes bytes (as base64 text), integer
    dict keys (as strings), NaN (as null), datetimes, UUIDs and decimals (as strings), enums
    (as their values) and sets (as lists). The receiving chunk would get a different value and
    no error: ``value[1]`` on a dict whose keys became ``"1"`` raises ``KeyError`` far from the
    cause. Those are refused here, where the value is sent. What JSON changes in a documented
    way still passes: tuples arrive as lists, dataclasses and msgspec Structs as dicts, and
    ``str``/``int`` subclasses (``StrEnum``, ``IntEnum``) as the plain value they equal.

    Raises:
        NotSerializable: the value cannot be encoded, or would arrive changed; the reason says
            where in it (a JSON path).
    """
    data = encode(value)
    check_value(value)
    return data


def check_value(value: Any) -> None:
    """:func:`encode_value`'s check alone, for a value already encoded (inside a message):
    it must not meet a reference cycle, which only :func:`encode` refuses.

    Raises:
        NotSerializable: the value would arrive changed.
    """
    problem = _changed_in_transit(value)
    if problem is not None:
        path, reason, type_name = problem
        raise NotSerializable(f"{reason} - at `${path}`", type_name)


def _changed_in_transit(value: Any) -> tuple[str, str, str] | None:
    """Where ``value`` would not survive a JSON round trip: (path, reason, type name).

    Called only on values :func:`encode` accepted, so it never meets a reference cycle."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # the common case first
        return None
    if kind is dict:
        return _changed_dict(value)
    if kind is list or kind is tuple:
        return _changed_items(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return "", f"the float {value!r} has no JSON form (it would arrive as null)", "float"
    if isinstance(value, str | int):
        return None  # a subclass (StrEnum, IntEnum) arrives as the plain value it equals
    if isinstance(value, dict):
        return _changed_dict(value)
    if isinstance(value, list | tuple):
        return _changed_items(value)
    if isinstance(value, msgspec.Struct):
        return _changed_fields(value, value.__struct_fields__)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _changed_fields(value, [field.name for field in dataclasses.fields(value)])
    name = kind.__name__
    return "", f"a value of type {name} would arrive changed (JSON has no {name})", name


def _changed_dict(value: dict[Any, Any]) -> tuple[str, str, str] | None:
    for key, item in value.items():
        if not isinstance(key, str):
            key_type = type(key).__name__
            return "", (
                f"the dict key {key!r} is of type {key_type}; JSON keys are strings, so it "
                f"would arrive as {str(key)!r}"
            ), key_type
        found = _changed_in_transit(item)
        if found is not None:
            return f"[{key!r}]{found[0]}", found[1], found[2]
    return None


def _changed_items(value: list[Any] | tuple[Any, ...]) -> tuple[str, str, str] | None:
    for index, item in enumerate(value):
        found = _changed_in_transit(item)
        if found is not None:
            return f"[{index}]{found[0]}", found[1], found[2]
    return None


def _changed_fields(value: Any, names: Any) -> tuple[str, str, str] | None:
    for name in names:
        found = _changed_in_transit(getattr(value, name))
        if found is not None:
            return f".{name}{found[0]}", found[1], found[2]
    return None


def decode(decoder: msgspec.json.Decoder[T], data: bytes) -> T:
    """Decode strictly and refuse versions newer than this code.

    Raises:
        WireError: the bytes are not JSON, miss a field, have a wrong type or a newer ``v``.
    """
    try:
        message = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise WireError(f"invalid message: {_with_path(str(exc))}") from exc
    except msgspec.DecodeError as exc:
        raise WireError(f"not a JSON message: {exc}") from exc
    version = getattr(message, "v", SCHEMA_VERSION)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise WireError(
            f"message schema version {version} is newer than this reader's {SCHEMA_VERSION}; "
            "upgrade triggerbus in this process"
        )
    return message


def _with_path(reason: str) -> str:
    # msgspec names the path only below the root ("... - at `$.error`"); say `$` for the root
    # too, so every reason tells a publisher where to look.
    return reason if " - at `" in reason else f"{reason} - at `$`"


def _offending_type(reason: str) -> str:
    # msgspec says e.g. "Encoding objects of type Foo is unsupported"
    marker = "of type "
    if marker in reason:
        return reason.split(marker, 1)[1].split(" ", 1)[0]
    return ""
