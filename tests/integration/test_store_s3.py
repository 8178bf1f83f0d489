"""ContentStore against a real S3 server (SeaweedFS): the same contracts as the directory tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gitmld.daemon.store.errors import CorruptObject
from gitmld.daemon.store.store import ContentStore, StoreOptions
from gitmld.proto.remote_config import RemoteConfig

from tests.conftest import S3Bucket
from tests.modelgen import write_checkpoint

pytestmark = pytest.mark.integration
MiB = 1 << 20


def s3_config(bucket: S3Bucket, tmp_path: Path) -> RemoteConfig:
    return RemoteConfig(url=bucket.url, endpoint=bucket.endpoint, pack_size=MiB,
                        keyfile=str(tmp_path / "keyfile"))


async def astream(data: bytes, piece: int = 256 * 1024) -> Any:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def read_all(store: ContentStore, oid: str) -> bytes:
    return b"".join([c async for c in store.open_file(oid)])


def model(tmp_path: Path, name: str, **kw: Any) -> bytes:
    return write_checkpoint(tmp_path / name, layers=4, hidden=512, **kw).read_bytes()


def keys_in(bucket: S3Bucket, prefix: str) -> dict[str, int]:
    client = bucket.server.client()
    out: dict[str, int] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket, Prefix=f"{bucket.prefix}/{prefix}")
    for page in pages:
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


async def test_round_trip_dedup_and_cold_read(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    cfg = s3_config(s3_bucket, tmp_path)
    v1 = model(tmp_path, "v1")
    v2 = model(tmp_path, "v2", changed_layers=(2,))
    store = await ContentStore.open(cfg, tmp_path / "cache1", options=StoreOptions())
    try:
        r1 = await store.put(astream(v1))
        await store.flush()
        packs_after_v1 = keys_in(s3_bucket, "data/")
        assert len(packs_after_v1) >= 5
        bytes_v1 = sum(packs_after_v1.values())
        r2 = await store.put(astream(v2))
        await store.flush()
        bytes_v2 = sum(keys_in(s3_bucket, "data/").values()) - bytes_v1
        assert 0 < bytes_v2 < 0.3 * bytes_v1  # one layer of four changed
        assert len(keys_in(s3_bucket, "manifests/")) == 2
        assert len(keys_in(s3_bucket, "index/")) == 2
    finally:
        await store.close()

    cold = await ContentStore.open(cfg, tmp_path / "cache2", options=StoreOptions())
    try:
        assert await read_all(cold, r1.oid) == v1
        assert await read_all(cold, r2.oid) == v2
        s = cold.stats()
        assert s["remote_puts"] == 0 and s["remote_put_bytes"] == 0  # a reader writes nothing
        assert s["cache_misses"] > 0
        gets = s["remote_gets"]
        assert await read_all(cold, r2.oid) == v2
        assert cold.stats()["remote_gets"] == gets  # warm: the host cache serves it
    finally:
        await cold.close()


async def test_corrupted_pack_is_detected(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    cfg = s3_config(s3_bucket, tmp_path)
    data = model(tmp_path, "m")
    store = await ContentStore.open(cfg, tmp_path / "cache1")
    try:
        oid = (await store.put(astream(data))).oid
        await store.flush()
    finally:
        await store.close()
    client = s3_bucket.server.client()
    key = sorted(keys_in(s3_bucket, "data/"))[0]
    body = bytearray(client.get_object(Bucket=s3_bucket.bucket, Key=key)["Body"].read())
    body[2000] ^= 0x01
    client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=bytes(body))

    cold = await ContentStore.open(cfg, tmp_path / "cache2")
    try:
        with pytest.raises(CorruptObject) as info:
            await read_all(cold, oid)
        name = key[len(s3_bucket.prefix) + 1 :]
        assert info.value.object == name and name in str(info.value)
    finally:
        await cold.close()


async def test_default_pack_size_round_trip(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Default options (16 MiB packs, 4 MiB coalesced GETs, 8 requests in flight) end to end."""
    cfg = RemoteConfig(url=s3_bucket.url, endpoint=s3_bucket.endpoint, keyfile=str(tmp_path / "keyfile"))
    data = b"".join(model(tmp_path, f"p{i}", seed=i) for i in range(4))  # ~38 MiB, several packs
    store = await ContentStore.open(cfg, tmp_path / "cache1")
    try:
        oid = (await store.put(astream(data))).oid
        await store.flush()
    finally:
        await store.close()
    assert len(keys_in(s3_bucket, "data/")) >= 2
    cold = await ContentStore.open(cfg, tmp_path / "cache2")
    try:
        assert await read_all(cold, oid) == data
    finally:
        await cold.close()
