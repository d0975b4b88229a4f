"""triggerbus's client writes and parses message headers exactly as nats-py's own code does."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from triggerbus.bus.client import (
    VERIFIED_NATS_PY,
    BusClient,
    LeanHeaderClient,
    nats_py_verified,
    parse_header_lines,
)
from triggerbus.bus.connection import ConnectOptions, connect

nats_py_parse = Client._parse_header_lines

BLOCKS = [
    b"",
    b"\r\n",
    b"Nats-Msg-Id: e1:3:0\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    b"A:1\r\nA: 2\r\n\r\n",  # the last of a name wins
    b"Name:\tvalue \r\n",  # no space after the colon, whitespace around the value
    b"Bad Name: dropped\r\nGood: kept\r\n",  # whitespace inside a name
    b"Tab\tName: dropped\r\nUnit\x1fSep: dropped too (str.isspace)\r\n",
    b"caf\xc3\xa9: non-ascii name, dropped\r\nok: caf\xc3\xa9\r\n",
    b"broken: \xff\xfe\r\n",  # invalid UTF-8 value: replaced
    b"no colon here\r\n: empty name\r\n",
    b"  Padded  :  v  \r\n",
    b"k: a: b: c\r\n",  # only the first colon splits
]


@pytest.mark.parametrize("raw", BLOCKS)
def test_known_blocks_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert parse_header_lines(raw) == nats_py_parse(raw)


@given(st.lists(st.binary(max_size=24), max_size=6))
def test_any_block_parses_as_nats_py_parses_it(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines)
    assert parse_header_lines(raw) == nats_py_parse(raw)


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=5))
def test_any_name_and_value_parse_as_nats_py_parses_them(pairs: list[tuple[str, str]]) -> None:
    raw = b"".join(f"{name}:{value}".encode("utf-8", "surrogatepass") + b"\r\n"
                   for name, value in pairs)  # fmt: skip
    assert parse_header_lines(raw) == nats_py_parse(raw)


def test_the_installed_nats_py_is_one_the_overrides_were_checked_against() -> None:
    """Fails on a nats-py release nobody has checked: then ``BusClient`` is nats-py's own
    client (correct, but without the lean header code) until this file's equivalence tests
    pass on it and :data:`VERIFIED_NATS_PY` names it."""
    assert nats_py_verified(), f"nats-py is not one of {VERIFIED_NATS_PY}"
    assert BusClient is LeanHeaderClient
    assert nats_py_verified("2.16.3") and not nats_py_verified("2.17.0")


async def test_a_connection_receives_headers_through_the_lean_parser(nats_url: str) -> None:
    nc = await connect(ConnectOptions(servers=[nats_url]))
    try:
        assert isinstance(nc, BusClient)
        assert type(nc)._parse_header_lines is parse_header_lines
        received: asyncio.Future[dict[str, str] | None] = asyncio.get_running_loop().create_future()

        async def on_message(msg) -> None:  # type: ignore[no-untyped-def]
            received.set_result(msg.headers)

        await nc.subscribe("client.headers", cb=on_message)
        sent = {"Nats-Msg-Id": "e1:2:0", "traceparent": "00-ab-cd-01"}
        await nc.publish("client.headers", b"x", headers=sent)
        async with asyncio.timeout(5):
            headers = await received
        assert headers == sent
    finally:
        await nc.close()


async def _round_trip(nc: Client, nats_url: str, headers: dict[str, str]) -> dict | None:
    """The headers a message published with ``headers`` arrives with, through ``nc``."""
    await nc.connect(servers=[nats_url], allow_reconnect=False)
    try:
        sub = await nc.subscribe("client.round_trip")
        await nc.publish("client.round_trip", b"x", headers=headers)
        msg = await sub.next_msg(timeout=5)
        return msg.headers
    finally:
        await nc.close()


async def test_nats_py_still_parses_headers_through_the_name_overridden(nats_url: str) -> None:
    """The override rests on a private name of nats-py's: a release that stops calling it
    would leave the lean parser unused, and this fails."""
    parsed: list[bytes] = []

    class Counting(LeanHeaderClient):
        @staticmethod
        def _parse_header_lines(raw: bytes) -> dict[str, str]:
            parsed.append(raw)
            return parse_header_lines(raw)

    assert await _round_trip(Counting(), nats_url, {"k": "v"}) == {"k": "v"}
    assert parsed == [b"k: v\r\n\r\n"]


# --- publishing ----------------------------------------------------------------------------------


class _Capture:
    """Runs a client's ``_send_publish`` with no connection and records what it would send."""

    def __init__(self, client: Client, *, flush_queue: bool) -> None:
        self.client = client
        self.sent: list[bytes] = []
        self.flushes = 0
        client._flush_queue = asyncio.Queue() if flush_queue else None

        async def send_command(cmd: bytes, priority: bool = False) -> None:
            self.sent.append(bytes(cmd))

        async def flush_pending(*args: object, **kwargs: object) -> None:
            self.flushes += 1

        client._send_command = send_command  # type: ignore[method-assign]
        client._flush_pending = flush_pending  # type: ignore[method-assign]

    async def publish(self, subject: str, reply: str, payload: bytes,
                      headers: dict | None) -> object:  # fmt: skip
        try:
            await self.client._send_publish(subject, reply, payload, len(payload), headers)
        except Exception as exc:
            return (type(exc), str(exc))
        return (self.sent[-1], dict(self.client.stats), self.flushes)


