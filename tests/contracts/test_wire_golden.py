"""The golden wire files: what a publisher in any language writes, read by today's decoders.

Each kind has one file per schema version under ``golden/v<N>/<kind>.json``. A new version adds
files; an old file is never edited, so these tests keep old publishers working. The mailbox
files hold exactly the required fields: they document the least a publisher must send.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from triggerbus.contracts import messages
from triggerbus.contracts._base import SCHEMA_VERSION, Wire
from triggerbus.contracts.codec import WireError, decode, encode

GOLDEN = Path(__file__).parent / "golden"

DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "start": messages.mailbox_decoder,
    "chunk_completed": messages.mailbox_decoder,
    "chunk_failed": messages.mailbox_decoder,
    "emit": messages.mailbox_decoder,
    "state": messages.mailbox_decoder,
    "close": messages.mailbox_decoder,
    "timer": messages.mailbox_decoder,
    "invoke": messages.invoke_decoder,
    "item": messages.stream_decoder,
    "end": messages.stream_decoder,
    "closed": messages.closed_decoder,
    "reply": messages.reply_decoder,
    "dead_letter": messages.dead_letter_decoder,
    "seal": messages.mailbox_decoder,
    "flow_data": messages.mailbox_decoder,
    "sub_flow_closed": messages.mailbox_decoder,
    "flow_data_updated": messages.flow_data_decoder,
    "pause": messages.mailbox_decoder,
    "resume": messages.mailbox_decoder,
}
MAILBOX_KINDS = [
    "start",
    "chunk_completed",
    "chunk_failed",
    "emit",
    "state",
    "close",
    "timer",
    "seal",
    "flow_data",
    "sub_flow_closed",
    "pause",
    "resume",
]


def wire_kinds() -> dict[str, type[Wire]]:
    """Every tagged message class in contracts/messages.py, by its ``kind`` tag."""
    kinds: dict[str, type[Wire]] = {}
    for value in vars(messages).values():
        if isinstance(value, type) and issubclass(value, Wire) and value is not Wire:
            tag = value.__struct_config__.tag
            assert isinstance(tag, str)
            kinds[tag] = value
    return kinds


def golden_files() -> list[Path]:
    return sorted(GOLDEN.glob("v*/*.json"))


def load(path: Path) -> bytes:
    return path.read_bytes()


class TestGoldenFiles:
    def test_every_kind_has_a_golden_file_for_the_current_version(self) -> None:
        """Adding a message kind without its golden file fails here."""
        present = {p.stem for p in (GOLDEN / f"v{SCHEMA_VERSION}").glob("*.json")}
        assert present == set(wire_kinds()), "golden/v1 must hold one file per message kind"
        assert set(DECODERS) == set(wire_kinds())

    @pytest.mark.parametrize("path", golden_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
    def test_golden_file_decodes_as_its_kind(self, path: Path) -> None:
        """The module-level decoder reads the file into the class tagged with its name."""
        message = decode(DECODERS[path.stem], load(path))
        assert type(message) is wire_kinds()[path.stem]
        assert message.v == int(path.parent.name.removeprefix("v"))

    @pytest.mark.parametrize("path", golden_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
    def test_golden_file_round_trips(self, path: Path) -> None:
        """What we decode and re-encode decodes to the same message."""
        decoder = DECODERS[path.stem]
        message = decode(decoder, load(path))
        assert decode(decoder, encode(message)) == message

    @pytest.mark.parametrize("kind", MAILBOX_KINDS)
    def test_mailbox_golden_file_holds_only_required_fields(self, kind: str) -> None:
        """Dropping any field of a mailbox golden file makes it undecodable, and every field
        not in the file has a default."""
        data = json.loads(load(GOLDEN / "v1" / f"{kind}.json"))
        for field in data:
            partial = {k: v for k, v in data.items() if k != field}
            with pytest.raises(WireError):
                decode(messages.mailbox_decoder, json.dumps(partial).encode())
        required = {f.encode_name for f in msgspec.structs.fields(wire_kinds()[kind]) if f.required}
        assert required | {"kind"} == set(data)

    def test_golden_values_reach_the_message(self) -> None:
        """Spot check that decoding keeps values, not just shapes."""
        invoke = decode(messages.invoke_decoder, load(GOLDEN / "v1" / "invoke.json"))
        assert invoke.layers == ("batch-fanout-5d41402abc4b2a76@2",)
        assert invoke.value == {"topic": "Agently TriggerFlow"}
        closed = decode(messages.closed_decoder, load(GOLDEN / "v1" / "closed.json"))
        assert closed.error is not None and closed.error.chunk == "boom"
        start = decode(messages.mailbox_decoder, load(GOLDEN / "v1" / "start.json"))
        assert isinstance(start, messages.StartExecution)
        assert (start.value, start.auto_close_timeout, start.fingerprint) == (None, 10.0, "")

