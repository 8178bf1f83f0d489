"""The read scheduler: a file's chunks, in order, from the host cache or the remote.

Reads run ahead of the consumer by a window of plaintext bytes (memory is bounded by the
window, not by the file). Chunks missing from the cache are fetched with coalesced ranged
GETs: neighbouring chunks of one pack become one request of up to `max_range` bytes, and up
to `concurrency` requests run at once. Every chunk is decoded (AEAD + chunk id verified) in
the thread pool. Fetches are single-flight per chunk: readers that want a chunk already on
its way share that fetch. Fetched blobs are appended to the host cache.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gitmld.daemon.remote.base import Remote, RemoteNotFound
from gitmld.daemon.store import codec
from gitmld.daemon.store.budget import ByteBudget
from gitmld.daemon.store.errors import CorruptObject
from gitmld.daemon.store.group_commit import GroupCommit
from gitmld.daemon.store.index_db import RemoteLoc
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.local_cache import HostCache
from gitmld.daemon.store.manifest import ChunkRef, Manifest
from gitmld.daemon.store.pack import object_name

log = logging.getLogger(__name__)
Runner = Callable[..., Awaitable[Any]]
Plain = bytes | memoryview  # a chunk's plaintext: grouped chunks come back as views of their array


@dataclass(frozen=True, slots=True)
class ReadOptions:
    read_ahead: int = 32 << 20  # plaintext bytes planned ahead of the consumer
    max_range: int = 4 << 20  # largest coalesced GET (and local read)
    max_gap: int = 256 << 10  # unneeded bytes a GET may span to join two chunks
    max_fetching: int = 32 << 20  # fetched bytes not yet in the host cache, all readers together


@dataclass(slots=True)
class ReadStats:
    cache_hits: int = 0
    cache_misses: int = 0
    corrupt_cache_entries: int = 0


class _Group:
    """Neighbouring chunks read with one request (one pack range or one segment range)."""

    __slots__ = ("absorbed_by", "end", "futures", "refs", "source", "start", "stored", "verify_ids")

    def __init__(self, source: bytes, start: int, end: int, verify_ids: bool = True) -> None:
        self.source, self.start, self.end = source, start, end
        self.verify_ids = verify_ids
        self.refs: list[ChunkRef] = []
        self.futures: list[asyncio.Future[Plain]] = []
        # done once the group's chunks are in the host cache (or the fetch failed)
        self.stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.absorbed_by: _Group | None = None  # another GET took over this group's chunks

    def fits(self, source: bytes, offset: int, length: int, opts: ReadOptions) -> bool:
        return (source == self.source and self.end <= offset <= self.end + opts.max_gap
                and offset + length - self.start <= opts.max_range)

    def absorb(self, other: _Group, opts: ReadOptions) -> bool:
        """Take over a neighbouring group of the same pack when the joined range stays one GET
        (within max_gap and max_range); its chunks then arrive with ours."""
        start, end = min(self.start, other.start), max(self.end, other.end)
        gap = max(other.start - self.end, self.start - other.end)  # < 0: the ranges overlap
        if other.source != self.source or gap > opts.max_gap or end - start > opts.max_range:
            return False
        self.start, self.end = start, end
        self.refs += other.refs
        self.futures += other.futures
        other.refs, other.futures, other.absorbed_by = [], [], self
        return True


class ChunkReader:
    def __init__(self, *, remote: Remote, cache: HostCache, keys: RepoKeys, run_cpu: Runner,
                 run_io: Runner, concurrency: int, options: ReadOptions) -> None:
        self._remote = remote
        self._cache = cache
        self._keys = keys
        self._run_cpu = run_cpu
        self._run_io = run_io
        self._slots = asyncio.Semaphore(concurrency)
        # A GET's bytes count until they are written to the host cache: when the disk is slower
        # than the network, fetching waits instead of piling ranges up in memory.
        self._fetching = ByteBudget(options.max_fetching)
        self._cache_writes: GroupCommit[tuple[bytes, memoryview, RemoteLoc]] = GroupCommit(
            lambda items: self._run_io(self._cache.append_fetched, items))
        self._opts = options
        # chunk id -> (its plaintext, "it is in the host cache"): one fetch serves every reader
        self._inflight: dict[bytes, tuple[asyncio.Future[Plain], asyncio.Future[None]]] = {}
        # remote groups waiting for a GET slot, by pack: a GET that starts takes over the
        # neighbouring ones (the chunks of other files fetched at the same time, for instance)
        self._queued: dict[bytes, list[_Group]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = ReadStats()

    async def stream(self, manifest: Manifest, *, want_data: bool,
                     progress: Callable[[int], None] | None = None,
                     verify_ids: bool = True) -> AsyncIterator[bytes]:
        """Yield each chunk's plaintext in file order (want_data), or only make every chunk
        local (not want_data: yields nothing). progress(n): n more bytes of the file are in
        hand (for a fetch: in the host cache or on their way into it), chunk by chunk.
        verify_ids=False: host-cache chunks skip the keyed-id recomputation (AEAD is still
        checked); only for a caller that checks the whole file's SHA-256. Chunks from the
        remote are always fully verified before they enter the cache."""
        window = self._opts.read_ahead
        refs: Iterator[ChunkRef] = manifest.chunks()
        pending: deque[tuple[int, Awaitable[Any] | None]] = deque()
        caching: list[asyncio.Future[None]] = []  # fetches of this file still writing to the cache
        buffered = 0
        exhausted = False
        while True:
            if not exhausted and buffered <= window // 2:
                step: list[ChunkRef] = []
                step_bytes = 0
                for ref in refs:
                    step.append(ref)
                    step_bytes += ref.plain_len
                    if buffered + step_bytes >= window:
                        break
                else:
                    exhausted = True
                waiters, stored = self._plan(step, want_data, verify_ids)
                pending.extend(zip((r.plain_len for r in step), waiters, strict=True))
                caching = [f for f in caching if not f.done()] + stored
                buffered += step_bytes
            if not pending:
                # when the file is read, it is also in the host cache
                await asyncio.gather(*caching, return_exceptions=True)
                return
            size, waiter = pending.popleft()
            data = await waiter if waiter is not None else b""
            buffered -= size
            if progress is not None:
                progress(size)
            if want_data:
                yield data

    async def close(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._cache_writes.close()

    # -- planning -----------------------------------------------------------------------------

    def _plan(self, refs: list[ChunkRef], want_data: bool,
              verify_ids: bool = True) -> tuple[list[Awaitable[Any] | None], list[asyncio.Future[None]]]:
        """Start getting every chunk of refs: one awaitable per ref (None when nothing is
        needed), and the "stored in the cache" futures of the fetches involved."""
        loop = asyncio.get_running_loop()
        out: list[Awaitable[Any] | None] = []
        stored: set[asyncio.Future[None]] = set()
        local_group: _Group | None = None
        remote_group: _Group | None = None
        locs = self._cache.db.local_locs(r.cid for r in refs)
        for ref, loc in zip(refs, locs, strict=True):
            if loc is not None and loc.seg_id not in self._cache.sizes:
                loc = None  # its segment was evicted
            shared = self._inflight.get(ref.cid)
            if shared is not None:
                out.append(shared[0] if want_data else shared[1])
                stored.add(shared[1])
                continue
            if loc is not None:
                self.stats.cache_hits += 1
                if not want_data:
                    out.append(None)
                    continue
                if local_group is None or not local_group.fits(loc.seg_id, loc.offset, loc.length, self._opts):
                    self._start_local(local_group)
                    local_group = _Group(loc.seg_id, loc.offset, loc.offset, verify_ids)
                fut = loop.create_future()
                local_group.refs.append(ref._replace(offset=loc.offset, stored_len=loc.length))
                local_group.futures.append(fut)
                local_group.end = loc.offset + loc.length
                out.append(fut)
                continue
            self.stats.cache_misses += 1
            if remote_group is None or not remote_group.fits(ref.pack_id, ref.offset, ref.stored_len, self._opts):
                self._start_remote(remote_group)
                remote_group = _Group(ref.pack_id, ref.offset, ref.offset)
                stored.add(remote_group.stored)
            fut = loop.create_future()
            self._inflight[ref.cid] = (fut, remote_group.stored)
            remote_group.refs.append(ref)
            remote_group.futures.append(fut)
            remote_group.end = ref.offset + ref.stored_len
            out.append(fut if want_data else remote_group.stored)
        self._start_local(local_group)
        self._start_remote(remote_group)
        return out, list(stored)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_local(self, group: _Group | None) -> None:
        if group is not None:
            self._spawn(self._read_local(group))

    def _start_remote(self, group: _Group | None) -> None:
        if group is not None:
            self._spawn(self._fetch_remote(group))

    # -- the host cache -----------------------------------------------------------------------

    async def _read_local(self, g: _Group) -> None:
        try:
            results = await self._run_cpu(_read_and_decode, self._cache, self._keys, g.source, g.start,
                                          g.end - g.start, g.refs, g.verify_ids)
        except BaseException as exc:
            _fail(g.futures, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for ref, fut, plain in zip(g.refs, g.futures, results, strict=True):
            if plain is not None:
                _resolve(fut, plain)
                continue
            # A corrupt or vanished cache entry: forget it and get the chunk from the remote.
            self.stats.corrupt_cache_entries += 1
            log.warning("host cache entry of chunk %s in segment %s failed verification; refetching",
                        ref.cid.hex()[:16], g.source.hex())
            self._spawn(self._refetch(ref, g.source, fut))

    async def _refetch(self, local_ref: ChunkRef, seg_id: bytes, fut: asyncio.Future[Plain]) -> None:
        self.stats.cache_misses += 1
        try:
            await self._run_io(self._cache.drop_local, local_ref.cid, seg_id)
            remote = await self._run_io(self._cache.db.remote_loc, local_ref.cid)
            if remote is None:
                raise CorruptObject(f"chunk {local_ref.cid.hex()} is corrupt in the host cache and its"
                                    " location in the remote is unknown", object=local_ref.cid.hex())
            ref = ChunkRef(local_ref.cid, local_ref.plain_len, remote.pack_id, remote.offset, remote.stored_len)
            shared = self._inflight.get(ref.cid)
            if shared is None:
                self._start_remote(_single(ref, self._inflight))
                shared = self._inflight[ref.cid]
            _resolve(fut, await shared[0])
        except BaseException as exc:
            _fail([fut], exc)
            if not isinstance(exc, Exception):
                raise

    # -- the remote ---------------------------------------------------------------------------

    async def _fetch_remote(self, g: _Group) -> None:
        name = object_name(g.source)
        try:
            async with self._fetching.hold(g.end - g.start):
                await self._fetch_and_cache(g, name)
        except BaseException as exc:
            _fail(g.futures, exc)
            _fail([g.stored], exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if not g.stored.done():
                g.stored.set_result(None)
            for ref, fut in zip(g.refs, g.futures, strict=True):
                entry = self._inflight.get(ref.cid)
                if entry is not None and entry[0] is fut:
                    del self._inflight[ref.cid]

    async def _fetch_and_cache(self, g: _Group, name: str) -> None:
        queue = self._queued.setdefault(g.source, [])
        queue.append(g)
        try:
            async with self._slots:
                self._dequeue(g)
                if g.absorbed_by is None:
                    self._absorb_queued(g)
                    try:
                        data = await self._remote.get_range(name, g.start, g.end - g.start)
                    except RemoteNotFound as exc:
                        raise CorruptObject(
                            f"pack {name} is missing from the remote {self._remote.url} (a manifest names it):"
                            " the repository is damaged", object=name) from exc
        finally:
            self._dequeue(g)
        if g.absorbed_by is not None:  # another GET brings our chunks: done when it is cached
            await asyncio.shield(g.absorbed_by.stored)
            return
        if len(data) < g.end - g.start:
            raise CorruptObject(f"pack {name} in {self._remote.url} is truncated: asked for"
                                f" {g.end - g.start} bytes at {g.start}, got {len(data)}", object=name)
        plains = await self._run_cpu(_decode_remote, self._keys, name, self._remote.url, g.refs, data, g.start)
        for fut, plain in zip(g.futures, plains, strict=True):
            _resolve(fut, plain)
        del plains
        view = memoryview(data)  # blobs go to the cache as views of the one range buffer: no copies
        items = [(r.cid, view[r.offset - g.start : r.offset - g.start + r.stored_len],
                  RemoteLoc(g.source, r.offset, r.stored_len, r.plain_len)) for r in g.refs]
        try:
            await self._cache_writes.submit(items)
        except Exception as exc:  # the read succeeded; only caching failed
            log.warning("could not add chunks of %s to the host cache: %s", name, exc)


    def _dequeue(self, g: _Group) -> None:
        queue = self._queued.get(g.source)
        if queue is not None and g in queue:
            queue.remove(g)
            if not queue:
                del self._queued[g.source]

    def _absorb_queued(self, g: _Group) -> None:
        """Before g's GET: take over every queued group of its pack that joins its range."""
        queue = self._queued.get(g.source, [])
        while taken := [q for q in queue if g.absorb(q, self._opts)]:
            for q in taken:
                queue.remove(q)
                g.stored.add_done_callback(functools.partial(_follow, q.stored))
        if not queue:
            self._queued.pop(g.source, None)


