"""The pack upload queue: sealed packs go up in the background, a bounded number at a time.

After Git LFS's tq.TransferQueue: callers submit, the queue decides when; each pack has at
most one upload in flight however often it is submitted (flush and the background both
ask for it); retries with backoff live in the remote. The queue itself is persistent in
LMDB (index_db `queue`), so this object only tracks what is in flight in this process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from gitmld.daemon.remote.base import Remote
from gitmld.daemon.store.budget import ByteBudget
from gitmld.daemon.store.pack import object_name
from gitmld.daemon.store.progress import Transfer, TransferBoard

log = logging.getLogger(__name__)


class PackUploader:
    def __init__(self, remote: Remote, path_of: Callable[[bytes], Path], is_queued: Callable[[bytes], bool],
                 on_uploaded: Callable[[bytes], Awaitable[None]], concurrency: int, max_bytes: int,
                 board: TransferBoard | None = None, while_putting: int | None = None) -> None:
        """while_putting: bytes of background uploads allowed while a put runs (None: no limit)."""
        self._remote = remote
        self._path_of = path_of
        self._is_queued = is_queued
        self._on_uploaded = on_uploaded
        self._slots = asyncio.Semaphore(concurrency)
        # A remote may hold a whole pack in memory while it uploads (S3 below its multipart
        # threshold does): bound the bytes of packs in flight, not only their number.
        self._bytes = ByteBudget(max_bytes)
        self._tasks: dict[bytes, asyncio.Task[int]] = {}
        self._board = board if board is not None else TransferBoard()
        self._progress: dict[bytes, Transfer] = {}  # packs uploading now (slot and budget held)
        self.failures = 0
        # Background uploads yield to puts: while a put runs they may hold at most
        # `while_putting` bytes (0: none), so on a small machine the put gets the CPU and the
        # uploads catch up after it. Packs a flush waits for are urgent and never wait here.
        self.while_putting = while_putting
        self._putting = 0
        self._background_bytes = 0
        self._urgent: set[bytes] = set()
        self._admission_changed = asyncio.Event()

    def submit(self, pack_id: bytes) -> asyncio.Task[int]:
        """Upload pack_id unless an upload of it is already running; the task's result is
        the number of bytes uploaded."""
        task = self._tasks.get(pack_id)
        if task is None or task.done():
            task = asyncio.create_task(self._upload(pack_id), name=f"upload {object_name(pack_id)}")
            self._tasks[pack_id] = task
            task.add_done_callback(functools.partial(self._finished, pack_id))
        return task

    async def wait(self, pack_ids: Iterable[bytes],
                   on_done: Callable[[bytes, int], None] | None = None) -> int:
        """Submit (if needed) and wait for every pack; raise the first failure. on_done(pack
        id, bytes uploaded) as each finishes (flush progress)."""
        tasks = []
        pack_ids = list(pack_ids)
        self._urgent.update(pack_ids)
        self._admission_changed.set()
        for pid in pack_ids:
            task = self.submit(pid)
            if on_done is not None:
                task.add_done_callback(functools.partial(_report_done, on_done, pid))
            tasks.append(task)
        if not tasks:
            return 0
        return sum(await asyncio.gather(*tasks))

    @property
    def in_flight(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())

    def uploaded_of(self, pack_id: bytes) -> int:
        """Bytes of pack_id's running upload the remote has confirmed (parts done); 0 when not running."""
        t = self._progress.get(pack_id)
        return t.done if t is not None else 0

    async def _upload(self, pack_id: bytes) -> int:
        if not self._is_queued(pack_id):
            return 0  # uploaded meanwhile (a finished upload leaves no task behind)
        path = self._path_of(pack_id)
        size = path.stat().st_size
        background = await self._admit(pack_id, size)
        try:
            return await self._upload_admitted(pack_id, path, size)
        finally:
            if background:
                self._background_bytes -= size
                self._admission_changed.set()

    # -- yielding to puts -----------------------------------------------------------------
    def putting(self, delta: int) -> None:
        """A put started (+1) or ended (-1)."""
        self._putting += delta
        self._admission_changed.set()

    async def _admit(self, pack_id: bytes, size: int) -> bool:
        """Wait until this upload may start; True when it counts as background bytes."""
        if self.while_putting is None:
            return False
        while not (pack_id in self._urgent or not self._putting
                   or self._background_bytes + size <= self.while_putting):
            self._admission_changed.clear()  # every waiter re-checks after each change
            await self._admission_changed.wait()
        if pack_id in self._urgent:
            return False
        self._background_bytes += size
        return True

    async def _upload_admitted(self, pack_id: bytes, path: Path, size: int) -> int:
        async with self._bytes.hold(size), self._slots:
            if not self._is_queued(pack_id):
                return 0  # uploaded meanwhile (a finished upload leaves no task behind)
            name = object_name(pack_id)
            progress = self._board.start("upload", "pack", name, size)
            self._progress[pack_id] = progress
            try:
                await self._remote.put_file(name, path, progress=progress.advance)
            finally:
                self._board.finish(progress)
                del self._progress[pack_id]
        await self._on_uploaded(pack_id)
        return size

    def _finished(self, pack_id: bytes, task: asyncio.Task[int]) -> None:
        if self._tasks.get(pack_id) is task:
            del self._tasks[pack_id]
            self._urgent.discard(pack_id)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so a background failure is never "unhandled"
        if exc is not None:
            self.failures += 1
            log.warning("upload of %s failed (it stays queued; the next flush retries): %s",
                        object_name(pack_id), exc)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _report_done(on_done: Callable[[bytes, int], None], pack_id: bytes, task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is None:
        on_done(pack_id, task.result())
