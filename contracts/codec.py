"""Encoding and strict decoding, with errors that say what was wrong and where."""

from __future__ import annotations

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
