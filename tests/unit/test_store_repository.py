"""Opening a repository: keyfile creation on a new remote, clear errors on every mismatch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from gitmld.daemon.remote.retry import RetryPolicy
from gitmld.daemon.store import codec, keys
from gitmld.daemon.store import store as store_module
from gitmld.daemon.store.errors import CorruptObject, RepositoryKeyError, UnsupportedFormat
from gitmld.daemon.store.repository import CONFIG_KIND
from gitmld.proto.remote_config import RemoteConfig

from tests.unit.test_store_support import (
    astream,
    config,
    keyfile,
    keyfile_env,  # noqa: F401  (autouse fixture)
    noise_bytes,
    open_store,
    read_all,
)


async def test_new_remote_creates_keyfile_keys_and_config(tmp_path: Path) -> None:
    keyfile_path = keyfile(tmp_path)
    assert not keyfile_path.exists()
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        assert keyfile_path.exists() and keyfile_path.stat().st_mode & 0o777 == 0o600
        kid = keys.kek_id(keys.load_kek(keyfile_path))
        assert (tmp_path / "remote" / "keys" / kid).is_file()
        assert (tmp_path / "remote" / "config").is_file()
        assert store.repo.config.chunk_avg_size == 64 * 1024
        assert store.root == tmp_path / "cache" / "repos" / store.repo.config.repo_id
        repo_id = store.repo.config.repo_id
    finally:
        await store.close()
    again = await open_store(config(tmp_path), tmp_path / "other-cache")
    try:
        assert again.repo.config.repo_id == repo_id  # the config is read, not remade
    finally:
        await again.close()


async def test_existing_remote_without_keyfile_says_what_to_do(tmp_path: Path) -> None:
    keyfile_path = keyfile(tmp_path)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    await store.close()
    keyfile_path.unlink()
    with pytest.raises(RepositoryKeyError) as info:
        await open_store(config(tmp_path), tmp_path / "cache2")
    msg = str(info.value)
    assert str(keyfile_path) in msg and "copy the keyfile" in msg and "gitmld keygen" in msg
    assert not keyfile_path.exists()  # never silently made a new key for an existing repository


async def test_other_keyfile_names_path_and_key_ids(tmp_path: Path) -> None:
    keyfile_path = keyfile(tmp_path)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    await store.close()
    original = keys.kek_id(keys.load_kek(keyfile_path))
    other = tmp_path / "other-keyfile"
    other_id = keys.kek_id(keys.create_keyfile(other))
    cfg = config(tmp_path, keyfile=str(other))
    with pytest.raises(RepositoryKeyError) as info:
        await open_store(cfg, tmp_path / "cache2")
    msg = str(info.value)
    assert str(other) in msg and other_id in msg and original in msg
    assert "another keyfile" in msg
    assert info.value.code == "key"


async def test_newer_repository_version_is_refused(tmp_path: Path) -> None:
    store = await open_store(config(tmp_path), tmp_path / "cache")
    repo_keys = store.repo.keys
    await store.close()
    doc = {"version": 2, "id": "ab" * 16, "chunker": {"avg_size": 65536}}
    (tmp_path / "remote" / "config").write_bytes(codec.seal_blob(repo_keys, CONFIG_KIND, json.dumps(doc).encode()))
    with pytest.raises(UnsupportedFormat) as info:
        await open_store(config(tmp_path), tmp_path / "cache2")
    assert "upgrade gitmld" in str(info.value)


async def test_damaged_config_is_corrupt(tmp_path: Path) -> None:
    store = await open_store(config(tmp_path), tmp_path / "cache")
    await store.close()
    path = tmp_path / "remote" / "config"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptObject) as info:
        await open_store(config(tmp_path), tmp_path / "cache2")
    assert info.value.object == "config"


async def test_interrupted_creation_is_finished(tmp_path: Path) -> None:
    store = await open_store(config(tmp_path), tmp_path / "cache")
    await store.close()
    (tmp_path / "remote" / "config").unlink()  # as if killed between keys/ and config
    again = await open_store(config(tmp_path), tmp_path / "cache2")
    try:
        data = noise_bytes(100_000)
        oid = (await again.put(astream(data))).oid
        assert await read_all(again, oid) == data
        assert (tmp_path / "remote" / "config").is_file()
    finally:
        await again.close()


async def test_cached_keys_serve_reads_while_the_remote_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    store = await open_store(cfg, tmp_path / "cache")
    try:
        data = noise_bytes(200_000, seed=3)
        oid = (await store.put(astream(data))).oid
        await store.flush()
    finally:
        await store.close()
    # A directory remote is never "unavailable"; an S3 endpoint that refuses connections is.
    # Pretend this repository lives there: give its cached keys that remote's name.
    down = RemoteConfig(url="s3://bucket/prefix", endpoint="http://127.0.0.1:9", keyfile=cfg.keyfile)
    copies = tmp_path / "cache" / "remotes"
    next(copies.iterdir()).rename(copies / (hashlib.sha256(down.url.encode()).hexdigest()[:32] + ".json"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    real_open_remote = store_module.open_remote
    fail_fast = RetryPolicy(attempts=1, deadline=1.0)
    monkeypatch.setattr(store_module, "open_remote", lambda c: real_open_remote(c, retry=fail_fast))

    offline = await open_store(down, tmp_path / "cache")
    try:
        assert offline.repo.offline
        assert await read_all(offline, oid) == data  # from the host cache alone
    finally:
        await offline.close()


async def test_a_remote_that_lost_its_repository_is_not_replaced(tmp_path: Path) -> None:
    """A share that is not mounted (or an emptied prefix) looks like an empty remote: a host
    that has used a repository there refuses to create new keys over it, and says how to go on."""
    cfg = config(tmp_path)
    store = await open_store(cfg, tmp_path / "cache")
    try:
        data = noise_bytes(100_000, seed=5)
        oid = (await store.put(astream(data))).oid  # still to be uploaded: it must not be lost
    finally:
        await store.close()
    remote_root = tmp_path / "remote"
    remote_root.rename(tmp_path / "unmounted")
    with pytest.raises(RepositoryKeyError, match="holds no repository, but this host has used one there") as info:
        await open_store(cfg, tmp_path / "cache")
    assert "mount it" in str(info.value) and "remotes" in str(info.value)
    assert not remote_root.exists()  # nothing was created in its place
    (tmp_path / "unmounted").rename(remote_root)  # mounted again: everything is there
    store = await open_store(cfg, tmp_path / "cache")
    try:
        await store.flush()
        assert await read_all(store, oid) == data
    finally:
        await store.close()
