"""Readers that count what they read, and a sequential cursor over them.

Every describer reads through these, so "reads under 1 MiB of a 10 GiB file" is a number a
test can assert (`bytes_read`), and `BudgetReader` turns a describer that would read too much
(a hostile length field, a bug) into a `DescribeError` instead of a slow `git add`.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from .base import DescribeError, Reader


class Truncated(DescribeError):
    """The file ends before a structure that its header promised."""


class ReadBudgetExceeded(DescribeError):
    """A describer asked for more bytes than the registry allows for one file."""


class Unavailable(DescribeError):
    """The bytes asked for were not kept (a HeadTailReader holds only both ends of a file)."""


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise DescribeError(f"negative read ({offset}, {length})")


class FileReader:
    """A file on disk (by path or open binary file), read with pread; counts bytes returned."""

    def __init__(self, source: str | os.PathLike[str] | BinaryIO) -> None:
        if isinstance(source, (str, os.PathLike)):
            self._fd = os.open(source, os.O_RDONLY)
            self._owned = True
        else:
            self._fd = source.fileno()
            self._owned = False
        self._size = os.fstat(self._fd).st_size
        self.bytes_read = 0
        self.reads = 0

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        length = max(0, min(length, self._size - offset))
        if length == 0:
            return b""
        data = os.pread(self._fd, length, offset)
        self.bytes_read += len(data)
        self.reads += 1
        return data

    def close(self) -> None:
        if self._owned and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesReader:
    """Bytes already in memory (tests, decompressed members); counts bytes returned."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        out = bytes(self._data[offset : offset + length])
        self.bytes_read += len(out)
        return out


class HeadTailReader:
    """Only the first and last bytes of a file, as a streaming store can keep while hashing.

    Formats whose headers sit at either end (safetensors, GGUF, PyTorch zips with a small
    data.pkl) describe fully; a read elsewhere raises `Unavailable`.
    """

    def __init__(self, head: bytes, tail: bytes, size: int) -> None:
        if len(head) > size or len(tail) > size:
            raise ValueError("head or tail longer than the file")
        self._head, self._tail, self._size = head, tail, size
        self._tail_start = size - len(tail)
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        if end <= len(self._head):
            out = self._head[offset:end]
        elif offset >= self._tail_start:
            out = self._tail[offset - self._tail_start : end - self._tail_start]
        elif self._tail_start <= len(self._head):  # head and tail meet: the whole file is here
            out = (self._head + self._tail[len(self._head) - self._tail_start :])[offset:end]
        else:
            raise Unavailable(f"bytes {offset}..{end} of {self._size} were not kept for describing")
        self.bytes_read += len(out)
        return out


class SliceReader:
    """A window [start, start+length) of another reader: one stored zip member, say."""

    def __init__(self, base: Reader, start: int, length: int) -> None:
        if start < 0 or length < 0 or start + length > base.size:
            raise Truncated(f"member at {start}+{length} runs past the end of a {base.size}-byte file")
        self._base, self._start, self._size = base, start, length

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        length = max(0, min(length, self._size - offset))
        return self._base.read(self._start + offset, length) if length else b""


class BudgetReader:
    """Counts bytes for a whole describe call and stops it past `budget` bytes."""

    def __init__(self, base: Reader, budget: int) -> None:
        self._base, self.budget = base, budget
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return self._base.size

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        want = max(0, min(length, self._base.size - offset))
        if self.bytes_read + want > self.budget:
            raise ReadBudgetExceeded(f"describing would read more than {self.budget} bytes")
        data = self._base.read(offset, length)
        self.bytes_read += len(data)
        return data


_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_FIRST_WINDOW = 512


class Cursor:
    """Sequential reads over [start, end) of a reader, buffered in windows that never pass `end`.

    `skip` only moves the position: skipped bytes (tensor data, raw arrays) are never read.
    Windows start at 512 bytes after every jump and double while reading stays sequential
    (up to `window`), so hopping from header to header costs little more than the headers.
    """

    def __init__(self, reader: Reader, start: int = 0, end: int | None = None, *, window: int = 64 * 1024):
        self.reader = reader
        self.end = reader.size if end is None else min(end, reader.size)
        self.pos = start
        self._window = window
        self._next = _FIRST_WINDOW
        self._buf = b""
        self._buf_start = start

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _fill(self, n: int) -> None:
        """Make the buffer cover [pos, pos+n) when those bytes exist."""
        if self._buf_start <= self.pos and self.pos + n <= self._buf_start + len(self._buf):
            return
        want = min(max(n, self._next), self.end - self.pos)
        self._buf = self.reader.read(self.pos, want)
        self._buf_start = self.pos
        self._next = min(self._next * 2, self._window)  # sequential reading: grow the window

    def read(self, n: int) -> bytes:
        """Exactly n bytes or Truncated."""
        i = self.pos - self._buf_start
        if n >= 0 and i >= 0 and i + n <= len(self._buf):  # fast path: already buffered
            self.pos += n
            return self._buf[i : i + n]
        return self._read_slow(n)

    def _read_slow(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise Truncated(f"{n} bytes wanted at offset {self.pos}, {max(self.remaining, 0)} left")
        if n > self._window:
            out = self.reader.read(self.pos, n)
        else:
            self._fill(n)
            i = self.pos - self._buf_start
            out = self._buf[i : i + n]
        if len(out) != n:
            raise Truncated(f"file ends inside a {n}-byte field at offset {self.pos}")
        self.pos += n
        return out

    def peek(self, n: int) -> bytes:
        """Up to n bytes at the position, without moving it."""
        n = min(n, self.remaining)
        self._fill(n)
        i = self.pos - self._buf_start
        return self._buf[i : i + n]

    def skip(self, n: int) -> None:
        if n < 0 or n > self.remaining:
            raise Truncated(f"skip of {n} bytes at offset {self.pos} passes the end ({self.end})")
        self.pos += n
        if self.pos > self._buf_start + len(self._buf):
            self._next = _FIRST_WINDOW  # after a jump, start small again: headers are short

    def read_line(self, limit: int) -> bytes:
        """Bytes up to and without the next b'\\n' (consumed), at most `limit` bytes long."""
        out = bytearray()
        while True:
            chunk = self.peek(min(4096, limit + 1 - len(out)))
            if not chunk:
                raise Truncated(f"file ends inside a text line at offset {self.pos}")
            i = chunk.find(b"\n")
            if i >= 0:
                out += chunk[:i]
                self.pos += i + 1
                return bytes(out)
            out += chunk
            self.pos += len(chunk)
            if len(out) > limit:
                raise DescribeError(f"text line longer than {limit} bytes at offset {self.pos}")

    def u8(self) -> int:
        i = self.pos - self._buf_start
        if 0 <= i < len(self._buf):  # fast path: one buffered byte
            self.pos += 1
            return self._buf[i]
        return self._read_slow(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.read(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.read(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.read(8))[0])
