"""The host cache: eviction limits, never losing un-uploaded data, single-flight reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gitmld.daemon.store.errors import CacheBusy

from tests.unit.test_store_support import (
    MiB,
    astream,
    config,
    keyfile_env,  # noqa: F401  (autouse fixture)
    model_bytes,
    noise_bytes,
    open_store,
    read_all,
    record_remotes,
    remote_files,
    stored_in_remote,
    wait_until,
)


def segment_bytes(store_root: Path) -> int:
    return sum(p.stat().st_size for p in (store_root / "segments").iterdir())


async def test_eviction_never_drops_unuploaded_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remotes = record_remotes(monkeypatch)
    data = noise_bytes(8 * MiB, seed=11)
    limit = 2 * MiB
    store = await open_store(config(tmp_path), tmp_path / "cache", cache_limit_bytes=limit)
    try:
        remote = remotes[-1]
        remote.upload_gate = asyncio.Event()  # uploads wait: nothing is durable yet
        r = await store.put(astream(data))
        await store.put(astream(noise_bytes(MiB, seed=12)))  # more writes: eviction gets a chance
        assert store.stats()["cache_bytes"] > limit
        assert segment_bytes(store.root) > 3 * limit  # every pack is still there
        assert await read_all(store, r.oid) == data
        assert remote.ranges == []  # all of it from the host cache

        remote.upload_gate.set()
        await store.flush()
        assert store.stats()["upload_queue"] == 0
        assert store.stats()["cache_bytes"] <= limit
        assert segment_bytes(store.root) <= limit
        assert await read_all(store, r.oid) == data  # evicted chunks come back from the remote
        assert remote.ranges
    finally:
        await store.close()


async def test_eviction_of_fetched_segments_is_lru(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = [noise_bytes(3 * MiB, seed=s) for s in (21, 22, 23)]
    writer = await open_store(cfg, tmp_path / "writer")
    try:
        oids = [(await writer.put(astream(f))).oid for f in files]
        await writer.flush()
    finally:
        await writer.close()
    reader = await open_store(cfg, tmp_path / "reader", cache_limit_bytes=5 * MiB, fetch_segment_size=MiB)
    try:
        for oid, f in zip(oids, files, strict=True):
            assert await read_all(reader, oid) == f
            assert reader.stats()["cache_bytes"] <= 5 * MiB
        # the last file read is the most recently used: it is still complete in the cache
        assert await reader.has(oids[2], local_only=True)
        assert not await reader.has(oids[0], local_only=True)
        gets = reader.stats()["remote_gets"]
        assert await read_all(reader, oids[2]) == files[2]
        assert reader.stats()["remote_gets"] == gets
    finally:
        await reader.close()


async def test_single_flight_for_concurrent_cold_readers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = model_bytes(tmp_path, layers=6)
    cfg = config(tmp_path)
    oid = await stored_in_remote(cfg, tmp_path / "writer", data)

    remotes = record_remotes(monkeypatch)
    reader = await open_store(cfg, tmp_path / "reader", read_ahead=4 * MiB, max_range=MiB)
    try:
        remote = remotes[-1]
        results = await asyncio.gather(*(read_all(reader, oid) for _ in range(8)))
        assert all(r == data for r in results)
        assert [g for g in remote.gets if g.startswith("manifests/")] == [remote.gets[-1]]  # one GET
        # every byte of every pack was fetched at most once
        seen: dict[str, list[tuple[int, int]]] = {}
        for name, offset, length in remote.ranges:
            for start, end in seen.get(name, []):
                assert offset + length <= start or offset >= end, f"{name} [{offset},+{length}) fetched twice"
            seen.setdefault(name, []).append((offset, offset + length))
        stats = reader.stats()
        assert stats["remote_gets"] == len(remote.ranges) + len(remote.gets)
        assert len(remote.gets) == 4  # keys, config, the index segment, one manifest
        pack_bytes = sum(p.stat().st_size for p in remote_files(tmp_path, "data"))
        assert sum(length for _, _, length in remote.ranges) <= pack_bytes  # no pack byte twice
    finally:
        await reader.close()


async def test_concurrent_fetch_of_one_oid_is_single_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = noise_bytes(4 * MiB, seed=31)
    cfg = config(tmp_path)
    oid = await stored_in_remote(cfg, tmp_path / "writer", data)
    remotes = record_remotes(monkeypatch)
    reader = await open_store(cfg, tmp_path / "reader")
    try:
        await asyncio.gather(*(reader.fetch(oid) for _ in range(5)))
        ranges = remotes[-1].ranges
        assert len(ranges) == len(set(ranges)) > 0
        assert await reader.has(oid, local_only=True)
    finally:
        await reader.close()


async def test_background_upload_runs_during_puts(tmp_path: Path) -> None:
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        await store.put(astream(noise_bytes(6 * MiB, seed=41)))
        # sealed packs go up without a flush; poll the queue until the uploader drained it
        await wait_until(lambda: store.stats()["upload_queue"] == 0)
        assert store.stats()["remote_puts"] >= 4
        assert store.stats()["upload_queue_manifests"] == 1  # manifests wait for flush
    finally:
        await store.close()


async def test_one_process_owns_a_host_cache(tmp_path: Path) -> None:
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        with pytest.raises(CacheBusy) as info:
            await open_store(config(tmp_path), tmp_path / "cache")
        assert str(tmp_path / "cache") in str(info.value)
    finally:
        await store.close()
    again = await open_store(config(tmp_path), tmp_path / "cache")
    await again.close()


async def test_fetches_of_neighbouring_files_share_ranged_gets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files put one after another lie side by side in the packs: fetched together (a checkout
    of many small files), the GET that gets a slot takes over its pack's queued neighbours."""
    cfg = config(tmp_path, concurrency=1)
    files = [noise_bytes(150_000, seed=100 + i) for i in range(12)]
    writer = await open_store(cfg, tmp_path / "writer")
    try:
        oids = [(await writer.put(astream(d))).oid for d in files]
        await writer.flush()
        chunks = sum([len(list((await writer._manifest(oid)).chunks())) for oid in oids])
    finally:
        await writer.close()

    remotes = record_remotes(monkeypatch)
    reader = await open_store(cfg, tmp_path / "reader")
    try:
        remote = remotes[-1]
        remote.range_gate = asyncio.Event()  # hold the first GET until every chunk is planned
        fetches = asyncio.gather(*(reader.fetch(oid) for oid in oids))
        r = reader._reader
        # every chunk planned, and every GET task but the held one waiting in the queue
        await wait_until(lambda: len(r._inflight) == chunks
                         and sum(len(q) for q in r._queued.values()) == len(r._tasks) - 1)
        remote.range_gate.set()
        await fetches
        packs = {name for name, _, _ in remote.ranges}
        assert len(remote.ranges) == 1 + len(packs) < len(oids)  # the held GET, then one per pack
        assert all([await reader.has(oid, local_only=True) for oid in oids])
        assert [await read_all(reader, oid) for oid in oids] == files
        assert len(remote.ranges) == 1 + len(packs)  # read from the host cache
    finally:
        await reader.close()
