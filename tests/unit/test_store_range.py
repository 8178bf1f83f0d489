"""ContentStore.open_range: the chunks that overlap a range, trimmed; bounds checked up front."""

from __future__ import annotations

import random
from itertools import accumulate
from pathlib import Path

import pytest
from gitmld.daemon.store.errors import InvalidRequest, NotFound
from gitmld.daemon.store.store import ContentStore

from tests.unit.test_store_support import (
    MiB,
    astream,
    config,
    keyfile_env,  # noqa: F401  (autouse fixture)
    model_bytes,
    noise_bytes,
    open_store,
    stored_in_remote,
)


async def read_range(store: ContentStore, oid: str, offset: int, length: int) -> bytes:
    stream = await store.open_range(oid, offset, length)
    return b"".join([piece async for piece in stream])


async def chunk_edges(store: ContentStore, oid: str) -> list[int]:
    """The file offsets where chunks end (from the manifest)."""
    manifest = await store._manifest(oid)
    return list(accumulate(ref.plain_len for ref in manifest.chunks()))


async def test_ranges_at_chunk_edges_across_chunks_and_inside_one(tmp_path: Path) -> None:
    data = noise_bytes(3 * MiB, seed=11)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        oid = (await store.put(astream(data))).oid
        edges = await chunk_edges(store, oid)
        assert len(edges) > 10 and edges[-1] == len(data)
        e1, e2, e5 = edges[0], edges[1], edges[4]
        cases = [
            (0, e1),  # exactly the first chunk
            (e1, e2 - e1),  # exactly the second
            (e1 - 1, 2),  # the last byte of one chunk and the first of the next
            (e1 + 7, e5 - e1 - 20),  # starts and ends inside chunks, spans several
            (e2 + 3, 10),  # inside one chunk
            (len(data) - 5, 5),  # the tail
            (0, len(data)),  # the whole file
        ]
        for offset, length in cases:
            assert await read_range(store, oid, offset, length) == data[offset : offset + length], (offset, length)
        rng = random.Random(3)
        for _ in range(40):
            offset = rng.randrange(len(data))
            length = rng.randrange(len(data) - offset + 1)
            assert await read_range(store, oid, offset, length) == data[offset : offset + length]
    finally:
        await store.close()


async def test_empty_ranges_read_nothing(tmp_path: Path) -> None:
    data = noise_bytes(MiB, seed=2)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        oid = (await store.put(astream(data))).oid
        before = store.stats()
        assert await read_range(store, oid, 0, 0) == b""
        assert await read_range(store, oid, len(data), 0) == b""  # at the very end is inside
        after = store.stats()
        assert after["range_chunk_bytes"] == before["range_chunk_bytes"]
        assert after["range_reads"] == before["range_reads"] + 2
        empty = (await store.put(astream(b""))).oid
        assert await read_range(store, empty, 0, 0) == b""
    finally:
        await store.close()


async def test_out_of_bounds_and_bad_ranges_fail_before_any_byte(tmp_path: Path) -> None:
    data = noise_bytes(MiB, seed=3)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        oid = (await store.put(astream(data))).oid
        with pytest.raises(InvalidRequest, match=r"past the end of the file \(1048576 bytes\)"):
            await store.open_range(oid, len(data) - 10, 11)
        with pytest.raises(InvalidRequest, match="past the end"):
            await store.open_range(oid, len(data) + 1, 0)
        with pytest.raises(InvalidRequest, match="offset -1 is not a non-negative integer"):
            await store.open_range(oid, -1, 5)
        with pytest.raises(InvalidRequest, match="length True is not"):
            await store.open_range(oid, 0, True)  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await store.open_range("sha256:" + "0" * 64, 0, 1)
        with pytest.raises(InvalidRequest, match="not an object id"):
            await store.open_range("sha256:xyz", 0, 1)
    finally:
        await store.close()


async def test_cold_range_fetches_only_the_chunks_it_needs(tmp_path: Path) -> None:
    data = model_bytes(tmp_path, layers=4, hidden=512)  # ~9 MiB
    cfg = config(tmp_path)
    oid = await stored_in_remote(cfg, tmp_path / "cache1", data)
    cold = await open_store(cfg, tmp_path / "cache2")
    try:
        edges = await chunk_edges(cold, oid)
        offset, length = edges[20] + 100, 50_000  # inside chunk 21 (and maybe 22)
        before = cold.stats()
        assert await read_range(cold, oid, offset, length) == data[offset : offset + length]
        s = cold.stats()
        decoded = s["range_chunk_bytes"] - before["range_chunk_bytes"]
        assert length <= decoded <= length + 2 * max(b - a for a, b in zip([0, *edges], edges, strict=False))
        assert s["range_bytes_out"] - before["range_bytes_out"] == length
        assert s["bytes_out"] - before["bytes_out"] == length
        # one coalesced GET of at most max_range bytes, not the whole file
        assert 0 < s["remote_get_bytes"] - before["remote_get_bytes"] <= 4 * MiB < len(data)
        assert s["cache_misses"] - before["cache_misses"] <= 2
    finally:
        await cold.close()