def _follow(dest: asyncio.Future[None], src: asyncio.Future[None]) -> None:
    """An absorbed group is stored when the group that took it over is (or fails as it did)."""
    if dest.done():
        return
    if src.cancelled():
        dest.cancel()
    elif (exc := src.exception()) is not None:
        dest.set_exception(exc)
        dest.add_done_callback(_retrieve)
    else:
        dest.set_result(None)


def _single(ref: ChunkRef, inflight: dict[bytes, tuple[asyncio.Future[Plain], asyncio.Future[None]]]) -> _Group:
    g = _Group(ref.pack_id, ref.offset, ref.offset + ref.stored_len)
    fut: asyncio.Future[Plain] = asyncio.get_running_loop().create_future()
    inflight[ref.cid] = (fut, g.stored)
    g.refs.append(ref)
    g.futures.append(fut)
    return g


def _resolve(fut: asyncio.Future[Plain], value: Plain) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for fut in futures:
        if not fut.done():
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
                fut.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark the exception seen: a reader that gave up must not cause 'never retrieved' noise."""
    if not fut.cancelled():
        fut.exception()


def _read_and_decode(cache: HostCache, keys: RepoKeys, seg_id: bytes, start: int, length: int,
                     refs: list[ChunkRef], verify_ids: bool = True) -> list[Plain | None]:
    """Worker thread: one pread for the group, then decode each chunk; None where a chunk
    does not verify (or the segment is gone)."""
    buf = _read_buffer(length)
    try:
        data = buf[: cache.read_into(seg_id, start, buf[:length])]
    except OSError:
        return [None] * len(refs)
    out: list[Plain | None] = []
    aead = AESGCM(keys.data_key)
    for r in refs:
        blob = data[r.offset - start : r.offset - start + r.stored_len]
        if len(blob) != r.stored_len:
            out.append(None)
            continue
        try:
            out.append(codec.decode_chunk(keys, r.cid, blob, aead, verify_id=verify_ids))
        except codec.CorruptChunk:
            out.append(None)
    return out


_thread_buffers = threading.local()


def _read_buffer(size: int) -> memoryview:
    """This worker thread's buffer for group reads, grown as needed: the decoded chunks never
    point into it, so each group reuses it instead of faulting in megabytes of fresh memory."""
    buf: bytearray | None = getattr(_thread_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = _thread_buffers.buf = bytearray(size)
    return memoryview(buf)


def _decode_remote(keys: RepoKeys, name: str, url: str, refs: list[ChunkRef], data: bytes,
                   start: int) -> list[Plain]:
    """Worker thread: decode and verify every chunk of a fetched range."""
    out = []
    view = memoryview(data)
    aead = AESGCM(keys.data_key)
    for r in refs:
        blob = view[r.offset - start : r.offset - start + r.stored_len]
        try:
            out.append(codec.decode_chunk(keys, r.cid, blob, aead))
        except codec.CorruptChunk as exc:
            raise CorruptObject(
                f"pack {name} in {url} is corrupt: chunk {r.cid.hex()[:16]} at offset {r.offset}"
                f" ({r.stored_len} bytes) does not verify: {exc}", object=name) from exc
    return out

