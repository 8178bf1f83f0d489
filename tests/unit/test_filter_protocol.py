"""Git's long-running filter protocol v2, server side: handshake, commands, answers, violations."""

from __future__ import annotations

import contextlib

import pytest
from gitmld.proto import filter_protocol as fp
from gitmld.proto import pktline
from gitmld.proto.filter_protocol import (
    CapabilitiesOffered,
    Command,
    ContentChunk,
    ContentEnd,
    FilterProtocolError,
    FilterServer,
    State,
    Welcome,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def _texts(data: bytes) -> list[str]:
    """Server output as readable tokens: text lines, '<flush>', or '<N bytes>'."""
    out = []
    for e in pktline.parse_all(data):
        if isinstance(e, pktline.Flush):
            out.append("<flush>")
        elif isinstance(e, pktline.Data):
            out.append(e.data.decode()[:-1] if e.data.endswith(b"\n") else f"<{len(e.data)} bytes>")
    return out


def handshaken(offered: tuple[str, ...] = fp.SUPPORTED_CAPABILITIES) -> FilterServer:
    conn = FilterServer()
    conn.feed(fp.encode_client_welcome())
    assert conn.next_event() == Welcome((2,))
    assert _texts(conn.send_welcome()) == ["git-filter-server", "version=2", "<flush>"]
    conn.feed(fp.encode_client_capabilities(offered))
    assert conn.next_event() == CapabilitiesOffered(frozenset(offered))
    conn.send_capabilities()
    assert conn.state is State.IDLE
    return conn


def test_handshake_bytes_are_what_git_expects() -> None:
    conn = FilterServer()
    conn.feed(b"0016git-filter-client\n000eversion=2\n0000")
    assert conn.next_event() == Welcome((2,))
    assert conn.send_welcome() == b"0016git-filter-server\n000eversion=2\n0000"
    conn.feed(b"0015capability=clean\n0016capability=smudge\n0015capability=delay\n0000")
    assert isinstance(conn.next_event(), CapabilitiesOffered)
    assert conn.send_capabilities() == b"0015capability=clean\n0016capability=smudge\n0015capability=delay\n0000"
    assert conn.capabilities == {"clean", "smudge", "delay"}


def test_capabilities_are_the_intersection() -> None:
    conn = handshaken(("clean", "smudge", "future-thing"))
    assert conn.capabilities == {"clean", "smudge"}


def test_welcome_needs_version_2() -> None:
    conn = FilterServer()
    conn.feed(fp.encode_client_welcome((1, 3)))
    with pytest.raises(FilterProtocolError, match="only 2"):
        conn.next_event()


def test_several_versions_offered() -> None:
    conn = FilterServer()
    conn.feed(fp.encode_client_welcome((2, 3)))
    assert conn.next_event() == Welcome((2, 3))


def test_clean_request_events_and_pause() -> None:
    conn = handshaken()
    conn.feed(fp.encode_request("clean", {"pathname": "a.bin"}, b"hello") + fp.encode_request(
        "clean", {"pathname": "b.bin"}, b""
    ))
    cmd = conn.next_event()
    assert cmd == Command("clean", {"command": "clean", "pathname": "a.bin"})
    assert isinstance(cmd, Command) and cmd.pathname == "a.bin" and not cmd.can_delay
    assert conn.next_event() == ContentChunk(b"hello")
    assert conn.next_event() == ContentEnd()
    assert conn.next_event() is None  # paused until we answer, though b.bin is buffered
    assert conn.paused
    assert _texts(conn.respond_success(b"pointer\n")) == ["status=success", "<flush>", "pointer", "<flush>", "<flush>"]
    assert conn.next_event() == Command("clean", {"command": "clean", "pathname": "b.bin"})
    assert conn.next_event() == ContentEnd()  # empty content: no chunk
    assert _texts(conn.respond_error()) == ["status=error", "<flush>"]


def test_streamed_success_with_trailing_error() -> None:
    conn = handshaken()
    conn.feed(fp.encode_request("smudge", {"pathname": "m.bin"}, b"ptr"))
    assert [type(e) for e in conn] == [Command, ContentChunk, ContentEnd]
    out = conn.start_success() + conn.send_content(b"x" * 70000) + conn.finish_content(ok=False)
    assert _texts(out) == [
        *("status=success", "<flush>", "<65516 bytes>", "<4484 bytes>"),
        *("<flush>", "status=error", "<flush>"),
    ]
    assert conn.state is State.IDLE


def test_delay_and_list_available_blobs() -> None:
    conn = handshaken()
    headers = {"pathname": "dir/m.bin", "can-delay": "1", "ref": "refs/heads/main", "blob": "ab" * 20}
    conn.feed(fp.encode_request("smudge", headers, b"ptr"))
    cmd = conn.next_event()
    assert isinstance(cmd, Command) and cmd.can_delay and cmd.headers["ref"] == "refs/heads/main"
    list(conn)
    assert _texts(conn.respond_delayed()) == ["status=delayed", "<flush>"]
    conn.feed(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
    assert conn.next_event() == Command(fp.LIST_AVAILABLE_BLOBS, {"command": fp.LIST_AVAILABLE_BLOBS})
    assert conn.next_event() is None
    out = conn.respond_available_blobs(["dir/m.bin", "x y.bin"])
    assert _texts(out) == ["pathname=dir/m.bin", "pathname=x y.bin", "<flush>", "status=success", "<flush>"]
    conn.feed(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
    conn.next_event()
    assert _texts(conn.respond_available_blobs([])) == ["<flush>", "status=success", "<flush>"]


def test_delayed_is_refused_without_can_delay() -> None:
    conn = handshaken()
    conn.feed(fp.encode_request("smudge", {"pathname": "m.bin"}, b"ptr"))
    list(conn)
    with pytest.raises(FilterProtocolError, match="can-delay"):
        conn.respond_delayed()


def test_non_utf8_pathname_round_trips() -> None:
    conn = handshaken()
    raw = (
        pktline.encode_text("command=smudge")
        + pktline.encode_data(b"pathname=caf\xe9.bin\n")
        + pktline.encode_text("can-delay=1")
        + b"0000"
        + b"0000"
    )
    conn.feed(raw)
    cmd = conn.next_event()
    assert isinstance(cmd, Command)
    conn.next_event()
    conn.respond_delayed()
    conn.feed(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
    conn.next_event()
    assert b"pathname=caf\xe9.bin\n" in conn.respond_available_blobs([cmd.pathname])


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (fp.encode_request("clean", {"pathname": "a"}, b""), "expected git-filter-client"),
        (b"0000", "expected git-filter-client"),
    ],
)
def test_violations_before_handshake(wire: bytes, match: str) -> None:
    conn = FilterServer()
    conn.feed(wire)
    with pytest.raises(FilterProtocolError, match=match):
        list(conn)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (fp.encode_request("frobnicate", {"pathname": "a"}), "unknown command"),
        (fp.encode_request("clean", {}, b""), "without pathname"),
        (pktline.encode_text("pathname=a") + b"0000", "must start with command"),
        (pktline.encode_text("command=clean") + pktline.encode_text("command=clean") + b"0000", "repeated"),
        (pktline.encode_text("command clean") + b"0000", "key=value"),
        (b"0000", "flush without a command"),
        (pktline.encode_text("command=clean") + pktline.encode_text("pathname=a") + b"0000" + b"0001", "Delim"),
        (b"zzzz", "not four hex"),
    ],
)
def test_violations_after_handshake(wire: bytes, match: str) -> None:
    conn = handshaken()
    conn.feed(wire)
    with pytest.raises(FilterProtocolError, match=match):
        list(conn)


