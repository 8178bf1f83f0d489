"""Forward-only, bounded reading of a compressed stream (zlib, gzip, bz2, xz/lzma).

Compressed joblib files hold a pickle that can only be scanned after decompression. This
reader decompresses on demand as a cursor moves forward, keeps only a small window, discards
what is skipped, and stops at `max_output` bytes: a compressed bomb costs at most that much
CPU and never that much memory.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Protocol

from .base import DescribeError, Reader
from .readers import ReadBudgetExceeded


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


def compression_of(head: bytes) -> str | None:
    """'zlib', 'gzip', 'bz2', 'xz' or 'lzma' from the first bytes, else None."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"\x5d\x00\x00":
        return "lzma"
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    return None


def decompressor(kind: str) -> _Decompressor:
    if kind == "zlib":
        return zlib.decompressobj()
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind in ("xz", "lzma"):
        return lzma.LZMADecompressor()
    raise ValueError(kind)


def decompress_head(kind: str, data: bytes, n: int) -> bytes:
    """The first n decompressed bytes of a stream's first bytes (for sniffing); b'' on error."""
    try:
        return decompressor(kind).decompress(data, n)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return b""


class DecompressingReader:
    """The decompressed bytes of `base` as a Reader that may only be read forwards.

    `size` is `max_output`: reads past the real end come back short, and producing more than
    `max_output` bytes raises ReadBudgetExceeded.
    """

    def __init__(self, base: Reader, kind: str, *, max_output: int, chunk: int = 64 * 1024) -> None:
        self._base, self._kind, self._chunk = base, kind, chunk
        self._d = decompressor(kind)
        self._in_pos = 0
        self._buf = bytearray()
        self._buf_start = 0
        self._produced = 0
        self._eof = False
        self.max_output = max_output

    @property
    def size(self) -> int:
        return self.max_output

    def _input(self) -> bytes:
        data = self._base.read(self._in_pos, self._chunk)
        self._in_pos += len(data)
        return data

    def _more(self, want: int) -> None:
        """Decompress up to `want` more bytes into the buffer (or reach the end)."""
        d = self._d
        out = b""
        try:
            while not out and not self._eof:
                if getattr(d, "eof", False):
                    self._eof = True
                    break
                if hasattr(d, "unconsumed_tail"):  # zlib keeps unread input itself
                    data = getattr(d, "unconsumed_tail", b"") or self._input()
                    starved = not data
                else:  # bz2 / lzma keep unread output; they ask for input when empty
                    data = self._input() if getattr(d, "needs_input", True) else b""
                    starved = not data and getattr(d, "needs_input", True)
                if starved:
                    self._eof = True
                    break
                out = d.decompress(data, want)
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
            raise DescribeError(f"bad {self._kind} data: {exc}") from None
        self._produced += len(out)
        if self._produced > self.max_output:
            raise ReadBudgetExceeded(f"{self._kind} stream decompresses to more than {self.max_output} bytes")
        self._buf += out

    def read(self, offset: int, length: int) -> bytes:
        if offset < self._buf_start:
            raise DescribeError("compressed stream read backwards")
        end = offset + length
        while self._buf_start + len(self._buf) < end and not self._eof:
            if self._buf_start + len(self._buf) <= offset:  # skipping: drop what we pass
                self._buf_start += len(self._buf)
                self._buf.clear()
            self._more(min(1 << 20, end - self._buf_start - len(self._buf)))
        drop = min(offset - self._buf_start, len(self._buf))
        del self._buf[:drop]
        self._buf_start += drop
        return bytes(self._buf[:length]) if offset == self._buf_start else b""
