"""Progress and reachability: transfer counters, flush totals, `wait` progress, remote probes.

The service is driven through an in-memory channel over real stores on directory remotes;
uploads and ranged GETs are held at gates so "in flight" is a state the test controls.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gitmld.daemon.reachability import Reachability
from gitmld.daemon.remote.base import RemoteUnavailable
from gitmld.daemon.service import DaemonSettings, Service
from gitmld.daemon.store import codec, progress
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.progress import SEAL_OVERHEAD, FlushProgress, Transfer

from tests.unit.test_store_support import (
    MiB,
    astream,
    config,
    keyfile_env,  # noqa: F401  (autouse fixture)
    noise_bytes,
    open_store,
    record_remotes,
    stored_in_remote,
    wait_until,
)


class MemChannel:
    """A Channel that records what the handler sends."""

    peer = "test"
    peer_pid = -1

    def __init__(self) -> None:
        self.responses: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self.errors: list[tuple[str, str]] = []

    async def incoming_data(self) -> AsyncIterator[bytes]:
        return
        yield b""

    async def peer_gone(self) -> None:
        await asyncio.Event().wait()  # this client never leaves

    async def respond(self, payload: dict[str, Any]) -> None:
        self.responses.append(payload)

    async def send_data(self, data: bytes) -> None:
        pass

    async def end_data(self) -> None:
        pass

    async def progress(self, payload: dict[str, Any]) -> None:
        self.frames.append(payload)

    async def error(self, code: str, message: str, obj: str | None = None) -> None:
        self.errors.append((code, message))


def new_service(tmp_path: Path, name: str = "daemon") -> Service:
    return Service(DaemonSettings(socket_path=tmp_path / f"{name}.sock", cache_dir=tmp_path / name))


# -- counters -----------------------------------------------------------------------------------


def test_seal_overhead_bounds_every_sealed_blob() -> None:
    keys = RepoKeys.generate()
    for size in (0, 1, 100, 4096, 200_000):
        random = os.urandom(size)  # incompressible: stored raw, the bound is met exactly
        assert len(codec.seal_blob(keys, b"manifest", random)) == size + SEAL_OVERHEAD
        repetitive = b"ab" * (size // 2)
        assert len(codec.seal_blob(keys, b"manifest", repetitive)) <= len(repetitive) + SEAL_OVERHEAD


def test_transfer_rate_follows_recent_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    t = Transfer("download", "fetch", "sha256:x", 1000)
    for _ in range(4):  # 100 bytes/s for 4 s
        now[0] += 1.0
        t.advance(100)
    assert t.done == 400 and t.idle_seconds() == 0
    assert t.rate() == pytest.approx(100.0)
    now[0] += 6.0  # then a stall: the rate decays, the idle time grows
    assert t.idle_seconds() == 6.0
    assert t.rate() < 40
    snap = t.snapshot()
    assert (snap["done"], snap["total"], snap["idle_seconds"], snap["seconds"]) == (400, 1000, 6.0, 10.0)


def test_flush_progress_ends_exact() -> None:
    running = {b"a": 40, b"b": 0}
    p = FlushProgress()
    p.plan({b"a": 100, b"b": 200}, metadata_bound=150, metadata_objects=2, pack_done=lambda pid: running[pid])
    assert (p.done, p.total, p.objects) == (40, 450, 4)
    p.pack_finished(b"a", 100)
    p.pack_finished(b"b", 0)  # someone else uploaded it meanwhile: it leaves the total
    assert (p.done, p.total) == (100, 250)
    p.metadata(70, 50)  # index segment: sealed smaller than its bound
    p.metadata(80, 60)  # one manifest
    assert p.done == p.total == 210
    assert p.frame() == {"what": "upload", "unit": "bytes", "done": 210, "total": 210, "objects": 4}


# -- the flush op --------------------------------------------------------------------------------


async def test_flush_frames_carry_a_total_and_status_lists_the_uploads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remotes = record_remotes(monkeypatch)
    service = new_service(tmp_path)
    remote = config(tmp_path).to_json()
    try:
        _, store = await service.store_for({"remote": remote})
        gate = remotes[-1].upload_gate = asyncio.Event()
        before = remotes[-1].stats.put_bytes  # the repository's own config and keys
        put = await store.put(astream(noise_bytes(6 * MiB, seed=7)))
        ch = MemChannel()
        flush = asyncio.create_task(service.handle({"op": "flush", "remote": remote, "oids": [put.oid]}, ch))
        await wait_until(lambda: bool(ch.frames))
        uploads = [t for t in service.status()["transfers"] if t["direction"] == "upload"]
        assert uploads, "packs held at the gate are uploads in flight"
        assert all(t["kind"] == "pack" and t["done"] < t["total"] and t["remote"] == remote["url"] for t in uploads)
        first = ch.frames[0]
        assert first["done"] == 0 and first["total"] >= store.stats()["upload_queue_bytes"] > 0
        gate.set()
        await flush
        assert ch.errors == []
        answer = ch.responses[-1]
        assert answer["uploaded_bytes"] > 0
        assert all(f["unit"] == "bytes" and f["done"] <= f["total"] for f in ch.frames)
        assert all(f["total"] >= answer["uploaded_bytes"] for f in ch.frames), "total is an upper bound"
        assert ch.frames[-1]["done"] == ch.frames[-1]["total"] == answer["uploaded_bytes"]
        assert answer["uploaded_bytes"] == remotes[-1].stats.put_bytes - before
        assert service.status()["transfers"] == []
    finally:
        await service.close()


async def test_flush_of_nothing_sends_no_progress(tmp_path: Path) -> None:
    service = new_service(tmp_path)
    remote = config(tmp_path).to_json()
    try:
        ch = MemChannel()
        await service.handle({"op": "flush", "remote": remote}, ch)
        assert ch.responses == [{"uploaded_bytes": 0, "objects": 0}] and ch.frames == []
    finally:
        await service.close()


# -- fetch progress: wait and status -----------------------------------------------------------


async def test_wait_and_status_report_a_fetch_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = noise_bytes(12 * MiB, seed=8)
    cfg = config(tmp_path)
    oid = await stored_in_remote(cfg, tmp_path / "writer", data)
    remotes = record_remotes(monkeypatch)
    service = new_service(tmp_path, "reader")
    remote = cfg.to_json()
    try:
        await service.store_for({"remote": remote})
        gate = remotes[-1].range_gate = asyncio.Event()
        remotes[-1].ranges_before_gate = 2  # two packs come, then the remote "hangs"
        ch = MemChannel()
        await service.handle({"op": "fetch", "remote": remote, "oids": [oid], "path": "m.bin"}, ch)

        async def moving() -> dict[str, Any]:
            while True:
                await service.handle({"op": "wait", "remote": remote, "oids": [oid], "timeout": 0.05}, ch)
                p = ch.responses[-1]["progress"].get(oid, {})
                if p.get("done"):
                    return p

        p = await asyncio.wait_for(moving(), 30)
        assert ch.responses[-1]["ready"] == [] and ch.responses[-1]["failed"] == {}
        assert p["total"] == len(data) and 0 < p["done"] < p["total"]
        [download] = [t for t in service.status()["transfers"] if t["direction"] == "download"]
        assert (download["kind"], download["what"], download["path"]) == ("fetch", oid, "m.bin")
        assert 0 < download["done"] < download["total"] == len(data)

        stalled_at = p["done"]
        await service.handle({"op": "wait", "remote": remote, "oids": [oid], "timeout": 0.3}, ch)
        p = ch.responses[-1]["progress"][oid]
        assert p["done"] == stalled_at and p["idle_seconds"] >= 0.3  # not moving: the filter's deadline runs

        gate.set()
        await service.handle({"op": "wait", "remote": remote, "oids": [oid], "timeout": 30}, ch)
        assert ch.responses[-1]["ready"] == [oid] and ch.responses[-1]["progress"] == {}
        assert service.status()["transfers"] == []
    finally:
        await service.close()


async def test_reads_are_downloads_in_status_while_they_stream(tmp_path: Path) -> None:
    store = await open_store(config(tmp_path), tmp_path / "cache")
    try:
        data = noise_bytes(3 * MiB, seed=9)
        oid = (await store.put(astream(data))).oid
        stream = store.open_file(oid, path="w.bin")
        first = await anext(stream)
        [t] = [t for t in store.transfers() if t["direction"] == "download"]  # packs may be going up
        assert (t["kind"], t["path"], t["total"]) == ("read", "w.bin", len(data))
        assert t["done"] == len(first) < len(data)
        rest = b"".join([piece async for piece in stream])
        assert first + rest == data
        assert [t for t in store.transfers() if t["direction"] == "download"] == []
    finally:
        await store.close()


# -- reachability --------------------------------------------------------------------------------


async def test_status_shows_whether_the_remote_is_reachable(tmp_path: Path) -> None:
    service = new_service(tmp_path)
    remote = config(tmp_path).to_json()
    try:
        await service.store_for({"remote": remote})
        ch = MemChannel()
        await service.handle({"op": "status"}, ch)
        [r] = ch.responses[-1]["remotes"]
        assert r["reachable"] is True and r["error"] is None and r["probe_ms"] >= 0

        (tmp_path / "remote").rename(tmp_path / "elsewhere")  # an unmounted share
        await service.handle({"op": "status"}, ch)
        assert ch.responses[-1]["remotes"][0]["reachable"] is True, "answers are cached for a few seconds"

        service._reachability = Reachability(ttl=0)
        await service.handle({"op": "status"}, ch)
        [r] = ch.responses[-1]["remotes"]
        assert r["reachable"] is False
        assert str(tmp_path / "remote") in r["error"] and "does not exist" in r["error"]
    finally:
        await service.close()


async def test_a_hanging_probe_is_cut_short_and_shared() -> None:
    calls = []

    async def hang() -> None:
        calls.append(1)
        await asyncio.sleep(3600)

    async def refused() -> None:
        raise RemoteUnavailable("s3://b/p", "config", "ConnectionRefusedError: refused")

    reach = Reachability(ttl=60, timeout=0.2)
    start = time.monotonic()
    await asyncio.gather(reach.refresh({"hang": hang, "down": refused}), reach.refresh({"hang": hang}))
    assert time.monotonic() - start < 2
    assert len(calls) == 1, "concurrent status requests share one probe"
    hung, down = reach.describe("hang"), reach.describe("down")
    assert hung["reachable"] is False and hung["error"] == "no answer within 0.2 s"
    assert down["reachable"] is False and "refused" in down["error"] and "s3://b/p" in down["error"]
    assert reach.describe("never")["reachable"] is None
