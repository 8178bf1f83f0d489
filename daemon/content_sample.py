"""The head and tail of a stream, kept while it passes by, so describers can read a file's headers.

A put streams the file once and never holds it whole; describers need random access to a few
places only: the start (safetensors, GGUF, ONNX, pickle headers) and the end (a zip's central
directory, as in PyTorch checkpoints). Keeping the first HEAD and last TAIL bytes serves both
without a second pass; `reader()` hands them to the describers as a `HeadTailReader`, whose
reads elsewhere are describer errors that the registry turns into a generic description
instead of failing the `git add`.
"""

from __future__ import annotations

from collections import deque

from gitmld.daemon.describe.readers import HeadTailReader

HEAD_BYTES = 8 * 1024 * 1024
TAIL_BYTES = 1024 * 1024


class StreamSample:
    """Collects the head and tail of a stream."""

    def __init__(self, head_bytes: int = HEAD_BYTES, tail_bytes: int = TAIL_BYTES) -> None:
        self._head_limit = head_bytes
        self._tail_limit = tail_bytes
        self._head = bytearray()
        self._tail: deque[bytes] = deque()  # the last pieces (kept by reference, not copied)
        self._tail_bytes = 0
        self.size = 0

    def feed(self, data: bytes) -> None:
        """Take the next piece of the stream."""
        self.size += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        # Pieces are kept whole until the ones after them cover the tail: no per-piece copying
        # (a put streams gigabytes through here).
        self._tail.append(bytes(data))
        self._tail_bytes += len(data)
        while self._tail_bytes - len(self._tail[0]) >= self._tail_limit:
            self._tail_bytes -= len(self._tail.popleft())

    def reader(self) -> HeadTailReader:
        """Random access to what was kept, for the describers."""
        tail = b"".join(self._tail)[-self._tail_limit :] if self._tail else b""
        return HeadTailReader(bytes(self._head), tail, self.size)
