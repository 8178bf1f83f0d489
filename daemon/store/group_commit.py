"""Group commit: writes that arrive while one is running are merged into the next one.

Each host-cache write ends in an LMDB commit, and a commit waits for an fsync (milliseconds).
One commit per request would cap throughput at (request size / fsync time); merging whatever
queued up meanwhile makes the commit rate adapt to the disk instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """`await submit(items)` returns when `write(merged items)` has run for them."""

    def __init__(self, write: Callable[[list[T]], Awaitable[Any]]) -> None:
        self._write = write
        self._pending: list[tuple[list[T], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, items: list[T]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((items, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="group commit")
        await fut

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            merged = [item for items, _ in batch for item in items]
            try:
                await self._write(merged)
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def close(self) -> None:
        """Wait for the write in progress (and what queued behind it)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
