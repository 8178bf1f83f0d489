"""The head and tail of a stream, kept while it passes by, so describers can read a file's headers.

A put streams the file once and never holds it whole; describers need random access to a few
places only: the start (safetensors, GGUF, ONNX, pickle headers) and the end (a zip's central
directory, as in PyTorch checkpoints). Keeping the first HEAD and last TAIL bytes serves both
without a second pass; `reader()` hands them to the describers as a `HeadTailReader`, whose
reads elsewhere are describer errors that the registry turns into a generic description
instead of failing the `git add`.
"""

from __future__ import annotations

from gitmld.daemon.describe.readers import HeadTailReader

HEAD_BYTES = 8 * 1024 * 1024
TAIL_BYTES = 1024 * 1024


class StreamSample:
    """Collects the head and tail of a stream."""

    def __init__(self, head_bytes: int = HEAD_BYTES, tail_bytes: int = TAIL_BYTES) -> None:
        self._head_limit = head_bytes
        self._tail_limit = tail_bytes
        self._head = bytearray()
        self._tail = bytearray()
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
        if len(data) >= self._tail_limit:
            self._tail = bytearray(data[-self._tail_limit :])
        else:
            self._tail += data
            excess = len(self._tail) - self._tail_limit
            if excess > 0:
                del self._tail[:excess]

    def reader(self) -> HeadTailReader:
        """Random access to what was kept, for the describers."""
        return HeadTailReader(bytes(self._head), bytes(self._tail), self.size)
