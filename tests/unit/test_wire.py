"""Client <-> daemon frames: encoding, the reader's limits, the per-side state machine, fuzzing."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from gitmld.proto import wire
from gitmld.proto.wire import (
    Connection,
    Data,
    End,
    Error,
    FrameReader,
    Hello,
    Phase,
    Progress,
    Request,
    Response,
    Role,
    WireError,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def frame(ftype: int, payload: bytes) -> bytes:
    return struct.pack(">BI", ftype, len(payload)) + payload


def parse(data: bytes) -> list[wire.Event]:
    r = FrameReader()
    r.feed(data)
    events = list(r)
    r.feed_eof()
    return events


def test_frame_layout() -> None:
    assert wire.encode_end() == b"\x05\x00\x00\x00\x00"
    assert wire.encode_data(b"abc") == b"\x04\x00\x00\x00\x03abc"
    hello = wire.encode_hello("gitmld-filter/0.1.0", pid=123)
    assert hello[0] == 0x01
    assert json.loads(hello[5:]) == {"proto": 1, "agent": "gitmld-filter/0.1.0", "pid": 123}
    assert struct.unpack(">I", hello[1:5])[0] == len(hello) - 5


def test_every_event_round_trips() -> None:
    events: list[wire.Event] = [
        Hello({"proto": 1, "agent": "x"}),
        Request({"op": "get", "oid": "sha256:" + "0" * 64, "size": 3}),
        Response({"size": 3}),
        Data(b"\x00\xff" * 10),
        End(),
        Error("not_found", "no such object", "sha256:" + "1" * 64, {"hint": "push first"}),
        Error("internal", "boom"),
        Progress({"done": 1, "total": 2, "unit": "bytes", "what": "upload"}),
    ]
    assert parse(b"".join(wire.encode_event(e) for e in events)) == events
    assert Request({"op": "has"}).op == "has"
    assert Hello({"proto": 1, "agent": "a/1"}).agent == "a/1"


def test_encode_data_splits_at_256k_and_skips_empty() -> None:
    data = b"z" * (wire.MAX_DATA * 2 + 5)
    events = parse(wire.encode_data(data))
    assert [len(e.data) for e in events if isinstance(e, Data)] == [wire.MAX_DATA, wire.MAX_DATA, 5]
    assert wire.encode_data(b"") == b""
    with pytest.raises(WireError):
        wire.encode_event(Data(b"z" * (wire.MAX_DATA + 1)))


def test_json_frames_above_max_frame_cannot_be_encoded() -> None:
    with pytest.raises(WireError, match="MAX_FRAME"):
        wire.encode_response({"blob": "x" * wire.MAX_FRAME})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame(0x09, b""), "unknown frame type"),
        (frame(0x00, b""), "unknown frame type"),
        (struct.pack(">BI", 0x03, wire.MAX_FRAME + 1), "exceeds"),
        (struct.pack(">BI", 0x04, wire.MAX_DATA + 1), "exceeds"),
        (frame(0x03, b"{not json"), "bad JSON"),
        (frame(0x03, b"\xff\xfe"), "bad JSON"),
        (frame(0x03, b"[1, 2]"), "not an object"),
        (frame(0x01, b'{"proto": 2, "agent": "future"}'), "protocol 2"),
        (frame(0x01, b'{"proto": true}'), "protocol True"),
        (frame(0x01, b'{"agent": "x"}'), "protocol None"),
        (frame(0x02, b'{"oid": "x"}'), "op"),
        (frame(0x05, b"x"), "END frame with a payload"),
        (frame(0x06, b'{"message": "no code"}'), "code"),
        (frame(0x06, b'{"code": "x", "message": "m", "object": 5}'), "object"),
    ],
)
def test_reader_rejects(data: bytes, match: str) -> None:
    r = FrameReader()
    r.feed(data)
    with pytest.raises(WireError, match=match):
        r.next_event()


def test_oversize_length_fails_before_the_payload_arrives() -> None:
    r = FrameReader()
    r.feed(struct.pack(">BI", 0x03, 50 << 20))
    with pytest.raises(WireError):
        r.next_event()


def test_truncated_frame_at_eof() -> None:
    r = FrameReader()
    r.feed(wire.encode_data(b"abcdef")[:-2])
    assert r.next_event() is None
    with pytest.raises(WireError, match="inside a frame"):
        r.feed_eof()


# -- the state machine --------------------------------------------------------------------
def pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.feed(client.send(Hello({"proto": 1, "agent": "c"})))
    assert server.next_event() == Hello({"proto": 1, "agent": "c"})
    client.feed(server.send(Hello({"proto": 1, "agent": "d"})))
    assert isinstance(client.next_event(), Hello)
    assert client.handshaken and server.handshaken
    return client, server


def deliver(sender: Connection, receiver: Connection, *events: wire.Event) -> list[wire.Event]:
    receiver.feed(b"".join(sender.send(e) for e in events))
    return list(receiver)


def test_put_exchange() -> None:
    client, server = pair()
    got = deliver(client, server, Request({"op": "put", "path": "m.bin"}), Data(b"ab"), Data(b"cd"))
    assert [type(e) for e in got] == [Request, Data, Data]
    assert client.phase is Phase.UPLOADING and server.phase is Phase.UPLOADING
    deliver(client, server, End())
    assert server.phase is Phase.AWAITING
    deliver(server, client, Progress({"done": 1}), Response({"oid": "sha256:..", "size": 4}))
    assert client.phase is Phase.IDLE and server.phase is Phase.IDLE and client.op is None


def test_get_exchange_and_error_mid_stream() -> None:
    client, server = pair()
    deliver(client, server, Request({"op": "get", "oid": "x"}))
    deliver(server, client, Response({"size": 4}), Data(b"ab"))
    assert client.phase is Phase.DOWNLOADING
    deliver(server, client, Error("corrupt", "bad chunk"))
    assert client.phase is Phase.IDLE and server.phase is Phase.IDLE
    deliver(client, server, Request({"op": "status"}))
    deliver(server, client, Response({}))
    assert client.phase is Phase.IDLE


def test_error_during_upload_then_end_returns_to_idle() -> None:
    client, server = pair()
    deliver(client, server, Request({"op": "put", "path": "a"}), Data(b"x"))
    deliver(server, client, Error("io", "disk full"))
    assert client.phase is Phase.UPLOAD_REJECTED and server.phase is Phase.UPLOAD_REJECTED
    assert server.in_upload and client.in_upload  # the daemon must still drain to END
    deliver(client, server, Data(b"in flight"), End())
    assert client.phase is Phase.IDLE and server.phase is Phase.IDLE


def test_protocol_error_closes() -> None:
    client, server = pair()
    got = deliver(server, client, Error("protocol", "bad frame"))
    assert got == [Error("protocol", "bad frame")]
    assert client.phase is Phase.CLOSED
    with pytest.raises(WireError, match="closed"):
        client.send(Request({"op": "status"}))


def test_client_may_send_request_right_after_hello() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.feed(client.send(Hello({"proto": 1})) + client.send(Request({"op": "status"})))
    assert [type(e) for e in server] == [Hello, Request]


@pytest.mark.parametrize(
    "violation",
    [
        lambda c, s: c.send(Data(b"x")),  # DATA while idle
        lambda c, s: c.send(End()),
        lambda c, s: s.send(Response({})),  # answer without a request
        lambda c, s: s.send(Data(b"x")),
        lambda c, s: c.send(Hello({"proto": 1})),  # twice
        lambda c, s: c.send(Response({})),  # not the client's frame
        lambda c, s: s.send(Request({"op": "x"})),  # not the daemon's frame
        lambda c, s: c.send(Error("internal", "x")),
        lambda c, s: s.send(Error("internal", "no request")),
    ],
)
def test_out_of_order_frames(violation) -> None:
    client, server = pair()
    with pytest.raises(WireError):
        violation(client, server)


def test_one_request_at_a_time() -> None:
    client, server = pair()
    client.send(Request({"op": "status"}))
    with pytest.raises(WireError, match="one request at a time"):
        client.send(Request({"op": "status"}))
    client, server = pair()
    deliver(client, server, Request({"op": "get"}))
    server.feed(wire.encode_request("status"))  # pipelining a second request is a violation
    with pytest.raises(WireError, match="one request at a time"):
        list(server)


def test_frames_before_hello_are_refused() -> None:
    server = Connection(Role.SERVER)
    server.feed(wire.encode_request("status"))
    with pytest.raises(WireError, match="before the client's HELLO"):
        server.next_event()
    client = Connection(Role.CLIENT)
    client.feed(wire.encode_hello("d"))
    with pytest.raises(WireError, match="must answer"):
        client.next_event()


def test_daemon_can_refuse_a_bad_hello_with_a_protocol_error() -> None:
    server = Connection(Role.SERVER)
    client = Connection(Role.CLIENT)
    client.send(Hello({"proto": 1}))
    client.feed(server.send(Error("protocol", "go away")))
    assert client.next_event() == Error("protocol", "go away")
    assert client.phase is Phase.CLOSED


# -- fuzzing ------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=4,
)
objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
events = st.one_of(
    objects.map(lambda o: Hello({**o, "proto": 1})),
    objects.map(lambda o: Request({**o, "op": "status"})),
    objects.map(Response),
    st.binary(max_size=500).map(Data),
    st.just(End()),
    st.builds(Error, st.sampled_from(sorted(wire.ERROR_CODES)), st.text(max_size=30), st.none() | st.text(max_size=5)),
    objects.map(Progress),
)


@settings(max_examples=25)
@given(st.lists(events, max_size=6))
def test_random_frames_round_trip(evs: list[wire.Event]) -> None:
    assert parse(b"".join(wire.encode_event(e) for e in evs)) == evs


small_events = st.one_of(
    st.just(Hello({"proto": 1, "agent": "a"})),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2).map(lambda o: Request({**o, "op": "x"})),
    st.binary(max_size=30).map(Data),
    st.just(End()),
    st.builds(Error, st.sampled_from(["io", "protocol"]), st.text(max_size=5)),
)


@settings(max_examples=30)
@given(st.lists(small_events, max_size=4))
def test_every_split_point_gives_the_same_events(evs: list[wire.Event]) -> None:
    data = b"".join(wire.encode_event(e) for e in evs)
    for cut in range(len(data) + 1):
        r = FrameReader()
        r.feed(data[:cut])
        got = list(r)
        r.feed(data[cut:])
        assert got + list(r) == evs


@given(st.binary(max_size=1000), st.integers(min_value=1, max_value=50))
def test_random_bytes_raise_only_wire_error(data: bytes, step: int) -> None:
    conn = Connection(Role.SERVER)
    with contextlib.suppress(WireError):
        for i in range(0, len(data), step):
            conn.feed(data[i : i + step])
            list(conn)
        conn.feed_eof()


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=9), st.binary(max_size=40)), max_size=10))
def test_random_frames_of_known_shape_raise_only_wire_error(frames: list[tuple[int, bytes]]) -> None:
    for role in Role:
        conn = Connection(role)
        with contextlib.suppress(WireError):
            conn.feed(b"".join(frame(t, p) for t, p in frames))
            list(conn)
