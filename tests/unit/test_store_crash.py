"""Crash safety: a process killed (os._exit, no cleanup) mid-flush or mid-put loses nothing
flushed before, leaves a repository whose every manifest reads, and a cache that reopens."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gitmld.daemon.store.errors import NotFound

from tests.unit.test_store_support import (
    MiB,
    astream,
    config,
    keyfile_env,  # noqa: F401  (autouse fixture)
    noise_bytes,
    open_store,
    read_all,
    remote_files,
)

KILLED = 9

_CHILD = textwrap.dedent("""
    import asyncio, hashlib, os, sys
    from pathlib import Path
    from gitmld.daemon.store.store import ContentStore
    from gitmld.proto.remote_config import RemoteConfig

    async def stream(path, kill_after=None):
        sent = 0
        with open(path, "rb") as f:
            while piece := f.read(100_000):
                if kill_after is not None and sent >= kill_after:
                    os._exit(9)  # like kill -9: no cleanup, no flush, no close
                sent += len(piece)
                yield piece

    async def main(url, keyfile, cache, mode, first, second):
        cfg = RemoteConfig(url=url, pack_size=1 << 20, keyfile=keyfile)
        store = await ContentStore.open(cfg, Path(cache))
        await store.put(stream(first))
        await store.flush()
        if mode == "put":
            await store.put(stream(second, kill_after=os.path.getsize(second) // 2))
        else:
            await store.put(stream(second))
            def hook(stage):
                if stage == mode:
                    os._exit(9)
            store.flush_hook = hook
            await store.flush()
        os._exit(0)

    asyncio.run(main(*sys.argv[1:]))
""")


def run_child(tmp_path: Path, mode: str, first: Path, second: Path) -> int:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cfg = config(tmp_path)
    args = [cfg.url, str(cfg.keyfile), str(tmp_path / "cache"), mode, str(first), str(second)]
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, timeout=120)
    assert proc.returncode == KILLED, proc.stderr.decode()[-2000:]
    return proc.returncode


def oid_of(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("stage", ["packs", "index"])
async def test_kill_between_pack_upload_and_manifest(tmp_path: Path, stage: str) -> None:
    a_data, b_data = noise_bytes(3 * MiB, seed=1), noise_bytes(3 * MiB, seed=2)
    (tmp_path / "a").write_bytes(a_data)
    (tmp_path / "b").write_bytes(b_data)
    run_child(tmp_path, stage, tmp_path / "a", tmp_path / "b")
    assert len(remote_files(tmp_path, "manifests")) == 1  # b's manifest never went up
    assert len(remote_files(tmp_path, "index")) == (1 if stage == "packs" else 2)

    fresh = await open_store(config(tmp_path), tmp_path / "fresh")
    try:
        assert await read_all(fresh, oid_of(a_data)) == a_data  # flushed before the kill
        with pytest.raises(NotFound):
            await read_all(fresh, oid_of(b_data))
    finally:
        await fresh.close()

    reopened = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        assert reopened.stats()["upload_queue_manifests"] == 1
        assert await read_all(reopened, oid_of(b_data)) == b_data
        await reopened.flush()
        assert reopened.stats()["upload_queue_manifests"] == 0
    finally:
        await reopened.close()
    fresh2 = await open_store(config(tmp_path), tmp_path / "fresh2")
    try:
        assert await read_all(fresh2, oid_of(b_data)) == b_data
    finally:
        await fresh2.close()


async def test_kill_in_the_middle_of_a_put(tmp_path: Path) -> None:
    a_data, b_data = noise_bytes(3 * MiB, seed=3), noise_bytes(4 * MiB, seed=4)
    (tmp_path / "a").write_bytes(a_data)
    (tmp_path / "b").write_bytes(b_data)
    run_child(tmp_path, "put", tmp_path / "a", tmp_path / "b")

    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        assert store.stats()["upload_queue_manifests"] == 0  # the interrupted put stored no manifest
        assert await read_all(store, oid_of(a_data)) == a_data
        r = await store.put(astream(b_data))
        await store.flush()
        assert await read_all(store, r.oid) == b_data
        repo_dir = store.root
    finally:
        await store.close()
    # recovery left no stray segment files behind: every file is one the index knows
    reopened = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        on_disk = {p.name for p in (repo_dir / "segments").iterdir()}
        assert on_disk == {s.hex() for s in reopened._cache.sizes}
    finally:
        await reopened.close()
    fresh = await open_store(config(tmp_path), tmp_path / "fresh")
    try:
        assert await read_all(fresh, oid_of(a_data)) == a_data
        assert await read_all(fresh, oid_of(b_data)) == b_data
    finally:
        await fresh.close()


async def test_upload_queue_survives_reopening(tmp_path: Path) -> None:
    data = noise_bytes(5 * MiB, seed=7)
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        r = await store.put(astream(data))
    finally:
        await store.close()  # no flush: the open pack, the index and the manifest are pending
    assert remote_files(tmp_path, "manifests") == []

    reopened = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        assert reopened.stats()["upload_queue_manifests"] == 1
        result = await reopened.flush()
        assert result.objects >= 2
        s = reopened.stats()
        assert s["upload_queue"] == 0 and s["upload_queue_manifests"] == 0
    finally:
        await reopened.close()
    fresh = await open_store(config(tmp_path), tmp_path / "fresh")
    try:
        assert await read_all(fresh, r.oid) == data
    finally:
        await fresh.close()
