"""Background uploads yield to puts (StoreOptions.upload_while_putting); a flush never waits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gitmld.daemon.__main__ import upload_policy
from gitmld.daemon.store.pack import object_name
from gitmld.daemon.store.transfer import PackUploader


class RecordingRemote:
    """Only what PackUploader uses: put_file, recording the order of uploads."""

    def __init__(self) -> None:
        self.uploaded: list[str] = []
        self.running = self.most_at_once = 0

    async def put_file(self, name: str, path: Path, *, progress: object = None) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        for _ in range(5):
            await asyncio.sleep(0)
        self.running -= 1
        self.uploaded.append(name)


def make_uploader(tmp_path: Path, remote: RecordingRemote,
                  while_putting: int | None) -> tuple[PackUploader, set[bytes]]:
    queued: set[bytes] = set()
    for i in range(3):
        (tmp_path / f"{i}").write_bytes(b"x" * 1000)
        queued.add(bytes([i]) * 16)

    async def uploaded(pack_id: bytes) -> None:
        queued.discard(pack_id)

    uploader = PackUploader(remote, lambda pid: tmp_path / f"{pid[0]}", lambda pid: pid in queued, uploaded,  # type: ignore[arg-type]
                            concurrency=4, max_bytes=1 << 20, while_putting=while_putting)
    return uploader, queued


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_background_uploads_wait_for_the_put_to_end(tmp_path: Path) -> None:
    remote = RecordingRemote()
    uploader, queued = make_uploader(tmp_path, remote, while_putting=0)
    uploader.putting(+1)
    task = uploader.submit(bytes([0]) * 16)
    await settle()
    assert remote.uploaded == [] and not task.done()
    uploader.putting(-1)
    assert await asyncio.wait_for(task, 5) == 1000
    assert len(remote.uploaded) == 1 and bytes([0]) * 16 not in queued


async def test_a_flush_does_not_wait_for_the_put(tmp_path: Path) -> None:
    remote = RecordingRemote()
    uploader, _ = make_uploader(tmp_path, remote, while_putting=0)
    uploader.putting(+1)
    background = uploader.submit(bytes([1]) * 16)
    await settle()
    assert remote.uploaded == []
    # the flush asks for the waiting pack and another: both go up while the put still runs
    assert await asyncio.wait_for(uploader.wait([bytes([1]) * 16, bytes([2]) * 16]), 5) == 2000
    assert sorted(remote.uploaded) == sorted(object_name(bytes([i]) * 16) for i in (1, 2))
    assert background.done()
    uploader.putting(-1)


async def test_an_allowance_lets_that_many_bytes_up_during_a_put(tmp_path: Path) -> None:
    remote = RecordingRemote()
    uploader, _ = make_uploader(tmp_path, remote, while_putting=1000)
    uploader.putting(+1)
    tasks = [uploader.submit(bytes([i]) * 16) for i in range(3)]
    done, pending = await asyncio.wait(tasks, timeout=5)
    assert len(done) == 3 and not pending
    assert remote.most_at_once == 1  # the 1000-byte allowance holds one 1000-byte pack at a time
    uploader.putting(-1)


async def test_no_limit_uploads_at_once(tmp_path: Path) -> None:
    remote = RecordingRemote()
    uploader, _ = make_uploader(tmp_path, remote, while_putting=None)
    uploader.putting(+1)
    tasks = [uploader.submit(bytes([i]) * 16) for i in range(3)]
    assert sum(await asyncio.wait_for(asyncio.gather(*tasks), 5)) == 3000
    assert remote.most_at_once == 3


def test_daemon_option_parsing() -> None:
    assert upload_policy("") == {}
    assert upload_policy("0") == {"upload_while_putting": 0}
    assert upload_policy("64MiB") == {"upload_while_putting": 64 << 20}
    assert upload_policy("Unlimited") == {"upload_while_putting": None}
    for bad in ("lots", "-1"):
        with pytest.raises(SystemExit, match="upload-while-putting"):
            upload_policy(bad)