async def _both(subject: str, reply: str, payload: bytes, headers: dict | None,
                *, flush_queue: bool = False) -> tuple[object, object]:  # fmt: skip
    ours = _Capture(LeanHeaderClient(), flush_queue=flush_queue)
    theirs = _Capture(Client(), flush_queue=flush_queue)
    return (await ours.publish(subject, reply, payload, headers),
            await theirs.publish(subject, reply, payload, headers))  # fmt: skip


PUBLISHED = [
    None,
    {},
    {"Nats-Msg-Id": "e1:3:0", "traceparent": "00-ab-cd-01"},
    {" padded ": "  value  ", "": "a blank name is skipped", "  ": "and so is this"},
    {"k": "line\r\nbreaks\rbecome\nspaces"},
    {"bad name": "refused"},
    {"ok": "first", "bad:name": "refused after a good one"},
    {"uni": "caf\u00e9 \u2603"},
]


@pytest.mark.parametrize("headers", PUBLISHED)
@pytest.mark.parametrize("flush_queue", [False, True])
async def test_known_headers_are_sent_as_nats_py_sends_them(headers: dict | None,
                                                            flush_queue: bool) -> None:  # fmt: skip
    ours, theirs = await _both("tb.f.exec.e1", "_INBOX.x", b"{}", headers, flush_queue=flush_queue)
    assert ours == theirs


_header_text = st.text(alphabet=st.sampled_from("aZ09-_:. \t\r\n\u00e9~!"), max_size=10)


@given(st.dictionaries(_header_text, _header_text, max_size=4), st.binary(max_size=8))
async def test_any_headers_are_sent_as_nats_py_sends_them(headers: dict, payload: bytes) -> None:
    ours, theirs = await _both("tb.f.run.c", "", payload, headers)
    assert ours == theirs


async def test_nats_py_still_publishes_through_the_name_overridden(nats_url: str) -> None:
    sent: list[dict] = []

    class Counting(LeanHeaderClient):
        async def _send_publish(self, subject, reply, payload, payload_size, headers):  # type: ignore[no-untyped-def]
            sent.append(dict(headers or {}))
            await super()._send_publish(subject, reply, payload, payload_size, headers)

    assert await _round_trip(Counting(), nats_url, {"k": "a\r\nb"}) == {"k": "a  b"}
    assert sent == [{"k": "a\r\nb"}]
