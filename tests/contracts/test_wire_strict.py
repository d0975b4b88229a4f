"""Strict decoding and encoding: bad input is refused with a reason that says where."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from triggerbus.contracts import messages
from triggerbus.contracts._base import SCHEMA_VERSION
from triggerbus.contracts.codec import NotSerializable, WireError, decode, encode


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


COMPLETED = {"kind": "chunk_completed", "id": "ex:3:done", "execution_id": "ex", "step": 3}


def refused(decoder: msgspec.json.Decoder[Any], data: bytes) -> str:
    with pytest.raises(WireError) as info:
        decode(decoder, data)
    return info.value.reason


class TestStrictDecoding:
    @pytest.mark.parametrize(
        ("field", "value", "path"),
        [
            ("step", "3", "$.step"),
            ("step", True, "$.step"),
            ("step", 3.5, "$.step"),
            ("execution_id", 42, "$.execution_id"),
            ("v", "1", "$.v"),
            ("sent_at", "now", "$.sent_at"),
        ],
    )
    def test_wrong_type_is_refused_naming_the_path(self, field: str, value: Any, path: str) -> None:
        """No silent coercion: a string for an int is an error at that field's path."""
        data = raw({**COMPLETED, field: value})
        assert f"`{path}`" in refused(messages.mailbox_decoder, data)

    def test_wrong_type_in_nested_struct_names_nested_path(self) -> None:
        """A bad field inside ``error`` is reported at ``$.error.<field>``."""
        closed = {
            "kind": "closed",
            "execution_id": "ex",
            "status": "failed",
            "snapshot": {},
            "error": {"error_type": "E", "message": 7},
        }
        assert "`$.error.message`" in refused(messages.closed_decoder, raw(closed))

    def test_wrong_type_in_array_names_the_index(self) -> None:
        """A bad element of ``layers`` is reported with its index."""
        emit = {"kind": "emit", "id": "i", "execution_id": "ex", "event": "E", "layers": ["a", 1]}
        assert "`$.layers[1]`" in refused(messages.mailbox_decoder, raw(emit))

    @pytest.mark.parametrize("missing", ["id", "execution_id", "step"])
    def test_missing_required_field_is_refused_naming_it(self, missing: str) -> None:
        """A missing field is named, with the path of the object that lacks it."""
        data = raw({k: v for k, v in COMPLETED.items() if k != missing})
        reason = refused(messages.mailbox_decoder, data)
        assert f"`{missing}`" in reason
        assert "`$`" in reason

    def test_missing_nested_field_names_the_nested_path(self) -> None:
        """A field missing inside ``error`` is reported at ``$.error``."""
        closed = {
            "kind": "closed",
            "execution_id": "ex",
            "status": "failed",
            "snapshot": {},
            "error": {"message": "m"},
        }
        reason = refused(messages.closed_decoder, raw(closed))
        assert "`error_type`" in reason and "`$.error`" in reason

    def test_missing_kind_is_refused(self) -> None:
        """A message without a ``kind`` cannot be routed and is refused."""
        data = raw({k: v for k, v in COMPLETED.items() if k != "kind"})
        assert "`kind`" in refused(messages.mailbox_decoder, data)

    @pytest.mark.parametrize("kind", ["bogus", "invoke", "closed", ""])
    def test_unknown_or_misplaced_kind_is_refused_at_kind(self, kind: str) -> None:
        """A kind the mailbox does not take is refused at ``$.kind``."""
        reason = refused(messages.mailbox_decoder, raw({**COMPLETED, "kind": kind}))
        assert "`$.kind`" in reason
        assert repr(kind) in reason

    def test_invalid_state_op_is_refused(self) -> None:
        """``op`` is one of set, append, delete."""
        state = {"kind": "state", "id": "i", "execution_id": "ex", "op": "merge", "key": "k"}
        assert "`$.op`" in refused(messages.mailbox_decoder, raw(state))

    @pytest.mark.parametrize(
        "data",
        [b"", b"not json", b"{", b'{"kind": "start",}', b"\xff\xfe", b"NaN"],
        ids=["empty", "text", "truncated", "trailing-comma", "binary", "nan"],
    )
    def test_non_json_bytes_are_refused(self, data: bytes) -> None:
        """Anything that is not JSON is a WireError, never a crash."""
        assert "not a JSON message" in refused(messages.mailbox_decoder, data)

    @pytest.mark.parametrize("data", [b"[]", b"42", b'"start"', b"null"])
    def test_json_that_is_not_an_object_is_refused(self, data: bytes) -> None:
        """A JSON value that is not an object is refused at the root."""
        assert "`$`" in refused(messages.mailbox_decoder, data)

    def test_every_decoder_is_strict(self) -> None:
        """Each module-level decoder refuses a wrong type instead of coercing."""
        cases: list[tuple[msgspec.json.Decoder[Any], dict[str, Any], str]] = [
            (messages.invoke_decoder, {"kind": "invoke", "id": "i", "flow": "f",
             "execution_id": "e", "fingerprint": "x", "chunk": "c", "step": "1"}, "$.step"),
            (messages.stream_decoder, {"kind": "item", "id": 1, "execution_id": "e"}, "$.id"),
            (messages.reply_decoder, {"kind": "reply", "ok": "yes"}, "$.ok"),
            (messages.dead_letter_decoder, {"kind": "dead_letter", "subject": "s",
             "reason": "r", "data": "d", "headers": {"a": 1}}, "$.headers"),
            (messages.closed_decoder, {"kind": "closed", "execution_id": "e", "status": "s",
             "snapshot": []}, "$.snapshot"),
        ]
        for decoder, body, path in cases:
            assert f"`{path}" in refused(decoder, raw(body)), body


