"""Git pkt-line framing, sans-IO.

A pkt-line is four lowercase hex digits giving the total length (header included) followed by
the payload. Lengths 0000, 0001 and 0002 are the flush, delim and response-end packets. Git
caps a packet at 65520 bytes (LARGE_PACKET_MAX), so a reader never needs to buffer more than
one packet beyond what it was fed; anything else is a `PktLineError` (one error type, as h11's
ProtocolError).
"""

from __future__ import annotations

from collections.abc import Iterator

from gitmld.proto.receive_buffer import ReceiveBuffer

MAX_PKT_SIZE = 65520  # git's LARGE_PACKET_MAX, header included
HEADER_SIZE = 4
MAX_PAYLOAD = MAX_PKT_SIZE - HEADER_SIZE  # 65516

FLUSH_PKT = b"0000"
DELIM_PKT = b"0001"
RESPONSE_END_PKT = b"0002"

_HEX = frozenset(b"0123456789abcdefABCDEF")


class PktLineError(Exception):
    """Malformed pkt-line input or an attempt to encode an impossible packet."""


class Record:
    """An immutable value type with dataclass semantics (eq, hash, repr) from its __slots__.

    The proto modules use this instead of `dataclasses`: importing that and building frozen
    dataclasses would cost the filter process about 40 ms of its start-up.
    """

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values: object) -> None:
        if len(values) != len(self.__slots__):
            raise TypeError(f"{type(self).__name__} takes {len(self.__slots__)} values")
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({args})"

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), self._values())


class Data(Record):
    """One data packet's payload."""

    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        super().__init__(data)


class Flush(Record):
    """0000: end of a list or of a content stream."""

    __slots__ = ()


class Delim(Record):
    """0001: section separator (protocol v2)."""

    __slots__ = ()


class ResponseEnd(Record):
    """0002: end of a response (protocol v2); valid framing, meaning is up to the protocol."""

    __slots__ = ()


Event = Data | Flush | Delim | ResponseEnd

_FLUSH = Flush()
_DELIM = Delim()
_RESPONSE_END = ResponseEnd()


def encode_data(payload: bytes) -> bytes:
    """One data packet; refuses payloads git could not read back."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise PktLineError(f"pkt-line payload of {n} bytes exceeds the maximum of {MAX_PAYLOAD}")
    return b"%04x" % (n + HEADER_SIZE) + payload


def encode_text(line: str) -> bytes:
    """A text packet: git's convention is one line terminated by LF."""
    return encode_data(line.encode("utf-8") + b"\n")


def encode_stream(data: bytes | bytearray | memoryview) -> bytes:
    """Split content into as many maximum-size data packets as needed (no flush).

    Content passes through here at full checkout speed, so each byte is copied once (the join).
    """
    return b"".join(stream_parts(data))


def stream_parts(data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
    """The data packets of `data` as [header, payload view, ...], for a vectored write: the
    same bytes as encode_stream without copying the payload (the daemon's direct smudge)."""
    view = memoryview(data).cast("B")
    parts: list[bytes | memoryview] = []
    for i in range(0, len(view), MAX_PAYLOAD):
        piece = view[i : i + MAX_PAYLOAD]
        parts.append(b"%04x" % (len(piece) + 4))
        parts.append(piece)
    return parts


def encode_flush() -> bytes:
    return FLUSH_PKT


def encode_delim() -> bytes:
    return DELIM_PKT


def encode_response_end() -> bytes:
    return RESPONSE_END_PKT


class PktLineReader(ReceiveBuffer):
    """Feed bytes, pull events. Holds at most the bytes fed but not yet parsed."""

    error = PktLineError
    unit = "pkt-line"

    def next_event(self) -> Event | None:
        """The next complete event, or None when more bytes are needed."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        header = bytes(buf[pos : pos + HEADER_SIZE])
        if not _HEX.issuperset(header):
            raise PktLineError(f"bad pkt-line length {header!r}: not four hex digits")
        length = int(header, 16)
        if length < HEADER_SIZE:
            self._pos = pos + HEADER_SIZE
            if length == 0:
                return _FLUSH
            if length == 1:
                return _DELIM
            if length == 2:
                return _RESPONSE_END
            raise PktLineError(f"bad pkt-line length {header!r}: reserved value")
        if length > MAX_PKT_SIZE:
            raise PktLineError(f"pkt-line length {length} exceeds the maximum of {MAX_PKT_SIZE}")
        end = pos + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + HEADER_SIZE : end])
        self._pos = end
        return Data(payload)

    def __iter__(self) -> Iterator[Event]:
        """All events available from the bytes fed so far."""
        while (event := self.next_event()) is not None:
            yield event


def parse_all(data: bytes) -> list[Event]:
    """Parse a complete byte string (convenience for tests and small messages)."""
    reader = PktLineReader()
    reader.feed(data)
    events = list(reader)
    reader.feed_eof()
    return events
