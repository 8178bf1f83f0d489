"""pkt-line framing: encoding, the bounded reader, and fuzzing (one error type only)."""

from __future__ import annotations

import contextlib

import pytest
from gitmld.proto import pktline
from gitmld.proto.pktline import Data, Delim, Flush, PktLineError, PktLineReader, ResponseEnd
from hypothesis import given, settings
from hypothesis import strategies as st


def test_encode_data_and_specials() -> None:
    assert pktline.encode_data(b"hello\n") == b"000ahello\n"
    assert pktline.encode_text("git-filter-client") == b"0016git-filter-client\n"
    assert pktline.encode_flush() == b"0000"
    assert pktline.encode_delim() == b"0001"
    assert pktline.encode_response_end() == b"0002"


def test_max_payload_is_enforced_on_encode() -> None:
    assert pktline.encode_data(b"x" * pktline.MAX_PAYLOAD)[:4] == b"fff0"
    with pytest.raises(PktLineError, match="65517"):
        pktline.encode_data(b"x" * (pktline.MAX_PAYLOAD + 1))


def test_encode_stream_splits_into_max_packets() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes -> 3 packets
    events = pktline.parse_all(pktline.encode_stream(data))
    assert [len(e.data) for e in events if isinstance(e, Data)] == [65516, 65516, 22568]
    assert b"".join(e.data for e in events if isinstance(e, Data)) == data
    assert pktline.encode_stream(b"") == b""


def test_reader_events() -> None:
    wire = b"0009abcde" + b"0000" + b"0001" + b"0002" + b"0004" + b"000AUPPER!"
    assert pktline.parse_all(wire) == [Data(b"abcde"), Flush(), Delim(), ResponseEnd(), Data(b""), Data(b"UPPER!")]


def test_reader_needs_more_data_then_completes() -> None:
    r = PktLineReader()
    r.feed(b"000")
    assert r.next_event() is None
    r.feed(b"8ab")
    assert r.next_event() is None
    r.feed(b"cd0000")
    assert list(r) == [Data(b"abcd"), Flush()]
    assert r.buffered == 0


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"zzzz", "not four hex"),
        (b"0003", "reserved"),
        (b"fff1" + b"x" * 65517, "exceeds"),
        (b"ffff", "exceeds"),
        (b" 004", "not four hex"),
    ],
)
def test_reader_rejects_bad_lengths(wire: bytes, message: str) -> None:
    r = PktLineReader()
    r.feed(wire)
    with pytest.raises(PktLineError, match=message):
        r.next_event()


def test_oversize_is_rejected_from_the_header_alone() -> None:
    r = PktLineReader()
    r.feed(b"fff1")  # no payload yet: must not wait for 65k bytes to decide
    with pytest.raises(PktLineError):
        r.next_event()


def test_truncated_input_at_eof() -> None:
    r = PktLineReader()
    r.feed(b"0010abc")
    assert r.next_event() is None
    with pytest.raises(PktLineError, match="inside a pkt-line"):
        r.feed_eof()


def test_feed_after_eof_is_an_error() -> None:
    r = PktLineReader()
    r.feed_eof()
    assert r.at_eof
    with pytest.raises(PktLineError):
        r.feed(b"0000")


def test_buffer_is_compacted() -> None:
    r = PktLineReader()
    for _ in range(1000):
        r.feed(pktline.encode_data(b"y" * 1000))
        assert r.next_event() == Data(b"y" * 1000)
    assert len(r._buf) < 4096  # consumed bytes do not accumulate


packets = st.lists(
    st.one_of(
        st.binary(max_size=300).map(Data),
        st.just(Flush()),
        st.just(Delim()),
        st.just(ResponseEnd()),
    ),
    max_size=20,
)


def _encode(events: list[pktline.Event]) -> bytes:
    out = []
    for e in events:
        if isinstance(e, Data):
            out.append(pktline.encode_data(e.data))
        elif isinstance(e, Flush):
            out.append(pktline.FLUSH_PKT)
        elif isinstance(e, Delim):
            out.append(pktline.DELIM_PKT)
        else:
            out.append(pktline.RESPONSE_END_PKT)
    return b"".join(out)


@given(packets)
def test_roundtrip(events: list[pktline.Event]) -> None:
    assert pktline.parse_all(_encode(events)) == events


@settings(max_examples=50)
@given(packets.filter(lambda e: len(e) < 8))
def test_every_split_point_gives_the_same_events(events: list[pktline.Event]) -> None:
    wire = _encode(events)
    for cut in range(len(wire) + 1):
        r = PktLineReader()
        r.feed(wire[:cut])
        got = list(r)
        r.feed(wire[cut:])
        got += list(r)
        assert got == events


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_random_bytes_raise_only_pktline_error(data: bytes, step: int) -> None:
    r = PktLineReader()
    try:
        for i in range(0, len(data), step):
            r.feed(data[i : i + step])
            for event in r:
                assert isinstance(event, Data | Flush | Delim | ResponseEnd)
        r.feed_eof()
    except PktLineError:
        pass


@given(st.binary(max_size=100))
def test_hex_prefixed_garbage_raises_only_pktline_error(tail: bytes) -> None:
    with contextlib.suppress(PktLineError):
        pktline.parse_all(b"00" + tail)