class TestVersions:
    def test_newer_version_is_refused_naming_both_versions(self) -> None:
        """A message from a newer writer says which version it is and which we read."""
        newer = SCHEMA_VERSION + 1
        reason = refused(messages.mailbox_decoder, raw({**COMPLETED, "v": newer}))
        assert str(newer) in reason
        assert str(SCHEMA_VERSION) in reason
        assert "newer" in reason

    @pytest.mark.parametrize(
        ("decoder", "body"),
        [
            (messages.invoke_decoder, {"kind": "invoke", "id": "i", "flow": "f",
             "execution_id": "e", "fingerprint": "x", "chunk": "c", "step": 1}),
            (messages.stream_decoder, {"kind": "end", "id": "i", "execution_id": "e"}),
            (messages.reply_decoder, {"kind": "reply", "ok": True}),
            (messages.closed_decoder, {"kind": "closed", "execution_id": "e", "status": "s",
             "snapshot": {}}),
        ],
        ids=["invoke", "stream", "reply", "closed"],
    )
    def test_newer_version_is_refused_by_every_decoder(
        self, decoder: msgspec.json.Decoder[Any], body: dict[str, Any]
    ) -> None:
        """The version rule holds on every subject, not only the mailbox."""
        assert "newer" in refused(decoder, raw({**body, "v": SCHEMA_VERSION + 5}))

    def test_current_and_missing_version_are_accepted(self) -> None:
        """``v`` may be left out; it means the first version."""
        assert decode(messages.mailbox_decoder, raw(COMPLETED)).v == 1
        assert decode(messages.mailbox_decoder, raw({**COMPLETED, "v": SCHEMA_VERSION})).v == 1


class TestForwardCompatibility:
    def test_unknown_fields_are_skipped(self) -> None:
        """A newer peer's extra fields (same ``v``) do not break an older reader."""
        data = raw({**COMPLETED, "priority": 5, "trace": {"id": "abc"}, "result": [1, 2]})
        message = decode(messages.mailbox_decoder, data)
        assert message == messages.ChunkCompleted(
            id="ex:3:done", execution_id="ex", step=3, result=[1, 2]
        )

    def test_unknown_nested_fields_are_skipped(self) -> None:
        """Extra fields inside nested structs are skipped too."""
        closed = {
            "kind": "closed",
            "execution_id": "ex",
            "status": "failed",
            "snapshot": {},
            "error": {"error_type": "E", "message": "m", "retryable": False},
        }
        message = decode(messages.closed_decoder, raw(closed))
        assert message.error == messages.ErrorInfo(error_type="E", message="m")


class Unencodable:
    """A type msgspec does not know how to encode."""


class TestEncoding:
    @pytest.mark.parametrize(
        ("value", "type_name"),
        [(Unencodable(), "Unencodable"), (1j, "complex"), (object(), "object")],
        ids=["custom", "complex", "object"],
    )
    def test_unserialisable_value_raises_naming_the_type(self, value: Any, type_name: str) -> None:
        """Encoding a value JSON cannot hold raises NotSerializable with the type's name."""
        message = messages.ChunkCompleted(
            id="i", execution_id="e", step=1, result={"nested": [value]}
        )
        with pytest.raises(NotSerializable) as info:
            encode(message)
        assert info.value.type_name == type_name
        assert type_name in str(info.value)

    def test_encoding_is_canonical_json_with_kind_and_version(self) -> None:
        """Encoded messages carry their ``kind`` tag first and their ``v``."""
        data = encode(messages.CloseExecution(id="i", execution_id="e"))
        body = json.loads(data)
        assert next(iter(body)) == "kind"
        assert body["kind"] == "close"
        assert body["v"] == SCHEMA_VERSION

    def test_tuples_come_back_as_lists_in_untyped_values(self) -> None:
        """JSON has no tuple: a tuple inside a value decodes as a list (unlike in Agently)."""
        data = encode(messages.ChunkCompleted(id="i", execution_id="e", step=1, result=(1, 2)))
        assert decode(messages.mailbox_decoder, data).result == [1, 2]
