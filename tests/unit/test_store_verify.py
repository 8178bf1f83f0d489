"""Nothing is trusted because of where it came from: corrupt remote objects are errors that
name the object, corrupt cache entries are dropped and fetched again."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitmld.daemon.store.errors import CorruptObject
from gitmld.daemon.store.manifest import remote_name

from tests.unit.test_store_support import (
    astream,
    config,
    keyfile_env,  # noqa: F401  (autouse fixture)
    model_bytes,
    open_store,
    read_all,
    remote_files,
    stored_in_remote,
)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


async def put_and_flush(tmp_path: Path) -> tuple[str, bytes]:
    data = model_bytes(tmp_path)
    oid = await stored_in_remote(config(tmp_path), tmp_path / "writer", data)
    return oid, data


async def test_corrupt_pack_in_the_remote_names_the_pack(tmp_path: Path) -> None:
    oid, _ = await put_and_flush(tmp_path)
    pack = remote_files(tmp_path, "data")[0]
    flip(pack, 1000)  # inside the first chunk blob
    reader = await open_store(config(tmp_path), tmp_path / "reader")
    try:
        with pytest.raises(CorruptObject) as info:
            await read_all(reader, oid)
        name = f"data/{pack.parent.name}/{pack.name}"
        assert info.value.object == name
        assert name in str(info.value) and "does not verify" in str(info.value)
        assert info.value.code == "corrupt"
        with pytest.raises(CorruptObject):
            await reader.fetch(oid)
        assert not await reader.has(oid, local_only=True)
    finally:
        await reader.close()


async def test_corrupt_manifest_in_the_remote(tmp_path: Path) -> None:
    oid, _ = await put_and_flush(tmp_path)
    manifest = remote_files(tmp_path, "manifests")[0]
    flip(manifest, 20)
    reader = await open_store(config(tmp_path), tmp_path / "reader")
    try:
        with pytest.raises(CorruptObject) as info:
            await read_all(reader, oid)
        assert info.value.object == remote_name(reader.repo.keys, oid)
    finally:
        await reader.close()


async def test_manifest_swapped_for_another_file_is_rejected(tmp_path: Path) -> None:
    oid_a, _ = await put_and_flush(tmp_path)
    data_b = model_bytes(tmp_path, "b.safetensors", seed=9)
    store = await open_store(config(tmp_path), tmp_path / "writer")
    try:
        oid_b = (await store.put(astream(data_b))).oid
        await store.flush()
        keys = store.repo.keys
    finally:
        await store.close()
    root = tmp_path / "remote"
    (root / remote_name(keys, oid_b)).replace(root / remote_name(keys, oid_a))
    reader = await open_store(config(tmp_path), tmp_path / "reader")
    try:
        with pytest.raises(CorruptObject) as info:
            await read_all(reader, oid_a)
        assert oid_b in str(info.value) and oid_a in str(info.value)
    finally:
        await reader.close()


async def test_corrupt_cache_entry_is_dropped_and_refetched(tmp_path: Path) -> None:
    data = model_bytes(tmp_path)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        oid = (await store.put(astream(data))).oid
        await store.flush()
        segments = sorted((store.root / "segments").iterdir())
        for seg in segments[:2]:
            flip(seg, 500)
        gets = store.stats()["remote_gets"]
        assert await read_all(store, oid) == data  # transparently refetched
        s = store.stats()
        assert s["corrupt_cache_entries"] == 2
        assert s["remote_gets"] > gets
        gets = s["remote_gets"]
        assert await read_all(store, oid) == data  # the refetched copies are cached now
        assert store.stats()["remote_gets"] == gets
        assert store.stats()["corrupt_cache_entries"] == 2
    finally:
        await store.close()


async def test_truncated_cache_segment_is_refetched(tmp_path: Path) -> None:
    data = model_bytes(tmp_path)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        oid = (await store.put(astream(data))).oid
        await store.flush()
        seg = sorted((store.root / "segments").iterdir())[0]
        with open(seg, "r+b") as f:
            f.truncate(100)
        assert await read_all(store, oid) == data
        assert store.stats()["corrupt_cache_entries"] > 0
    finally:
        await store.close()


async def test_chunks_reassembled_out_of_order_fail_the_whole_file_check(tmp_path: Path) -> None:
    """Every chunk verifies on its own, but the file they make is not the oid's: the last
    read raises (the daemon turns that into an ERROR before END, and the filter fails the file)."""
    import dataclasses

    from gitmld.daemon.store.manifest import RECORD, oid_bytes

    data = model_bytes(tmp_path)
    store = await open_store(config(tmp_path), tmp_path / "writer")
    try:
        oid = (await store.put(astream(data))).oid
        manifest = await store._manifest(oid)
        size = RECORD.size
        recs = manifest.records
        assert len(recs) >= 2 * size and recs[:size] != recs[size : 2 * size]
        swapped = recs[size : 2 * size] + recs[:size] + recs[2 * size :]
        tampered = dataclasses.replace(manifest, records=swapped)
        store._cache.db.put_manifest(oid_bytes(oid), tampered.encode_plain(), uploaded=False)
        with pytest.raises(CorruptObject) as info:
            await read_all(store, oid)
        assert "hashes to" in str(info.value) and info.value.object == oid
    finally:
        await store.close()
