"""The small concurrency pieces under the store: byte budgets and group commit."""

from __future__ import annotations

import asyncio

import pytest
from gitmld.daemon.store.budget import ByteBudget
from gitmld.daemon.store.group_commit import GroupCommit


async def test_budget_blocks_until_bytes_are_released() -> None:
    budget = ByteBudget(10)
    await budget.acquire(6)
    waiter = asyncio.create_task(budget.acquire(6))
    await asyncio.sleep(0)  # let the waiter run up to its wait (a yield, not a timing guess)
    assert not waiter.done() and budget.used == 6
    await budget.release(6)
    await asyncio.wait_for(waiter, 5)
    assert budget.used == 6


async def test_budget_lets_an_oversized_item_through_when_idle() -> None:
    budget = ByteBudget(10)
    await asyncio.wait_for(budget.acquire(100), 5)
    assert budget.used == 100
    async with budget.hold(0):
        pass
    await budget.release(100)
    assert budget.used == 0


async def test_budget_failure_wakes_waiters() -> None:
    budget = ByteBudget(1)
    await budget.acquire(1)
    waiter = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    await budget.fail(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        await asyncio.wait_for(waiter, 5)


async def test_group_commit_merges_what_queued_meanwhile() -> None:
    writes: list[list[int]] = []
    gate = asyncio.Event()

    async def write(items: list[int]) -> None:
        writes.append(items)
        await gate.wait()

    gc: GroupCommit[int] = GroupCommit(write)
    first = asyncio.create_task(gc.submit([1]))
    await asyncio.sleep(0)  # the first write is running (blocked on the gate)
    later = [asyncio.create_task(gc.submit([n, n])) for n in (2, 3)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert writes == [[1], [2, 2, 3, 3]]


async def test_group_commit_failure_reaches_every_submitter() -> None:
    async def write(items: list[int]) -> None:
        raise OSError("no space")

    gc: GroupCommit[int] = GroupCommit(write)
    results = await asyncio.gather(gc.submit([1]), gc.submit([2]), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    await gc.close()
