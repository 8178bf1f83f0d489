"""Where a model's bytes come from: a stored object (ranged reads through the daemon) or a
local file, behind one small interface, with the bytes each one read counted.

Each stored source has its own daemon connection, opened on first use: a connection carries
one request at a time, and diff and average read two tensors side by side.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

import blake3
from gitmld.client.daemon_client import DaemonClient

READ_SIZE = 1 << 20


class Source(Protocol):
    size: int
    label: str  # for messages: "HEAD:model.safetensors"
    bytes_read: int

    def read(self, offset: int, length: int) -> bytes: ...

    def stream(self, offset: int, length: int) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class StoredSource:
    """An object in the store, read by ranged `get`s; nothing is read until asked for."""

    def __init__(self, connect: Callable[[], DaemonClient], remote: dict[str, Any], oid: str, size: int,
                 path: str, label: str) -> None:
        self._connect = connect
        self._client: DaemonClient | None = None
        self.remote = remote
        self.oid = oid
        self.size = size
        self.path = path
        self.label = label
        self.bytes_read = 0

    def stream(self, offset: int, length: int) -> Iterator[bytes]:
        if length == 0:
            return
        if self._client is None or not self._client.connected:
            self._client = self._connect()
        for piece in self._client.get(self.remote, self.oid, self.size, self.path, offset=offset, length=length):
            self.bytes_read += len(piece)
            yield piece

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(self.stream(offset, length))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class FileSource:
    """A local file (the worktree, or a blob Git stores as plain content), read with pread."""

    def __init__(self, file: IO[bytes], label: str) -> None:
        self._file = file
        self.size = os.fstat(file.fileno()).st_size
        self.label = label
        self.bytes_read = 0

    def stream(self, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            data = os.pread(self._file.fileno(), min(READ_SIZE, end - offset), offset)
            if not data:
                raise OSError(f"{self.label} shrank while it was being read (at byte {offset})")
            self.bytes_read += len(data)
            offset += len(data)
            yield data

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(self.stream(offset, length))

    def close(self) -> None:
        self._file.close()


def rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes in blocks of exactly `size` (the last may be shorter): two streams of
    equal length cut this way line up block by block."""
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def prefetched(blocks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """The same blocks, read by a thread up to `depth` blocks ahead: waiting for the daemon
    (socket reads release the GIL) overlaps with the caller's numpy work. Stops the thread
    when the caller stops early; the reader's exception is raised in the caller."""
    out: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[bytes | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for block in blocks:
                if not put((block, None)):
                    return
            put((None, None))
        except BaseException as exc:
            put((None, exc))

    thread = threading.Thread(target=run, name="gitmld-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            block, exc = out.get()
            if exc is not None:
                raise exc
            if block is None:
                return
            yield block
    finally:
        stop.set()
        thread.join()


def digest(pieces: Iterable[bytes], hex_digits: int = 16) -> str:
    """What the chunker writes on a pointer's tensor line: unkeyed BLAKE3 of the tensor's
    bytes, its first bytes in hex (daemon/store/chunker.py, TensorInfo.digest)."""
    hasher = blake3.blake3()
    for piece in pieces:
        hasher.update(piece)
    return str(hasher.hexdigest(length=hex_digits // 2))
