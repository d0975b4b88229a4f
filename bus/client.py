"""The nats-py client triggerbus connects with: nats-py's, with leaner header handling.

Why: every message triggerbus sends and receives carries headers (``Nats-Msg-Id``, and
``traceparent`` when tracing), and nats-py 2.16 spends more on each header line than on the
rest of the message's framing. Counted with callgrind on the fan-out benchmark
(``bench/count_instructions.py``, docs/performance.md round thirteen), the cost sits in two
places:

- at publish, each value goes through ``str.translate`` with a dict table to replace CR and
  LF. CPython looks every distinct character up in that dict and raises and clears a
  ``KeyError`` for each one that is not there: up to 17 exceptions per ``traceparent``. Here a
  value is translated only when it holds a CR or LF, and each header name is checked against
  nats-py's name rule once, not at every publish;
- at receive, a header is dropped when its name holds whitespace, found by a Python
  generator over the name's characters. Here two scans in C clear almost every name, and a
  regular expression search decides the rest.

Everything else is nats-py's own code. Both overrides rest on private names of nats-py's
(``_send_publish``, ``_parse_header_lines`` and what the former uses), so they apply only to
the nats-py releases they were checked against (:data:`VERIFIED_NATS_PY`); with any other,
``BusClient`` is nats-py's client unchanged. ``tests/bus/test_client.py`` holds them to
nats-py's own output, byte for byte, on every input it tries, checks that nats-py still calls
them, and fails when the installed nats-py is not a verified one: a new release is checked
(and added) before it is trusted, never silently.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client
from nats.errors import BadHeaderError
from nats.protocol import command

VERIFIED_NATS_PY = ("2.16.",)
"""nats-py releases (version prefixes) whose header code the overrides were checked against."""

_CRLF = b"\r\n"
_STATUS_LINE = b"NATS/1.0\r\n"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""nats-py's rule for a header name it sends (an RFC 7230 token)."""
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_WHITESPACE = re.compile(r"\s")
"""For ASCII text, exactly the characters ``str.isspace`` accepts: the space and some that
are not printable."""
_NAME_LINES_MAX = 256
_name_lines: dict[str, bytes] = {}
"""A header name as given -> the start of its line (``b""``: a blank name, skipped)."""


def header_block(headers: Mapping[str, Any]) -> bytes:
    """The header block nats-py writes for ``headers``: names stripped and checked (a blank
    one skipped, an invalid one refused with ``BadHeaderError``), values stripped, with CR and
    LF turned into spaces."""
    parts = [_STATUS_LINE]
    for name, value in headers.items():
        start = _name_lines.get(name)
        if start is None:
            start = _name_line(name)
        if not start:
            continue
        text = value.strip()
        if "\r" in text or "\n" in text:
            text = text.translate(_NEWLINES)
        parts.append(start + text.encode() + _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


def _name_line(name: str) -> bytes:
    key = name.strip()
    if key and not _HEADER_NAME.fullmatch(key):
        raise BadHeaderError(key)
    start = key.encode() + b": " if key else b""
    if len(_name_lines) < _NAME_LINES_MAX:
        _name_lines[name] = start
    return start


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """NATS header lines (``Name: Value`` after the ``NATS/1.0`` line) as nats-py parses
    them: split at the first colon, both sides stripped, a name that is not ASCII or holds
    whitespace skipped, values decoded as UTF-8 with replacement, the last of a name kept."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if not (key.isprintable() and " " not in key) and _WHITESPACE.search(key):
            continue  # (the first test, two scans in C, clears almost every name)
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class LeanHeaderClient(Client):
    """nats-py's client with :func:`header_block` and :func:`parse_header_lines` for its
    headers."""

    _parse_header_lines = staticmethod(parse_header_lines)

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if headers is None or not subject:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        # nats-py's own steps after it has built the header block.
        pub = command.hpub_cmd(subject, reply, header_block(headers), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(pub)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


def nats_py_verified(version: str | None = None) -> bool:
    """Whether ``version`` (by default, the installed nats-py's) is one the overrides were
    checked against."""
    if version is None:
        try:
            version = importlib.metadata.version("nats-py")
        except importlib.metadata.PackageNotFoundError:
            return False
    return version.startswith(VERIFIED_NATS_PY)


BusClient: type[Client] = LeanHeaderClient if nats_py_verified() else Client
"""The client ``connect`` builds."""
