"""Nodes in flight are stored without their default fields, and read back whole."""

from __future__ import annotations

import msgspec

from triggerbus.contracts.snapshot import Node


def test_a_node_is_stored_without_its_defaults_and_read_back_whole() -> None:
    """Every node in flight is in every snapshot write; a burst of outside emits leaves
    thousands in flight, and written whole they outgrew the server's max_payload sooner."""
    node = Node(id=7, kind="emission", reply_to="_INBOX.x.1", reply_id="e:emit:1")
    stored = msgspec.json.encode(node)
    assert msgspec.json.decode(stored) == {
        "id": 7, "kind": "emission", "reply_to": "_INBOX.x.1", "reply_id": "e:emit:1",
    }  # fmt: skip
    assert msgspec.json.decode(stored, type=Node) == node
    written_whole = b'{"id":7,"kind":"emission","parent":null,"slot":0,"pending":0,"ready":true}'
    assert msgspec.json.decode(written_whole, type=Node) == Node(id=7, kind="emission")
