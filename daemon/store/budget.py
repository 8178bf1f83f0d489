"""A budget of bytes in flight: the backpressure that keeps memory bounded by configuration.

Like a semaphore counted in bytes. A request larger than the whole budget is let through
when nothing else is in flight, so an oversized item slows things down but never deadlocks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.error: BaseException | None = None
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        """Wait until n more bytes fit; raise the error given to fail(), if any."""
        async with self._cond:
            while self.error is None and n > 0 and self.used and self.used + n > self.limit:
                await self._cond.wait()
            if self.error is not None:
                raise self.error
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()

    async def fail(self, exc: BaseException) -> None:
        """Wake every waiter with exc: the consumer that would release bytes has died."""
        async with self._cond:
            self.error = exc
            self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self.acquire(n)
        try:
            yield
        finally:
            await self.release(n)
