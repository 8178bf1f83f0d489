"""Helpers shared by the ContentStore tests (no tests here): data, streams, stores, remotes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gitmld.daemon.remote.base import Progress, Remote, open_remote
from gitmld.daemon.store import store as store_module
from gitmld.daemon.store.store import ContentStore, StoreOptions
from gitmld.proto.remote_config import RemoteConfig

from tests.modelgen import write_checkpoint

MiB = 1 << 20


@pytest.fixture(autouse=True)
def keyfile_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Guard: the default keyfile path points into the test's directory, never at the
    developer's own keyfile."""
    path = tmp_path / "default-config" / "keyfile"
    monkeypatch.setenv("GITMLD_KEYFILE", str(path))
    return path


def keyfile(tmp_path: Path) -> Path:
    """The keyfile the test's remote uses (created on first use by a new repository)."""
    return tmp_path / "config" / "keyfile"


def model_bytes(tmp_path: Path, name: str = "m.safetensors", **kw: Any) -> bytes:
    """A real safetensors checkpoint (~9 MiB of bf16 normals by default)."""
    kw.setdefault("layers", 4)
    kw.setdefault("hidden", 512)
    return write_checkpoint(tmp_path / name, **kw).read_bytes()


def noise_bytes(size: int, seed: int = 0) -> bytes:
    """Compressible-but-not-trivial bytes: bf16 normals, no safetensors header."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 0.02, size // 2).astype(np.float32)
    return (values.view(np.uint32) >> 16).astype("<u2").tobytes()


async def astream(data: bytes, piece: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def read_all(store: ContentStore, oid: str) -> bytes:
    return b"".join([chunk async for chunk in store.open_file(oid)])


def config(tmp_path: Path, **kw: Any) -> RemoteConfig:
    kw.setdefault("pack_size", MiB)
    kw.setdefault("keyfile", str(keyfile(tmp_path)))
    return RemoteConfig(url=(tmp_path / "remote").as_uri(), **kw)


async def stored_in_remote(cfg: RemoteConfig, cache: Path, data: bytes) -> str:
    """Put data through a store with its own cache, flush, close: the oid, durable in the remote."""
    store = await open_store(cfg, cache)
    try:
        oid = (await store.put(astream(data))).oid
        await store.flush()
    finally:
        await store.close()
    return oid


async def open_store(cfg: RemoteConfig, cache: Path, **opts: Any) -> ContentStore:
    return await ContentStore.open(cfg, cache, options=StoreOptions(**opts))


class RecordingRemote:
    """Wraps a real remote: records every call; uploads can be held back with a gate."""

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.url = inner.url
        self.stats = inner.stats
        self.ranges: list[tuple[str, int, int]] = []
        self.gets: list[str] = []
        self.put_files: list[str] = []
        self.upload_gate: asyncio.Event | None = None
        self.range_gate: asyncio.Event | None = None  # ranged GETs after the first `ranges_before_gate` wait
        self.ranges_before_gate = 0

    async def prepare_new_repository(self) -> None:
        await self.inner.prepare_new_repository()

    async def put_bytes(self, name: str, data: bytes) -> None:
        await self.inner.put_bytes(name, data)

    async def put_file(self, name: str, path: Path, *, progress: Progress | None = None) -> None:
        if self.upload_gate is not None:
            await self.upload_gate.wait()
        await self.inner.put_file(name, path, progress=progress)
        self.put_files.append(name)

    async def get_bytes(self, name: str) -> bytes:
        self.gets.append(name)
        return await self.inner.get_bytes(name)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        self.ranges.append((name, offset, length))
        if self.range_gate is not None and len(self.ranges) > self.ranges_before_gate:
            await self.range_gate.wait()
        return await self.inner.get_range(name, offset, length)

    async def exists(self, name: str) -> bool:
        return await self.inner.exists(name)

    async def list(self, prefix: str) -> list[str]:
        return await self.inner.list(prefix)

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def probe(self, name: str) -> bool:
        return await self.inner.probe(name)

    async def close(self) -> None:
        await self.inner.close()


def record_remotes(monkeypatch: pytest.MonkeyPatch) -> list[RecordingRemote]:
    """Make every store opened from now on talk through a RecordingRemote; returns them."""
    made: list[RecordingRemote] = []

    def factory(cfg: Any, **kw: Any) -> RecordingRemote:
        r = RecordingRemote(open_remote(cfg, **kw))
        made.append(r)
        return r

    monkeypatch.setattr(store_module, "open_remote", factory)
    return made


def remote_files(tmp_path: Path, prefix: str) -> list[Path]:
    root = tmp_path / "remote" / prefix
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll a condition until a deadline (synchronisation by state, never by sleeping a guess)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)
