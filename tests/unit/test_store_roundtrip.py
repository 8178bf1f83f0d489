"""ContentStore against a directory remote: round trips, dedup, cold reads, flush scopes."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitmld.daemon.store.errors import InvalidRequest, NotDurable, NotFound

from tests.unit.test_store_support import (
    MiB,
    astream,
    config,
    keyfile_env,  # noqa: F401  (autouse fixture)
    model_bytes,
    noise_bytes,
    open_store,
    read_all,
    remote_files,
    stored_in_remote,
    wait_until,
)


async def test_multipack_round_trip_and_cold_read(tmp_path: Path) -> None:
    data = model_bytes(tmp_path)
    cfg = config(tmp_path)
    store = await open_store(cfg, tmp_path / "cache1")
    try:
        result = await store.put(astream(data))
        assert result.size == len(data)
        assert result.oid.startswith("sha256:") and len(result.oid) == 71
        assert result.tensors is not None and len(result.tensors) == 22
        assert await read_all(store, result.oid) == data  # from the host cache, before any flush
        assert store.stats()["remote_gets"] == 2  # only keys + config at open
        flushed = await store.flush()
        assert flushed.objects >= 3
    finally:
        await store.close()
    packs = remote_files(tmp_path, "data")
    assert len(packs) >= 5  # 1 MiB packs
    assert all(p.stat().st_size <= MiB + 64 * 1024 for p in packs)
    assert len(remote_files(tmp_path, "index")) == 1
    assert len(remote_files(tmp_path, "manifests")) == 1

    cold = await open_store(cfg, tmp_path / "cache2")
    try:
        assert await cold.has(result.oid)
        assert not await cold.has(result.oid, local_only=True)
        assert await read_all(cold, result.oid) == data
        s = cold.stats()
        assert s["cache_misses"] > 0 and s["cache_hits"] == 0
        assert s["remote_puts"] == 0
        assert await cold.has(result.oid, local_only=True)
        before = s["remote_gets"]
        assert await read_all(cold, result.oid) == data  # now warm
        assert cold.stats()["remote_gets"] == before
    finally:
        await cold.close()


async def test_plain_and_empty_files(tmp_path: Path) -> None:
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        data = noise_bytes(3 * MiB, seed=5)
        plain = await store.put(astream(data, piece=7777))
        assert plain.tensors is None
        empty = await store.put(astream(b""))
        assert empty.size == 0
        assert empty.oid == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        await store.flush()
        assert await read_all(store, plain.oid) == data
        assert await read_all(store, empty.oid) == b""
    finally:
        await store.close()
    cold = await open_store(config(tmp_path), tmp_path / "cold")
    try:
        assert await read_all(cold, empty.oid) == b""
        assert await read_all(cold, plain.oid) == data
    finally:
        await cold.close()


async def test_dedup_across_files(tmp_path: Path) -> None:
    v1 = model_bytes(tmp_path, "v1.safetensors")
    v2 = model_bytes(tmp_path, "v2.safetensors", changed_layers=(3,))
    v3 = model_bytes(tmp_path, "v3.safetensors", changed_layers=(3,), extra_tensor=True)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        await store.put(astream(v1))
        first = store.stats()["new_chunk_bytes"]
        assert first == len(v1)
        r2 = await store.put(astream(v2))
        added2 = store.stats()["new_chunk_bytes"] - first
        # one of four layers changed: its tensors are ~1/5 of the file
        assert 0 < added2 < 0.3 * len(v2)
        r3 = await store.put(astream(v3))
        added3 = store.stats()["new_chunk_bytes"] - first - added2
        # the header grew (every offset shifted) and one small tensor was added: few new bytes
        assert 0 < added3 < 0.05 * len(v3)
        assert await read_all(store, r2.oid) == v2
        assert await read_all(store, r3.oid) == v3
        again = await store.put(astream(v1))
        assert store.stats()["new_chunk_bytes"] == first + added2 + added3
        assert again.oid != r2.oid
    finally:
        await store.close()


async def test_dedup_against_remote_index_of_another_host(tmp_path: Path) -> None:
    data = model_bytes(tmp_path)
    cfg = config(tmp_path)
    a = await open_store(cfg, tmp_path / "host-a")
    try:
        await a.put(astream(data))
        await a.flush()
    finally:
        await a.close()
    b = await open_store(cfg, tmp_path / "host-b")  # loads index/ at open
    try:
        r = await b.put(astream(data))
        assert b.stats()["new_chunk_bytes"] == 0
        result = await b.flush()
        assert result.objects == 1  # only the manifest: no pack, no index
        assert await read_all(b, r.oid) == data
    finally:
        await b.close()


async def test_flush_of_some_oids(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    a_data, b_data = noise_bytes(2 * MiB, seed=1), noise_bytes(2 * MiB, seed=2)
    store = await open_store(cfg, tmp_path / "cache")
    try:
        a = await store.put(astream(a_data))
        b = await store.put(astream(b_data))
        await store.flush([a.oid])
        cold = await open_store(cfg, tmp_path / "cold")
        try:
            assert await read_all(cold, a.oid) == a_data
            with pytest.raises(NotFound):
                await read_all(cold, b.oid)
        finally:
            await cold.close()
        assert store.stats()["upload_queue_manifests"] == 1
        assert (await store.flush([a.oid])).objects == 0  # already durable
        await store.flush()
        assert store.stats()["upload_queue_manifests"] == 0
        missing = "sha256:" + "ab" * 32
        with pytest.raises(NotDurable) as info:
            await store.flush([missing])
        assert info.value.missing == [missing] and missing in str(info.value)
    finally:
        await store.close()
    cold = await open_store(cfg, tmp_path / "cold2")
    try:
        assert await read_all(cold, b.oid) == b_data
    finally:
        await cold.close()


async def test_missing_and_malformed_oids(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = await open_store(cfg, tmp_path / "cache")
    try:
        missing = "sha256:" + "00" * 32
        assert not await store.has(missing)
        with pytest.raises(NotFound) as info:
            await read_all(store, missing)
        assert missing in str(info.value) and cfg.url in str(info.value)
        assert info.value.code == "not_found"
        with pytest.raises(InvalidRequest):
            await store.has("md5:1234")
    finally:
        await store.close()


async def test_fetch_fills_the_cache(tmp_path: Path) -> None:
    data = model_bytes(tmp_path)
    cfg = config(tmp_path)
    oid = await stored_in_remote(cfg, tmp_path / "a", data)
    cold = await open_store(cfg, tmp_path / "b")
    try:
        await cold.fetch(oid)
        assert await cold.has(oid, local_only=True)
        gets = cold.stats()["remote_gets"]
        await cold.fetch(oid)  # nothing left to fetch
        assert await read_all(cold, oid) == data
        assert cold.stats()["remote_gets"] == gets
        assert cold.stats()["bytes_out"] == len(data)
    finally:
        await cold.close()


async def test_long_running_host_learns_other_hosts_chunks(tmp_path: Path) -> None:
    data = model_bytes(tmp_path)
    cfg = config(tmp_path)
    b = await open_store(cfg, tmp_path / "host-b", index_refresh_seconds=0)  # opened first
    a = await open_store(cfg, tmp_path / "host-a")
    try:
        await a.put(astream(data))
        await a.flush()
        await b.put(astream(b"x" * 1000))  # any put refreshes the remote index in the background
        task = b._index_refresh
        assert task is not None
        await wait_until(task.done)
        before = b.stats()["new_chunk_bytes"]
        await b.put(astream(data))
        assert b.stats()["new_chunk_bytes"] == before  # every chunk was known from a's index
    finally:
        await a.close()
        await b.close()
