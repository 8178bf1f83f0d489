"""The head and tail of a stream, kept while it passes by, so describers can read a file's headers.

A put streams the file once and never holds it whole; describers need random access to a few
places only: the start (safetensors, GGUF, ONNX, pickle headers) and the end (a zip's central
directory, as in PyTorch checkpoints). Keeping the first HEAD and last TAIL bytes serves both
without a second pass. A read outside them is a describer error, which the registry turns
into a generic description instead of failing the `git add`.
"""

from __future__ import annotations

from gitmld.daemon.describe.base import DescribeError

HEAD_BYTES = 8 * 1024 * 1024
TAIL_BYTES = 1024 * 1024


class OutsideSample(DescribeError):
    """A describer asked for bytes in the middle of a file, which were not kept."""


class StreamSample:
    """Collects the head and tail of a stream; then serves `read(offset, length)` from them."""

    def __init__(self, head_bytes: int = HEAD_BYTES, tail_bytes: int = TAIL_BYTES) -> None:
        self._head_limit = head_bytes
        self._tail_limit = tail_bytes
        self._head = bytearray()
        self._tail = bytearray()
        self.size = 0
        self.bytes_read = 0

    def feed(self, data: bytes) -> None:
        """Take the next piece of the stream."""
        self.size += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        if len(data) >= self._tail_limit:
            self._tail = bytearray(data[-self._tail_limit :])
        else:
            self._tail += data
            excess = len(self._tail) - self._tail_limit
            if excess > 0:
                del self._tail[:excess]

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) clipped to the file, from the head or the tail."""
        if offset < 0 or length < 0:
            raise OutsideSample(f"negative read offset={offset} length={length}")
        end = min(offset + length, self.size)
        if end <= offset:
            return b""
        head_len = len(self._head)
        tail_start = self.size - len(self._tail)
        if end <= head_len:
            out = bytes(self._head[offset:end])
        elif offset >= tail_start:
            out = bytes(self._tail[offset - tail_start : end - tail_start])
        elif tail_start <= head_len:  # head and tail touch: the whole file is here
            joined = self._head + self._tail[head_len - tail_start :]
            out = bytes(joined[offset:end])
        else:
            raise OutsideSample(
                f"bytes {offset}..{end} of a {self.size}-byte file are outside the kept head "
                f"({head_len} bytes) and tail ({len(self._tail)} bytes)"
            )
        self.bytes_read += len(out)
        return out
