"""The host index: one LMDB environment per repository in the host cache (schema in FORMAT.md).

Named databases (keys and values are fixed-layout structs, little-endian but for the
packents sequence number):

| db | key | value |
|---|---|---|
| meta | b"schema", b"repo_id" | ascii |
| chunks | chunk id | pack_id[16] offset:u64 stored_len:u32 plain_len:u32 -- where it is (or will be) in the bucket |
| local | chunk id | seg_id[16] offset:u64 length:u32 -- where it is in this cache |
| segchunks | seg_id + chunk id | empty -- which chunks a segment holds (for eviction) |
| segments | seg_id | kind:u8 state:u8 size:u64 last_access:f64 |
| packents | pack id + seq:u32 BE | a piece of the pack's entry table, until an uploaded index segment covers it |
| manifests | oid (32 raw bytes) | flags:u8 (1 = uploaded) + manifest plaintext |
| queue | b"p"+pack id / b"m"+oid | empty -- the persistent upload queue |
| seen_index | index object name | empty -- remote index segments already merged into `chunks` |

A pack's entry table is its `packents` pieces joined in key order: each record_packed call
adds one piece (seq = the last one's + 1) and rewrites none, so recording n chunks in many
small calls writes O(n) bytes, not O(n^2). Schema 1 kept the whole table under the bare pack
id; that key sorts before the pack's pieces, so it is read as the first piece.

Reads may run on any thread. Every write method runs on the store's single I/O thread
(LMDB write transactions belong to the thread that began them); each is one transaction,
so a crash leaves the records before or after it, never half.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
from gitmld.daemon.store.errors import UnsupportedFormat
from gitmld.daemon.store.pack import ENTRY, ID_LEN, PackEntry, encode_entries

SCHEMA_VERSION = 2  # 2: packents split into pieces (a schema-1 index is read as is and marked 2)
MAP_SIZE = 1 << 40  # sparse: the file grows with the data, the map only reserves addresses
REMOTE_LOC = struct.Struct("<16sQII")
LOCAL_LOC = struct.Struct("<16sQI")
SEG = struct.Struct("<BBQd")
PIECE_SEQ = struct.Struct(">I")  # packents key suffix: big-endian, so pieces sort in write order
_DBS = ("meta", "chunks", "local", "segchunks", "segments", "packents", "manifests", "queue", "seen_index")


class SegKind(enum.IntEnum):
    PACK = 1  # locally written chunks; becomes a pack object
    FETCH = 2  # chunks fetched from the remote


class SegState(enum.IntEnum):
    OPEN = 0  # being appended to
    SEALED = 1  # pack: trailer written, fsynced, queued for upload
    UPLOADED = 2  # pack: durable in the bucket (evictable)
    CLOSED = 3  # fetch: full, fsynced (evictable)


@dataclass(slots=True)
class SegmentInfo:
    seg_id: bytes
    kind: SegKind
    state: SegState
    size: int
    last_access: float

    def pack(self) -> bytes:
        return SEG.pack(self.kind, self.state, self.size, self.last_access)

    @property
    def evictable(self) -> bool:
        return self.state in (SegState.UPLOADED, SegState.CLOSED)


class RemoteLoc(NamedTuple):
    pack_id: bytes
    offset: int
    stored_len: int
    plain_len: int


class LocalLoc(NamedTuple):
    seg_id: bytes
    offset: int
    length: int


class Fetched(NamedTuple):
    """A chunk fetched from the remote and appended to a fetch segment."""

    cid: bytes
    seg_offset: int
    remote: RemoteLoc


class IndexDB:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        # sync on, metasync off: a commit's data pages are fsynced, so a crash may undo the
        # last transaction but never corrupts the database (LMDB's MDB_NOMETASYNC contract).
        self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=len(_DBS), subdir=True,
                             sync=True, metasync=False, readahead=False, max_readers=512)
        self.db: dict[str, Any] = {name: self.env.open_db(name.encode()) for name in _DBS}
        with self.env.begin(write=True) as txn:
            schema = txn.get(b"schema", db=self.db["meta"])
            if schema is not None and int(schema) > SCHEMA_VERSION:
                raise UnsupportedFormat(
                    f"host index {path} has schema {int(schema)}, newer than this gitmld ({SCHEMA_VERSION});"
                    " upgrade gitmld or use another GITMLD_CACHE_DIR")
            if schema is None or int(schema) < SCHEMA_VERSION:
                # schema 1 data is read as is (see packents); marking it 2 stops an older
                # gitmld from reading a piecewise table as a missing one
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self.db["meta"])

    def close(self) -> None:
        self.env.close()

    def sync(self) -> None:
        self.env.sync(True)

    # -- reads ----------------------------------------------------------------------------

    def remote_loc(self, cid: bytes) -> RemoteLoc | None:
        with self.env.begin(db=self.db["chunks"]) as txn:
            raw = txn.get(cid)
        return RemoteLoc(*REMOTE_LOC.unpack(raw)) if raw is not None else None

    def remote_locs(self, cids: Iterable[bytes]) -> list[RemoteLoc | None]:
        with self.env.begin(db=self.db["chunks"]) as txn:
            raws = [txn.get(c) for c in cids]
        return [RemoteLoc(*REMOTE_LOC.unpack(r)) if r is not None else None for r in raws]

    def known(self, cids: Iterable[bytes]) -> set[bytes]:
        """The subset of cids with a bucket location (durable or queued): dedup hits."""
        with self.env.begin(db=self.db["chunks"]) as txn:
            return {c for c in cids if txn.get(c) is not None}

    def local_locs(self, cids: Iterable[bytes]) -> list[LocalLoc | None]:
        with self.env.begin() as txn:
            out: list[LocalLoc | None] = []
            for c in cids:
                raw = txn.get(c, db=self.db["local"])
                out.append(LocalLoc(*LOCAL_LOC.unpack(raw)) if raw is not None else None)
            return out

    def segment(self, seg_id: bytes) -> SegmentInfo | None:
        with self.env.begin(db=self.db["segments"]) as txn:
            raw = txn.get(seg_id)
        return _seg(seg_id, raw) if raw is not None else None

    def segments(self) -> list[SegmentInfo]:
        with self.env.begin(db=self.db["segments"]) as txn:
            return [_seg(bytes(k), v) for k, v in txn.cursor()]

    def manifest(self, oid_raw: bytes) -> tuple[bool, bytes] | None:
        """(uploaded, plaintext) of a manifest this host knows."""
        with self.env.begin(db=self.db["manifests"]) as txn:
            raw = txn.get(oid_raw)
        return (bool(raw[0] & 1), bytes(raw[1:])) if raw is not None else None

    def queue(self) -> tuple[list[bytes], list[bytes]]:
        """(pack ids, manifest oids) waiting for upload."""
        packs: list[bytes] = []
        manifests: list[bytes] = []
        with self.env.begin(db=self.db["queue"]) as txn:
            for key in txn.cursor().iternext(values=False):
                (packs if key[:1] == b"p" else manifests).append(bytes(key[1:]))
        return packs, manifests

    def is_queued(self, pack_id: bytes) -> bool:
        with self.env.begin(db=self.db["queue"]) as txn:
            return txn.get(b"p" + pack_id) is not None

    def unindexed(self) -> dict[bytes, bytes]:
        """Pack id -> entry table of uploaded packs no uploaded index segment covers yet."""
        out = {}
        with self.env.begin() as txn:
            for pid, table in _tables(txn.cursor(db=self.db["packents"])):
                raw = txn.get(pid, db=self.db["segments"])
                if raw is None or _seg(pid, raw).state == SegState.UPLOADED:
                    out[pid] = table
        return out

    def index_backlog(self) -> tuple[int, int]:
        """(packs, entry table bytes) that no index segment covers yet, uploaded or not: what
        bounds the next segment's size, for flush progress."""
        packs = table_bytes = 0
        last = b""
        with self.env.begin(db=self.db["packents"]) as txn:
            for k, v in txn.cursor():
                if k[:ID_LEN] != last:
                    packs += 1
                    last = bytes(k[:ID_LEN])
                table_bytes += len(v)
        return packs, table_bytes

    def seen_index(self) -> set[str]:
        with self.env.begin(db=self.db["seen_index"]) as txn:
            return {bytes(k).decode() for k in txn.cursor().iternext(values=False)}

    def segment_chunks(self, seg_id: bytes) -> list[bytes]:
        with self.env.begin(db=self.db["segchunks"]) as txn:
            cur = txn.cursor()
            out = []
            if cur.set_range(seg_id):
                for key in cur.iternext(values=False):
                    if key[:ID_LEN] != seg_id:
                        break
                    out.append(bytes(key[ID_LEN:]))
            return out

    # -- writes (I/O thread) ------------------------------------------------------------------

    def put_segment(self, info: SegmentInfo) -> None:
        with self.env.begin(write=True, db=self.db["segments"]) as txn:
            txn.put(info.seg_id, info.pack())

    def record_packed(self, seg: SegmentInfo, entries: list[PackEntry], *, queue: bool = False) -> None:
        """Chunks appended to pack segment `seg`: their bucket and local locations, and the
        next piece of the pack's entry table (its future trailer and index section; the
        pieces before it are not rewritten). queue: the pack is sealed (fsynced) now; queue
        its upload in the same transaction.

        The caller has made the entries' bytes durable first (FORMAT.md, "Host cache")."""
        sid = seg.seg_id
        with self.env.begin(write=True) as txn:
            if queue:
                txn.put(b"p" + sid, b"", db=self.db["queue"])
            for e in entries:
                txn.put(e.cid, REMOTE_LOC.pack(sid, e.offset, e.stored_len, e.plain_len), db=self.db["chunks"])
                txn.put(e.cid, LOCAL_LOC.pack(sid, e.offset, e.stored_len), db=self.db["local"])
                txn.put(sid + e.cid, b"", db=self.db["segchunks"])
            if entries:
                txn.put(_next_piece(txn.cursor(db=self.db["packents"]), sid), encode_entries(entries),
                        db=self.db["packents"])
            txn.put(sid, seg.pack(), db=self.db["segments"])

    def pack_entries(self, pack_id: bytes) -> bytes:
        """The pack's entry table recorded so far (its pieces joined in order)."""
        with self.env.begin(db=self.db["packents"]) as txn:
            return b"".join(v for _, v in _pieces(txn.cursor(), pack_id))

    def record_fetched(self, seg: SegmentInfo, items: list[Fetched]) -> None:
        sid = seg.seg_id
        with self.env.begin(write=True) as txn:
            for cid, seg_offset, loc in items:
                txn.put(cid, REMOTE_LOC.pack(*loc), db=self.db["chunks"])
                txn.put(cid, LOCAL_LOC.pack(sid, seg_offset, loc.stored_len), db=self.db["local"])
                txn.put(sid + cid, b"", db=self.db["segchunks"])
            txn.put(sid, seg.pack(), db=self.db["segments"])

    def pack_uploaded(self, pack_id: bytes) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(pack_id, db=self.db["segments"])
            if raw is not None:
                info = _seg(pack_id, raw)
                info.state = SegState.UPLOADED
                txn.put(pack_id, info.pack(), db=self.db["segments"])
            txn.delete(b"p" + pack_id, db=self.db["queue"])

    def index_written(self, name: str, pack_ids: Iterable[bytes]) -> None:
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self.db["packents"])
            for pid in pack_ids:
                _drop_pieces(cur, pid)
            txn.put(name.encode(), b"", db=self.db["seen_index"])

    def merge_index(self, name: str, sections: Iterable[tuple[bytes, memoryview]]) -> int:
        """Add a remote index segment's entries to `chunks`; returns how many."""
        n = 0
        with self.env.begin(write=True) as txn:
            for pack_id, table in sections:
                for cid, offset, stored_len, plain_len in ENTRY.iter_unpack(table):
                    txn.put(cid, REMOTE_LOC.pack(pack_id, offset, stored_len, plain_len), db=self.db["chunks"])
                    n += 1
            txn.put(name.encode(), b"", db=self.db["seen_index"])
        return n

    def put_manifest(self, oid_raw: bytes, plain: bytes, *, uploaded: bool) -> None:
        """Store a manifest; a not-yet-uploaded one joins the upload queue."""
        with self.env.begin(write=True) as txn:
            old = txn.get(oid_raw, db=self.db["manifests"])
            if old is not None and old[0] & 1:
                return  # already durable in the bucket
            txn.put(oid_raw, bytes([1 if uploaded else 0]) + plain, db=self.db["manifests"])
            if uploaded:
                txn.delete(b"m" + oid_raw, db=self.db["queue"])
            else:
                txn.put(b"m" + oid_raw, b"", db=self.db["queue"])

    def manifest_uploaded(self, oid_raw: bytes) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(oid_raw, db=self.db["manifests"])
            if raw is not None:
                txn.put(oid_raw, b"\x01" + bytes(raw[1:]), db=self.db["manifests"])
            txn.delete(b"m" + oid_raw, db=self.db["queue"])

    def drop_local(self, cid: bytes, seg_id: bytes) -> None:
        """Forget a cached copy (it failed verification or its file is gone)."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(cid, db=self.db["local"])
            if raw is not None and raw[:16] == seg_id:
                txn.delete(cid, db=self.db["local"])
            txn.delete(seg_id + cid, db=self.db["segchunks"])

    def drop_segment(self, seg_id: bytes, *, forget_remote: bool = False) -> int:
        """Evict: drop the segment and every local location in it. With forget_remote (a
        pack that was never uploaded and whose file is lost) also drop the bucket
        locations that pointed into it and its queue entry. Returns chunks dropped."""
        chunks = self.segment_chunks(seg_id)
        with self.env.begin(write=True) as txn:
            for cid in chunks:
                raw = txn.get(cid, db=self.db["local"])
                if raw is not None and raw[:ID_LEN] == seg_id:
                    txn.delete(cid, db=self.db["local"])
                if forget_remote:
                    rraw = txn.get(cid, db=self.db["chunks"])
                    if rraw is not None and rraw[:ID_LEN] == seg_id:
                        txn.delete(cid, db=self.db["chunks"])
                txn.delete(seg_id + cid, db=self.db["segchunks"])
            txn.delete(seg_id, db=self.db["segments"])
            if forget_remote:
                _drop_pieces(txn.cursor(db=self.db["packents"]), seg_id)
                txn.delete(b"p" + seg_id, db=self.db["queue"])
        return len(chunks)

    def touch(self, accessed: dict[bytes, float]) -> None:
        """Persist last-access times (kept in memory between calls: reads write nothing)."""
        with self.env.begin(write=True, db=self.db["segments"]) as txn:
            for sid, when in accessed.items():
                raw = txn.get(sid)
                if raw is not None:
                    info = _seg(sid, raw)
                    info.last_access = max(info.last_access, when)
                    txn.put(sid, info.pack())


def _pieces(cur: Any, pack_id: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of the pack's entry-table pieces, in order: a schema-1 whole table under
    the bare pack id (it sorts first), then pack id + seq pieces."""
    if cur.set_range(pack_id):
        for k, v in cur:
            if k[:ID_LEN] != pack_id:
                break
            yield k, v


