"""The host-cache tier of one repository: segment files plus their LMDB records.

Ordering rules (FORMAT.md, "Host cache"): bytes are written to a segment before LMDB records
them, a segment is fsynced before LMDB calls it sealed/closed, the open pack is fsynced (and
its directory entry, if new since the last directory sync) before LMDB records its chunks,
and LMDB forgets a segment before its file is deleted. A crash, even a power loss, therefore
leaves orphan bytes (cut off or deleted by `recover`) or consistent records, never a record
of pack bytes that did not reach the disk. (Fetch segments are recorded without an fsync:
their chunks are verified on read and fetched again if damaged.)

Every method here blocks; the store calls them on its single I/O thread, except `read_into`,
which any thread may call. Sealing a full pack (fsync, then its LMDB transaction) runs on a
sealer thread so appending to the next pack goes on meanwhile; `wait_sealed` is the barrier
flush and the end of a put go through, so nothing durable ever names an unsealed pack.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from gitmld.daemon.store.index_db import (
    Fetched,
    IndexDB,
    RemoteLoc,
    SegKind,
    SegmentInfo,
    SegState,
    new_segment,
)
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.pack import PackEntry, build_tail, encode_entries
from gitmld.daemon.store.segments import ID_LEN, SegmentFiles, SegmentWriter

log = logging.getLogger(__name__)


class NewChunk(NamedTuple):
    """A chunk of a put: its blob is None when it was already known before encoding."""

    cid: bytes
    plain_len: int
    blob: bytes | None


class Appended(NamedTuple):
    locs: list[RemoteLoc]  # one per chunk given, in order
    new_chunks: int
    new_plain: int
    new_stored: int


class HostCache:
    def __init__(self, root: Path, keys: RepoKeys, *, pack_size: int, fetch_segment_size: int,
                 limit_bytes: int, on_sealed: Callable[[bytes], None] = lambda pack_id: None) -> None:
        self.keys = keys
        self.on_sealed = on_sealed  # called on the sealer thread once a pack is queued for upload
        self.pack_size = pack_size
        self.fetch_segment_size = fetch_segment_size
        self.limit_bytes = limit_bytes
        self.db = IndexDB(root / "index.lmdb")
        self.files = SegmentFiles(root / "segments")
        self.sizes: dict[bytes, int] = {}  # every segment this cache has, by id
        self.accessed: dict[bytes, float] = {}  # last reads since the last touch() (in memory)
        self.lost_packs: set[bytes] = set()  # never-uploaded packs whose files vanished
        self._pack: SegmentWriter | None = None
        self._pack_info: SegmentInfo | None = None
        self._fetch: SegmentWriter | None = None
        self._fetch_info: SegmentInfo | None = None
        # Chunks appended to the open pack but not yet in LMDB: recorded in one transaction
        # when the pack is sealed or a put finishes (one commit per pack, not per batch).
        self._unrecorded: list[PackEntry] = []
        self._pending: dict[bytes, RemoteLoc] = {}  # also holds chunks of packs being sealed
        self._sealer = ThreadPoolExecutor(1, "gitmld-seal")
        self._sealing: list[Future[bytes]] = []

    # -- startup --------------------------------------------------------------------------

    def recover(self) -> None:
        """Bring files and records back in line after a crash (idempotent)."""
        segs = self.db.segments()
        known = {s.seg_id for s in segs}
        for orphan in set(self.files.list_ids()) - known:
            self.files.delete(orphan)  # created, never recorded
        for s in segs:
            path = self.files.path(s.seg_id)
            actual = path.stat().st_size if path.exists() else None
            if actual is None or actual < s.size:
                # Gone, or shorter than what LMDB recorded (a disk that lost written data, e.g.
                # a power loss before the ordering rules fsynced it): never pad it with zeros.
                self._forget_damaged(s, path, "vanished" if actual is None else
                                     f"is {actual} bytes, {s.size} were recorded")
                continue
            if s.state == SegState.OPEN:
                writer = self.files.reopen(s.seg_id, s.size)  # cut bytes never recorded
                if s.kind == SegKind.PACK and self._pack is None:
                    self._pack, self._pack_info = writer, s  # appending goes on where it stopped
                    continue
                if s.kind == SegKind.PACK:
                    self._seal(writer, s, [])  # a second open pack (cannot happen today): finish it
                    self.sizes[s.seg_id] = s.size
                    continue
                else:
                    writer.sync()
                    writer.close()
                    s.state = SegState.CLOSED
                    self.db.put_segment(s)
            elif path.stat().st_size > s.size:
                self.files.reopen(s.seg_id, s.size).close()
            self.sizes[s.seg_id] = s.size
        if self._pack_info is not None:
            self.sizes[self._pack_info.seg_id] = self._pack_info.size

    def _forget_damaged(self, s: SegmentInfo, path: Path, what: str) -> None:
        """A segment whose recorded bytes are not all on disk. An uploaded pack or a fetch
        segment is only a copy: forget it here and the chunks come from the remote again. A
        pack not yet uploaded held the only copy: its files cannot be flushed until they are
        put again (flush names them)."""
        unuploaded = s.kind == SegKind.PACK and s.state in (SegState.OPEN, SegState.SEALED)
        if unuploaded:
            log.error("pack segment %s %s before upload; files that need it cannot be flushed"
                      " (put them again)", path, what)
            self.lost_packs.add(s.seg_id)
        else:
            log.warning("host-cache segment %s %s; its chunks will be read from the remote", path, what)
        self.db.drop_segment(s.seg_id, forget_remote=unuploaded)
        self.files.delete(s.seg_id)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def open_pack(self) -> bytes | None:
        return self._pack_info.seg_id if self._pack_info is not None else None

    # -- writing new chunks ---------------------------------------------------------------

    def append_new(self, chunks: list[NewChunk]) -> Appended:
        """Append the chunks not yet known to the open pack; report every chunk's bucket
        location, in order, and the ids of packs sealed on the way."""
        locs: list[RemoteLoc] = []
        new_chunks = new_plain = new_stored = 0
        known = self.db.remote_locs(c.cid for c in chunks)  # one read transaction for the batch
        for (cid, plain_len, blob), stored in zip(chunks, known, strict=True):
            loc = self._pending.get(cid) or stored
            if loc is None:
                if blob is None:
                    raise RuntimeError(f"chunk {cid.hex()} was known when encoded and is gone now")
                if self._pack is not None and self._pack.size and self._pack.size + len(blob) > self.pack_size:
                    self._sealing.append(self._sealer.submit(self._seal_full_pack()))
                pack = self._pack or self._new_pack()
                offset = pack.append(blob)
                self._unrecorded.append(PackEntry(cid, offset, len(blob), plain_len))
                loc = self._pending[cid] = RemoteLoc(pack.seg_id, offset, len(blob), plain_len)
                new_chunks += 1
                new_plain += plain_len
                new_stored += len(blob)
            locs.append(loc)
        if self._pack is not None:
            self.sizes[self._pack.seg_id] = self._pack.size
        self._sealing = [f for f in self._sealing if not f.done() or f.exception() is not None]
        return Appended(locs, new_chunks, new_plain, new_stored)

    def record_pending(self) -> None:
        """Record every chunk appended so far: finish the seals in progress, then make the
        open pack's bytes durable and record its chunks (a put calls this before its
        manifest is stored: a manifest only ever names recorded chunks, and a recorded
        chunk's bytes are on disk). Nothing unrecorded: no fsync, no transaction."""
        self.wait_sealed()
        if self._unrecorded and self._pack is not None and self._pack_info is not None:
            self._pack.sync()  # before LMDB names the bytes: a power loss must not lose them
            self.files.sync_entry(self._pack.seg_id)  # a new file: its directory entry too
            self._pack_info.size = self._pack.size
            self.sizes[self._pack_info.seg_id] = self._pack.size
            self.db.record_packed(self._pack_info, self._unrecorded)
        self._unrecorded = []
        self._pending.clear()

    def wait_sealed(self) -> None:
        """Barrier: every pack handed to the sealer is fsynced, recorded and queued (or its
        error is raised here)."""
        sealing, self._sealing = self._sealing, []
        for fut in sealing:
            fut.result()

    def seal_open_pack(self, only: bytes | None = None) -> bytes | None:
        """Seal the open pack now (if it holds anything, and is `only` when given), after
        the seals in progress: on return every pack with data is sealed and queued."""
        self.wait_sealed()
        if self._pack is None or self._pack_info is None or self._pack.size == 0:
            return None
        if only is not None and self._pack_info.seg_id != only:
            return None
        return self._sealer.submit(self._seal_full_pack()).result()

    def _new_pack(self) -> SegmentWriter:
        seg_id = secrets.token_bytes(ID_LEN)
        self._pack = self.files.create(seg_id)
        self._pack_info = new_segment(seg_id, SegKind.PACK)
        self.sizes[seg_id] = 0
        return self._pack

    def _seal_full_pack(self) -> Callable[[], bytes]:
        """Detach the open pack (appends go to a new one) and return the job that seals it."""
        writer, info = self._pack, self._pack_info
        assert writer is not None and info is not None
        unrecorded, self._unrecorded = self._unrecorded, []
        self._pack = self._pack_info = None

        def job() -> bytes:
            pack_id = self._seal(writer, info, unrecorded)
            for e in unrecorded:  # now in LMDB: the in-memory entries can go
                loc = self._pending.get(e.cid)
                if loc is not None and loc.pack_id == pack_id:
                    self._pending.pop(e.cid, None)
            self.on_sealed(pack_id)
            return pack_id

        return job

    def _seal(self, writer: SegmentWriter, info: SegmentInfo, unrecorded: list[PackEntry]) -> bytes:
        """Trailer + footer, fsync, then (only then) one transaction that records the chunks
        not yet recorded and marks the pack sealed and queued."""
        entries = self.db.pack_entries(info.seg_id) + encode_entries(unrecorded)
        writer.append(build_tail(self.keys, info.seg_id, entries))
        writer.sync()
        writer.close()
        self.files.sync_dir()
        info.size, info.state = writer.size, SegState.SEALED
        self.sizes[info.seg_id] = info.size
        self.db.record_packed(info, unrecorded, queue=True)
        return info.seg_id

    def pack_uploaded(self, pack_id: bytes) -> None:
        self.db.pack_uploaded(pack_id)
        self.evict()

    # -- chunks fetched from the remote ---------------------------------------------------------

    def append_fetched(self, items: Iterable[tuple[bytes, bytes | memoryview, RemoteLoc]]) -> None:
        """Append (cid, blob, bucket location) of fetched chunks not already cached."""
        todo = list(items)
        present = self.db.local_locs(cid for cid, _, _ in todo)
        batch: list[Fetched] = []
        for (cid, blob, loc), here in zip(todo, present, strict=True):
            if here is not None and here.seg_id in self.sizes:
                continue
            if self._fetch is not None and self._fetch.size and (
                    self._fetch.size + len(blob) > self.fetch_segment_size):
                self._record_fetched(batch)
                batch = []
                self._close_fetch()
            writer = self._fetch or self._new_fetch()
            batch.append(Fetched(cid, writer.append(blob), loc))
        self._record_fetched(batch)
        self.evict()

    def _new_fetch(self) -> SegmentWriter:
        seg_id = secrets.token_bytes(ID_LEN)
        self._fetch = self.files.create(seg_id)
        self._fetch_info = new_segment(seg_id, SegKind.FETCH)
        self.sizes[seg_id] = 0
        return self._fetch

    def _record_fetched(self, items: list[Fetched]) -> None:
        if items and self._fetch is not None and self._fetch_info is not None:
            self._fetch_info.size = self._fetch.size
            self.sizes[self._fetch_info.seg_id] = self._fetch.size
            self.db.record_fetched(self._fetch_info, items)

    def _close_fetch(self) -> None:
        writer, info = self._fetch, self._fetch_info
        if writer is None or info is None:
            return
        writer.sync()
        writer.close()
        info.state = SegState.CLOSED
        self.db.put_segment(info)
        self._fetch = self._fetch_info = None

    # -- reading and forgetting -------------------------------------------------------------

    def read_into(self, seg_id: bytes, offset: int, buf: memoryview) -> int:
        """Raw bytes of a segment into the caller's buffer (any thread; a decode thread reuses
        one for every group); OSError if the segment file is gone."""
        self.accessed[seg_id] = time.time()
        return self.files.read_into(seg_id, offset, buf)

    def drop_local(self, cid: bytes, seg_id: bytes) -> None:
        self.db.drop_local(cid, seg_id)

    def evict(self) -> list[bytes]:
        """Drop least recently used segments until under the limit; never one that is open
        or holds data not yet uploaded."""
        if self.total_bytes <= self.limit_bytes:
            return []
        self.touch()
        candidates = sorted((s for s in self.db.segments() if s.evictable), key=lambda s: s.last_access)
        evicted = []
        total = self.total_bytes
        for s in candidates:
            if total <= self.limit_bytes:
                break
            self.db.drop_segment(s.seg_id)  # records first: a crash leaves an orphan file, not a dangling record
            self.files.delete(s.seg_id)
            total -= self.sizes.pop(s.seg_id, 0)
            evicted.append(s.seg_id)
        return evicted

    def touch(self) -> None:
        if self.accessed:
            accessed, self.accessed = self.accessed, {}
            self.db.touch(accessed)

    def close(self) -> None:
        """Persist what is in memory; the open pack stays open (resumed on the next start)."""
        try:
            self.record_pending()
        finally:
            self._sealer.shutdown()
        if self._pack is not None:
            self._pack.sync()
            self._pack.close()
        self._close_fetch()
        self.touch()
        self.db.sync()
        self.db.close()