def test_commands_must_have_been_negotiated() -> None:
    conn = handshaken(("clean",))
    conn.feed(fp.encode_request("smudge", {"pathname": "a"}, b""))
    with pytest.raises(FilterProtocolError, match="not negotiated"):
        list(conn)
    conn = handshaken(("clean", "smudge"))
    conn.feed(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
    with pytest.raises(FilterProtocolError, match="delay"):
        list(conn)


def test_header_count_is_bounded() -> None:
    conn = handshaken()
    conn.feed(fp.encode_request("clean", {f"k{i}": "v" for i in range(fp.MAX_HEADERS + 1)}))
    with pytest.raises(FilterProtocolError, match="more than"):
        list(conn)


def test_eof_between_requests_is_fine_but_not_inside_one() -> None:
    conn = handshaken()
    conn.feed_eof()
    assert conn.state is State.CLOSED and conn.next_event() is None
    conn = handshaken()
    conn.feed(fp.encode_request("clean", {"pathname": "a"}, None) + b"0008abcd")
    list(conn)
    with pytest.raises(FilterProtocolError, match="CONTENT"):
        conn.feed_eof()


def test_eof_before_anything_is_a_quiet_close() -> None:
    conn = FilterServer()
    conn.feed_eof()
    assert conn.state is State.CLOSED


def test_answers_in_the_wrong_state_are_refused() -> None:
    conn = FilterServer()
    with pytest.raises(FilterProtocolError):
        conn.send_capabilities()
    conn = handshaken()
    with pytest.raises(FilterProtocolError):
        conn.respond_error()
    conn.feed(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
    conn.next_event()
    with pytest.raises(FilterProtocolError, match="with content"):
        conn.start_success()
    conn = handshaken()
    conn.feed(fp.encode_request("clean", {"pathname": "a"}, b"x"))
    list(conn)
    with pytest.raises(FilterProtocolError, match="blob list"):
        conn.respond_available_blobs([])
    conn.start_success()
    with pytest.raises(FilterProtocolError):
        conn.respond_error()


SESSION = (
    fp.encode_client_welcome()
    + fp.encode_client_capabilities()
    + fp.encode_request("clean", {"pathname": "a"}, b"abc" * 10)
    + fp.encode_request("smudge", {"pathname": "b", "can-delay": "1"}, b"")
)


def _run_session(pieces: list[bytes]) -> list[fp.Event]:
    """Feed pieces, answering the way a filter would, and collect every event."""
    conn = FilterServer()
    events: list[fp.Event] = []
    for piece in pieces:
        conn.feed(piece)
        while True:
            event = conn.next_event()
            if event is None:
                break
            events.append(event)
            if isinstance(event, Welcome):
                conn.send_welcome()
            elif isinstance(event, CapabilitiesOffered):
                conn.send_capabilities()
            elif isinstance(event, ContentEnd):
                conn.respond_error()
    return events


def test_every_split_point_gives_the_same_events() -> None:
    whole = _run_session([SESSION])
    assert len(whole) == 7
    # chunk events may be split differently; compare with chunks merged
    def merged(events: list[fp.Event]) -> list[object]:
        out: list[object] = []
        for e in events:
            if isinstance(e, ContentChunk) and out and isinstance(out[-1], bytes):
                out[-1] += e.data
            else:
                out.append(e.data if isinstance(e, ContentChunk) else e)
        return out

    for cut in range(len(SESSION) + 1):
        assert merged(_run_session([SESSION[:cut], SESSION[cut:]])) == merged(whole)


@settings(max_examples=200)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=len(SESSION)))
def test_random_bytes_raise_only_filter_protocol_error(garbage: bytes, keep: int) -> None:
    with contextlib.suppress(FilterProtocolError):
        _run_session([SESSION[:keep], garbage])


@given(st.lists(st.sampled_from([b"0000", b"0001", b"0004", b"0006a\n", b"0012command=clean\n",
                                 b"0011pathname=x\n", b"0016git-filter-client\n", b"000eversion=2\n"]),
                max_size=30))
def test_plausible_packet_soup_raises_only_filter_protocol_error(pkts: list[bytes]) -> None:
    with contextlib.suppress(FilterProtocolError):
        _run_session([b"".join(pkts)])
