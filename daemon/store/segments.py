"""Segment files of the host cache: append-only files of encoded chunk blobs.

A pack segment becomes a pack object when sealed (trailer appended, fsynced), so uploading
it is a plain file upload. Fetch segments hold blobs fetched from the remote. Everything
here is blocking file I/O: callers run it in a worker thread.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

ID_LEN = 16


class SegmentWriter:
    """Appends to one segment file; `size` is where the next blob goes."""

    def __init__(self, seg_id: bytes, fd: int, size: int) -> None:
        self.seg_id = seg_id
        self._fd = fd
        self.size = size

    def append(self, data: bytes | memoryview) -> int:
        """Write data at the end; return the offset it starts at."""
        offset = self.size
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.size)
            self.size += n
            view = view[n:]
        return offset

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SegmentFiles:
    """The `segments/` directory: one file per segment, named by its 32-hex id."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Segments whose directory entry no sync_dir has covered yet (created or reopened
        # since; a reopened one may come from a process that was killed before syncing).
        # The sealer thread syncs the directory while the I/O thread creates files: a lock.
        self._unsynced: set[bytes] = set()
        self._lock = threading.Lock()

    def path(self, seg_id: bytes) -> Path:
        return self.dir / seg_id.hex()

    def create(self, seg_id: bytes) -> SegmentWriter:
        fd = os.open(self.path(seg_id), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with self._lock:
            self._unsynced.add(seg_id)
        return SegmentWriter(seg_id, fd, 0)

    def reopen(self, seg_id: bytes, size: int) -> SegmentWriter:
        """Continue an open segment after a restart: bytes past `size` (never recorded) go."""
        fd = os.open(self.path(seg_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, size)
        with self._lock:
            self._unsynced.add(seg_id)
        return SegmentWriter(seg_id, fd, size)

    def read_into(self, seg_id: bytes, offset: int, buf: memoryview) -> int:
        """Fill buf from `offset` (fewer bytes if the file is shorter); OSError if missing."""
        fd = os.open(self.path(seg_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            done = 0
            while done < len(buf):
                n = os.preadv(fd, [buf[done:]], offset + done)
                if not n:
                    break
                done += n
            return done
        finally:
            os.close(fd)

    def delete(self, seg_id: bytes) -> None:
        self.path(seg_id).unlink(missing_ok=True)
        with self._lock:
            self._unsynced.discard(seg_id)

    def sync_dir(self) -> None:
        """Make created/removed directory entries durable."""
        with self._lock:
            covered = set(self._unsynced)  # created before the fsync starts: it covers them
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._unsynced -= covered

    def sync_entry(self, seg_id: bytes) -> None:
        """Make the segment's directory entry durable: sync the directory unless a sync since
        the segment was created (or reopened) already did."""
        with self._lock:
            needed = seg_id in self._unsynced
        if needed:
            self.sync_dir()

    def list_ids(self) -> list[bytes]:
        out = []
        for entry in os.scandir(self.dir):
            try:
                seg_id = bytes.fromhex(entry.name)
            except ValueError:
                continue
            if len(seg_id) == ID_LEN:
                out.append(seg_id)
        return out