def _tables(cur: Any) -> Iterator[tuple[bytes, bytes]]:
    """(pack id, whole entry table) of every pack in packents, one pass over the cursor."""
    pid = b""
    parts: list[bytes] = []
    for k, v in cur:
        if k[:ID_LEN] != pid:
            if parts:
                yield pid, b"".join(parts)
            pid, parts = bytes(k[:ID_LEN]), []
        parts.append(v)
    if parts:
        yield pid, b"".join(parts)


def _next_piece(cur: Any, pack_id: bytes) -> bytes:
    """The packents key for the pack's next piece: one past its last one (the key space of
    one pack lies below pack id + 0xff * 5, so the key before that is its last, if any)."""
    found = cur.prev() if cur.set_range(pack_id + b"\xff" * (PIECE_SEQ.size + 1)) else cur.last()
    key = cur.key() if found else b""
    if key[:ID_LEN] == pack_id and len(key) == ID_LEN + PIECE_SEQ.size:
        return pack_id + PIECE_SEQ.pack(PIECE_SEQ.unpack(key[ID_LEN:])[0] + 1)
    return pack_id + PIECE_SEQ.pack(0)  # the first piece (after a schema-1 table, if any)


def _drop_pieces(cur: Any, pack_id: bytes) -> None:
    if cur.set_range(pack_id):
        while cur.key()[:ID_LEN] == pack_id and cur.delete():
            pass


def _seg(seg_id: bytes, raw: bytes) -> SegmentInfo:
    kind, state, size, last = SEG.unpack(raw)
    return SegmentInfo(seg_id, SegKind(kind), SegState(state), size, last)


def new_segment(seg_id: bytes, kind: SegKind) -> SegmentInfo:
    return SegmentInfo(seg_id, kind, SegState.OPEN, 0, time.time())
