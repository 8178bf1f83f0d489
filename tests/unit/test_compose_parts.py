"""proto/compose.py: the `compose` op's parts and the splitting of its inline DATA; the wire
state machine treats compose as an upload."""

from __future__ import annotations

import pytest
from gitmld.proto import wire
from gitmld.proto.compose import (
    ComposeError,
    CopyPart,
    InlinePart,
    InlineSplitter,
    coalesce,
    parts_from_json,
    parts_to_json,
    total_size,
)

OID_A = "sha256:" + "a" * 64
OID_B = "sha256:" + "b" * 64


def test_parts_round_trip_through_json() -> None:
    parts = [InlinePart(10), CopyPart(OID_A, 0, 100), CopyPart(OID_B, 7, 3), InlinePart(0)]
    raw = parts_to_json(parts)
    assert raw[0] == {"inline": 10} and raw[1] == {"oid": OID_A, "offset": 0, "length": 100}
    assert parts_from_json(raw) == parts
    assert total_size(parts) == 113


@pytest.mark.parametrize(("raw", "message"), [
    ({"inline": 3}, "must be a list"),
    ([5], "part 0 is not an object"),
    ([{"inline": -1}], "part 0: 'inline' must be a non-negative integer"),
    ([{"inline": True}], "not True"),
    ([{"oid": "sha256:xyz", "offset": 0, "length": 1}], "is not sha256:"),
    ([{"inline": 1}, {"oid": OID_A, "offset": 0}], "part 1 has the fields"),
    ([{"oid": OID_A, "offset": 1.5, "length": 1}], "'offset' must be a non-negative integer"),
    ([{"inline": 1, "oid": OID_A}], "either"),
])
def test_malformed_parts_are_rejected_naming_the_part(raw: object, message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        parts_from_json(raw)


def test_coalesce_joins_continuing_copies_and_inline_runs_and_drops_empty_parts() -> None:
    parts = [InlinePart(8), InlinePart(0), InlinePart(4), CopyPart(OID_A, 12, 10), CopyPart(OID_A, 22, 5),
             CopyPart(OID_A, 40, 1), CopyPart(OID_B, 41, 1), CopyPart(OID_A, 0, 0), InlinePart(2)]
    assert coalesce(parts) == [InlinePart(12), CopyPart(OID_A, 12, 15), CopyPart(OID_A, 40, 1),
                               CopyPart(OID_B, 41, 1), InlinePart(2)]
    assert total_size(coalesce(parts)) == total_size(parts)


def test_splitter_cuts_data_at_part_boundaries_whatever_the_frames() -> None:
    data = bytes(range(30))
    for frame in (1, 4, 7, 30):
        splitter = InlineSplitter([5, 0, 10, 15])
        pieces: list[tuple[int, bytes]] = []
        for i in range(0, len(data), frame):
            pieces += splitter.feed(data[i : i + frame])
        splitter.finish()
        joined: dict[int, bytes] = {}
        for index, piece in pieces:
            joined[index] = joined.get(index, b"") + piece
        assert joined == {0: data[:5], 2: data[5:15], 3: data[15:]}, frame


def test_splitter_rejects_too_many_and_too_few_bytes() -> None:
    splitter = InlineSplitter([3])
    with pytest.raises(ComposeError, match="more inline bytes than its parts declare"):
        splitter.feed(b"abcd")
    short = InlineSplitter([3, 2])
    short.feed(b"abcd")
    with pytest.raises(ComposeError, match="after 4 inline bytes; its parts declare 5"):
        short.finish()
    InlineSplitter([]).finish()  # nothing declared, nothing sent: fine
    with pytest.raises(ComposeError):
        InlineSplitter([]).feed(b"x")


def test_compose_is_an_upload_on_the_wire() -> None:
    client, server = wire.Connection(wire.Role.CLIENT), wire.Connection(wire.Role.SERVER)
    server.feed(client.send(wire.Hello({"proto": 1, "agent": "t"})))
    server.next_event()
    client.feed(server.send(wire.Hello({"proto": 1, "agent": "d"})))
    client.next_event()
    server.feed(client.send(wire.Request({"op": "compose", "parts": [{"inline": 2}]})))
    server.feed(client.send(wire.Data(b"ab")))
    server.feed(client.send(wire.End()))
    events = list(server)
    assert [type(e).__name__ for e in events] == ["Request", "Data", "End"]
    assert server.phase is wire.Phase.AWAITING
    client.feed(server.send(wire.Response({"oid": OID_A, "size": 2, "pointer": ""})))
    assert isinstance(client.next_event(), wire.Response)
    assert client.phase is wire.Phase.IDLE and server.phase is wire.Phase.IDLE
