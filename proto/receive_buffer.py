"""The receive buffer under every sans-IO parser in proto/ (as h11 has one ReceiveBuffer).

Holds the bytes fed but not yet parsed. Parsed bytes are only dropped once they are at least
half the buffer, so feeding stays amortised O(n) without copying on every event.
"""

from __future__ import annotations


class ReceiveBuffer:
    """Base of the readers: `feed`, `feed_eof`, `buffered`, `at_eof`; subclasses parse `_buf[_pos:]`."""

    error: type[Exception] = ValueError  # the parser's one error type
    unit = "message"  # what a truncated input is inside of, for the message
    _buf: bytearray
    _pos: int  # start of the unparsed bytes in _buf
    _eof: bool

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    def feed(self, data: bytes | memoryview) -> None:
        if self._eof:
            raise self.error("data fed after end of input")
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def feed_eof(self) -> None:
        """Mark end of input; a partial unit left over is an error."""
        self._eof = True
        if self.buffered:
            raise self.error(f"input ended inside a {self.unit} ({self.buffered} bytes left over)")

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def at_eof(self) -> bool:
        return self._eof and not self.buffered
