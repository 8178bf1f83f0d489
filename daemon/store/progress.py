"""Transfers in flight and flush progress: counters the data path bumps, readers snapshot.

`gitmld status` lists every upload and download in flight with bytes done, total and rate;
the `flush` op reports its bytes done against a total; the filter's deadline for delayed
smudges asks whether a fetch is still moving. All three read the same counters, which
advance as parts complete (a multipart part, a pack, a fetched range), never per byte, so
keeping them costs nothing measurable on the data path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

RATE_WINDOW = 2.0  # seconds: the rate is over the last 2-4 s, recent enough to follow changes
# What codec.seal_blob adds to a plaintext it stores raw (version byte, nonce, codec byte and
# length, GCM tag); it stores zstd only when that is smaller, so plain + this is an upper bound.
SEAL_OVERHEAD = 1 + 12 + 9 + 16


class Transfer:
    """One upload or download in flight. `advance` is called as parts complete."""

    __slots__ = ("_d0", "_d1", "_t0", "_t1", "direction", "done", "kind", "last_progress", "path",
                 "started", "total", "what")

    def __init__(self, direction: str, kind: str, what: str, total: int, *, path: str = "") -> None:
        now = time.monotonic()
        self.direction = direction  # "upload" | "download"
        self.kind = kind  # "pack" (upload), "fetch" (into the host cache), "read" (streamed to a client)
        self.what = what  # the pack's object name or the file's oid
        self.path = path  # the worktree path a client named, when it named one
        self.total = total  # bytes; 0 while unknown (a fetch before its manifest arrived)
        self.done = 0
        self.started = now
        self.last_progress = now  # when `done` last grew (the filter's stall deadline reads it)
        self._t0, self._d0, self._t1, self._d1 = now, 0, now, 0

    def advance(self, n: int) -> None:
        """n more bytes done; safe to call from a worker thread (plain attribute updates)."""
        if n <= 0:
            return
        now = time.monotonic()
        self.done += n
        self.last_progress = now
        if now - self._t1 >= RATE_WINDOW:  # two checkpoints: the rate needs no sample list
            self._t0, self._d0 = self._t1, self._d1
            self._t1, self._d1 = now, self.done

    def rate(self, now: float | None = None) -> float:
        """Bytes per second over the last RATE_WINDOW..2*RATE_WINDOW seconds (0 when stalled)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._t0
        return (self.done - self._d0) / elapsed if elapsed > 0 else 0.0

    def idle_seconds(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last_progress

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "direction": self.direction,
            "kind": self.kind,
            "what": self.what,
            "path": self.path,
            "done": self.done,
            "total": self.total,
            "rate": int(self.rate(now)),
            "seconds": round(now - self.started, 1),
            "idle_seconds": round(self.idle_seconds(now), 1),
        }


class TransferBoard:
    """The transfers in flight of one store, in the order they started."""

    def __init__(self) -> None:
        self._live: dict[int, Transfer] = {}

    def start(self, direction: str, kind: str, what: str, total: int, *, path: str = "") -> Transfer:
        t = Transfer(direction, kind, what, total, path=path)
        self._live[id(t)] = t
        return t

    def finish(self, t: Transfer) -> None:
        self._live.pop(id(t), None)

    def __iter__(self) -> Any:
        return iter(list(self._live.values()))

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [t.snapshot(now) for t in list(self._live.values())]


class FlushProgress:
    """Bytes one flush uploads: done against a total known once the flush has planned.

    The total is exact for packs (their files' sizes) and an upper bound for the index
    segment and manifests (plaintext + SEAL_OVERHEAD) until each is sealed, when it becomes
    exact; a pack that turns out to be uploaded already (by an earlier flush) leaves the
    total. So the total only shrinks towards the final `uploaded_bytes` and equals it at the
    end, except when other puts seal new packs during the flush and the index segment grows
    beyond its bound: the total then grows with it and never falls below `done`.
    """

    def __init__(self) -> None:
        self.planned = False
        self.total = 0
        self.objects = 0  # packs + index segment + manifests planned
        self._finished_bytes = 0  # packs finished, metadata uploaded
        self._packs: dict[bytes, int] = {}  # pack id -> size, while its upload runs
        self._pack_done: Callable[[bytes], int] = lambda pack_id: 0

    def plan(self, packs: dict[bytes, int], metadata_bound: int, metadata_objects: int,
             pack_done: Callable[[bytes], int]) -> None:
        self._packs = dict(packs)
        self._pack_done = pack_done
        self.total = sum(packs.values()) + metadata_bound
        self.objects = len(packs) + metadata_objects
        self.planned = True

    def pack_finished(self, pack_id: bytes, uploaded: int) -> None:
        size = self._packs.pop(pack_id, None)
        if size is None:
            return
        self.total -= size - uploaded
        self._finished_bytes += uploaded

    def metadata(self, bound: int, uploaded: int) -> None:
        """A metadata object planned at `bound` bytes was uploaded with `uploaded` bytes (0: skipped)."""
        self.total += uploaded - bound
        self._finished_bytes += uploaded
        self.total = max(self.total, self.done)

    @property
    def done(self) -> int:
        running = sum(min(self._pack_done(p), size) for p, size in list(self._packs.items()))
        return self._finished_bytes + running

    def frame(self) -> dict[str, Any]:
        """The flush op's PROGRESS payload."""
        done = self.done
        return {"what": "upload", "unit": "bytes", "done": done, "total": max(self.total, done),
                "objects": self.objects}


def sealed_bound(plain_sizes: Iterable[int]) -> int:
    """Upper bound of the sealed sizes of blobs with these plaintext sizes."""
    return sum(n + SEAL_OVERHEAD for n in plain_sizes)
