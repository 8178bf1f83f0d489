"""The host cache's durability order at the end of a put, and its incremental entry tables."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from gitmld.daemon.store.errors import NotDurable
from gitmld.daemon.store.index_db import IndexDB, SegKind, SegmentInfo, new_segment
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.local_cache import HostCache, NewChunk
from gitmld.daemon.store.pack import ENTRY, PackEntry, encode_entries
from gitmld.daemon.store.segments import SegmentFiles, SegmentWriter

from tests.unit.test_store_support import (
    astream,
    config,
    keyfile_env,  # noqa: F401  (autouse fixture)
    noise_bytes,
    open_store,
    read_all,
)

MiB = 1 << 20


def new_cache(root: Path, keys: RepoKeys) -> HostCache:
    cache = HostCache(root, keys, pack_size=16 * MiB, fetch_segment_size=64 * MiB, limit_bytes=1 << 40)
    cache.recover()
    return cache


def chunk(size: int = 1000) -> NewChunk:
    return NewChunk(secrets.token_bytes(32), size, secrets.token_bytes(size))


def record_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes | None]]:
    """Wrap the fsyncs and the LMDB recording of pack chunks: (what, segment id) in call order."""
    calls: list[tuple[str, bytes | None]] = []
    sync, sync_dir, record_packed = SegmentWriter.sync, SegmentFiles.sync_dir, IndexDB.record_packed

    def writer_sync(self: SegmentWriter) -> None:
        sync(self)
        calls.append(("fsync", self.seg_id))

    def files_sync_dir(self: SegmentFiles) -> None:
        sync_dir(self)
        calls.append(("fsync dir", None))

    def db_record_packed(self: IndexDB, seg: SegmentInfo, entries: list[PackEntry], *, queue: bool = False) -> None:
        calls.append(("record", seg.seg_id))
        record_packed(self, seg, entries, queue=queue)

    monkeypatch.setattr(SegmentWriter, "sync", writer_sync)
    monkeypatch.setattr(SegmentFiles, "sync_dir", files_sync_dir)
    monkeypatch.setattr(IndexDB, "record_packed", db_record_packed)
    return calls


def test_record_pending_fsyncs_the_open_pack_before_lmdb_records_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = RepoKeys.generate()
    calls = record_calls(monkeypatch)
    cache = new_cache(tmp_path, keys)
    try:
        first = chunk()
        cache.append_new([first, chunk()])
        pack = cache.open_pack
        assert pack is not None
        cache.record_pending()
        # the file is new: its bytes, then its directory entry, then (only then) LMDB
        assert calls == [("fsync", pack), ("fsync dir", None), ("record", pack)]

        calls.clear()
        cache.append_new([chunk()])
        cache.record_pending()
        assert calls == [("fsync", pack), ("record", pack)]  # the directory entry is durable already

        calls.clear()
        cache.record_pending()  # nothing unrecorded: no fsync, no transaction
        assert calls == []

        again = first._replace(blob=None)  # a put of chunks known already (all dedup hits)
        assert cache.append_new([again]).new_chunks == 0
        cache.record_pending()
        assert calls == []
    finally:
        cache.close()

    # Reopened after a restart, the pack's directory entry may never have been synced (the
    # process that created it may have been killed first): the first record syncs it again.
    calls.clear()
    cache = new_cache(tmp_path, keys)
    try:
        assert cache.open_pack == pack
        cache.append_new([chunk()])
        cache.record_pending()
        assert calls == [("fsync", pack), ("fsync dir", None), ("record", pack)]
    finally:
        cache.close()


def packents(db: IndexDB) -> list[tuple[bytes, bytes]]:
    """The raw (key, value) rows of the packents database."""
    with db.env.begin(db=db.db["packents"]) as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor()]


def entries(n: int) -> list[PackEntry]:
    return [PackEntry(secrets.token_bytes(32), i * 1000, 1000, 4000) for i in range(n)]


def test_many_small_records_write_pieces_that_join_to_the_one_call_table(tmp_path: Path) -> None:
    db = IndexDB(tmp_path / "index.lmdb")
    try:
        many, one = new_segment(b"\x01" * 16, SegKind.PACK), new_segment(b"\x02" * 16, SegKind.PACK)
        all_entries = entries(1000)
        for e in all_entries:  # 1000 small puts into one pack
            db.record_packed(many, [e])
        db.record_packed(one, all_entries)
        assert db.pack_entries(many.seg_id) == db.pack_entries(one.seg_id) == encode_entries(all_entries)

        rows = packents(db)
        # each call wrote its own entries, none rewrote the table: the values stay one entry
        # long and add up to the table once (not 1000 * 1001 / 2 entries)
        assert max(len(v) for k, v in rows if k.startswith(many.seg_id)) == ENTRY.size
        assert sum(len(v) for k, v in rows if k.startswith(many.seg_id)) == len(all_entries) * ENTRY.size
        assert db.index_backlog() == (2, 2 * len(all_entries) * ENTRY.size)

        # sealing (one more piece, queue) and upload: the index segment gets whole tables
        tail = entries(3)
        db.record_packed(many, tail, queue=True)
        db.pack_uploaded(many.seg_id)
        db.pack_uploaded(one.seg_id)
        assert db.unindexed() == {many.seg_id: encode_entries(all_entries + tail),
                                  one.seg_id: encode_entries(all_entries)}

        db.index_written("index/x", [many.seg_id])
        assert db.pack_entries(many.seg_id) == b""
        assert [k[:16] for k, _ in packents(db)] == [one.seg_id]
        db.drop_segment(one.seg_id, forget_remote=True)
        assert packents(db) == []
    finally:
        db.close()


def test_pack_ids_sharing_a_prefix_byte_keep_their_own_pieces(tmp_path: Path) -> None:
    db = IndexDB(tmp_path / "index.lmdb")
    try:
        # neighbours in key order: 0x00..00ff and 0x00..0100 (the first's pieces end in 0xff bytes)
        a = new_segment(b"\x00" * 15 + b"\xff", SegKind.PACK)
        b = new_segment(b"\x00" * 14 + b"\x01\x00", SegKind.PACK)
        ea, eb = entries(5), entries(5)
        for i in range(5):
            db.record_packed(b, [eb[i]])
            db.record_packed(a, [ea[i]])
        assert db.pack_entries(a.seg_id) == encode_entries(ea)
        assert db.pack_entries(b.seg_id) == encode_entries(eb)
        db.index_written("index/y", [a.seg_id])
        assert db.pack_entries(a.seg_id) == b""
        assert db.pack_entries(b.seg_id) == encode_entries(eb)
    finally:
        db.close()


def test_a_schema_1_table_is_read_as_the_first_piece(tmp_path: Path) -> None:
    path = tmp_path / "index.lmdb"
    db = IndexDB(path)
    seg = new_segment(b"\x03" * 16, SegKind.PACK)
    old = entries(4)
    with db.env.begin(write=True) as txn:  # what schema 1 left: the whole table under the bare id
        txn.put(b"schema", b"1", db=db.db["meta"])
        txn.put(seg.seg_id, encode_entries(old), db=db.db["packents"])
        txn.put(seg.seg_id, seg.pack(), db=db.db["segments"])
    db.close()

    db = IndexDB(path)
    try:
        with db.env.begin(db=db.db["meta"]) as txn:
            assert txn.get(b"schema") == b"2"  # an older gitmld now refuses this cache
        assert db.pack_entries(seg.seg_id) == encode_entries(old)
        new = entries(2)
        db.record_packed(seg, new[:1])
        db.record_packed(seg, new[1:])
        assert db.pack_entries(seg.seg_id) == encode_entries(old + new)
        assert db.index_backlog() == (1, 6 * ENTRY.size)
        db.index_written("index/z", [seg.seg_id])
        assert packents(db) == []
    finally:
        db.close()


# -- a segment shorter than its records (a disk that lost written data) ----------------------


async def test_an_open_pack_that_lost_its_tail_is_reported_not_padded(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    data = noise_bytes(300_000, seed=11)
    store = await open_store(cfg, tmp_path / "cache", upload_while_putting=0)
    try:
        oid = (await store.put(astream(data))).oid
        pack = store._cache.open_pack
        assert pack is not None
        path = store._cache.files.path(pack)
    finally:
        await store.close()
    recorded = path.stat().st_size
    os.truncate(path, recorded // 2)  # what a power loss could leave without the fsync rule

    store = await open_store(cfg, tmp_path / "cache", upload_while_putting=0)
    try:
        assert not path.exists()  # forgotten and deleted, never padded back with zeros
        assert pack in store._cache.lost_packs
        with pytest.raises(NotDurable) as err:
            await store.flush([oid])
        assert oid in str(err.value) and "add those files again" in str(err.value)
        assert not await store.has(oid, local_only=True)
        again = (await store.put(astream(data))).oid  # putting the file again repairs it
        assert again == oid
        await store.flush([oid])
    finally:
        await store.close()
    fresh = await open_store(cfg, tmp_path / "other-cache")
    try:
        assert await read_all(fresh, oid) == data  # the remote has every byte
    finally:
        await fresh.close()


async def test_a_short_uploaded_segment_is_read_from_the_remote(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    data = noise_bytes(300_000, seed=12)
    store = await open_store(cfg, tmp_path / "cache")
    try:
        oid = (await store.put(astream(data))).oid
        await store.flush([oid])
        segments = [p for p in store._cache.files.dir.iterdir() if p.stat().st_size]
    finally:
        await store.close()
    assert segments
    for p in segments:
        os.truncate(p, p.stat().st_size // 2)
    store = await open_store(cfg, tmp_path / "cache")
    try:
        assert not store._cache.lost_packs
        assert not any(p.exists() for p in segments)  # forgotten and deleted, not padded
        assert not await store.has(oid, local_only=True)
        assert await read_all(store, oid) == data
    finally:
        await store.close()
