"""The put pipeline: stream -> sha256 + chunks -> ids, dedup, encode (thread pool) -> open pack.

Stages overlap: the loop thread chunks, a hash thread hashes the whole stream, the CPU pool
computes chunk ids and encodes batches of chunks (zstd and AES-GCM release the GIL, so both
cores work), and the I/O thread appends the results, in stream order, to the open pack
segment and records them in LMDB. At most `max_in_flight` bytes of chunks are between the
chunker and the pack, so memory is bounded whatever the file size.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gitmld.daemon.store import codec
from gitmld.daemon.store.budget import ByteBudget
from gitmld.daemon.store.chunker import Chunk, StreamChunker, TensorInfo
from gitmld.daemon.store.index_db import IndexDB
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.local_cache import HostCache, NewChunk
from gitmld.daemon.store.manifest import Manifest, ManifestBuilder

Runner = Callable[..., Awaitable[Any]]
HASH_BATCH = 4 << 20
FEED_BYTES = 4 << 20  # stream bytes joined per chunker call


@dataclass(slots=True)
class PutStats:
    bytes_in: int = 0  # plaintext bytes put
    new_chunks: int = 0
    new_chunk_bytes: int = 0  # plaintext of chunks stored for the first time
    stored_bytes: int = 0  # encoded bytes appended to packs
    dedup_chunks: int = 0


@dataclass(slots=True)
class PutOutcome:
    manifest: Manifest
    tensors: list[TensorInfo] | None


class PutPipeline:
    def __init__(self, *, keys: RepoKeys, cache: HostCache, run_cpu: Runner, run_hash: Runner,
                 run_io: Runner, chunk_avg_size: int, level: int, batch_bytes: int, max_in_flight: int,
                 stats: PutStats) -> None:
        self._keys = keys
        self._cache = cache
        self._run_cpu = run_cpu
        self._run_hash = run_hash
        self._run_io = run_io
        self._avg = chunk_avg_size
        self._level = level
        self._batch_bytes = batch_bytes
        self._max_in_flight = max_in_flight
        self._stats = stats

    async def run(self, stream: AsyncIterator[bytes]) -> PutOutcome:
        chunker = StreamChunker(self._avg, tensor_aware=True, defer_digests=True)
        builder = ManifestBuilder()
        budget = ByteBudget(self._max_in_flight)
        queue = _Batches()
        appender = asyncio.create_task(self._append_loop(queue, builder, budget))
        hasher = hashlib.sha256()
        hashing: asyncio.Future[None] | None = None
        pending: list[bytes] = []
        pending_bytes = 0
        batch: list[Chunk] = []
        batch_bytes = 0
        size = 0

        async def submit() -> None:
            nonlocal batch, batch_bytes
            if batch:
                await budget.acquire(batch_bytes)
                fut = self._run_cpu(_encode_batch, self._keys, self._cache.db, batch, self._level)
                queue.put((asyncio.ensure_future(fut), batch_bytes))
                batch, batch_bytes = [], 0

        async def take(chunks: list[Chunk]) -> None:
            nonlocal batch_bytes
            for chunk in chunks:
                batch.append(chunk)
                batch_bytes += len(chunk.data)
                if batch_bytes >= self._batch_bytes:
                    await submit()

        async def feed() -> None:
            """Join the pending pieces into one immutable buffer: one copy, then the chunks are
            views of it and the hash and chunk calls each see megabytes at a time."""
            nonlocal hashing, pending, pending_bytes
            buf = b"".join(pending)
            pending, pending_bytes = [], 0
            if hashing is not None:
                await hashing
            chunks = chunker.feed(buf)
            hashing = asyncio.ensure_future(self._run_hash(hash_stream, hasher, buf, chunker.take_digest_work()))
            await take(chunks)

        try:
            async for data in stream:
                if not data:
                    continue
                size += len(data)
                pending.append(data)
                pending_bytes += len(data)
                if pending_bytes >= FEED_BYTES:
                    await feed()
            await feed()
            await take(chunker.finish())
            await submit()
            queue.put(None)
            await appender
            if hashing is not None:
                await hashing
            await self._run_hash(hash_stream, hasher, b"", chunker.take_digest_work())
        except BaseException:
            appender.cancel()
            await asyncio.gather(appender, return_exceptions=True)
            raise
        self._stats.bytes_in += size
        tensors = chunker.tensors
        manifest = builder.build("sha256:" + hasher.hexdigest(), size,
                                 [asdict(t) for t in tensors] if tensors is not None else None, chunker.metadata)
        return PutOutcome(manifest, tensors)

    async def _append_loop(self, queue: _Batches, builder: ManifestBuilder, budget: ByteBudget) -> None:
        """Append encoded batches in stream order and record every chunk's location. Batches
        already encoded when one is taken go into the same append (one LMDB commit)."""
        try:
            while (first := await queue.get()) is not None:
                group = [(await first[0], first[1])]
                while (nxt := queue.peek()) is not None and nxt[0].done():
                    queue.pop()
                    group.append((nxt[0].result(), nxt[1]))
                chunks = [c for batch, _ in group for c in batch]
                result = await self._run_io(self._cache.append_new, chunks)
                for chunk, loc in zip(chunks, result.locs, strict=True):
                    builder.add(chunk.cid, chunk.plain_len, loc.pack_id, loc.offset, loc.stored_len)
                s = self._stats
                s.new_chunks += result.new_chunks
                s.new_chunk_bytes += result.new_plain
                s.stored_bytes += result.new_stored
                s.dedup_chunks += len(chunks) - result.new_chunks
                await budget.release(sum(n for _, n in group))
        except BaseException as exc:
            await budget.fail(exc)
            for fut, _ in queue.drain():  # let encodes already started finish quietly
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise


class _Batches:
    """FIFO of (encode future, plaintext bytes) with a peek; None marks the end."""

    def __init__(self) -> None:
        self._items: deque[tuple[asyncio.Future[list[NewChunk]], int] | None] = deque()
        self._ready = asyncio.Event()

    def put(self, item: tuple[asyncio.Future[list[NewChunk]], int] | None) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> tuple[asyncio.Future[list[NewChunk]], int] | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def peek(self) -> tuple[asyncio.Future[list[NewChunk]], int] | None:
        return self._items[0] if self._items else None

    def pop(self) -> None:
        self._items.popleft()

    def drain(self) -> list[tuple[asyncio.Future[list[NewChunk]], int]]:
        items = [i for i in self._items if i is not None]
        self._items.clear()
        return items


def hash_stream(hasher: Any, buf: bytes, digest_work: list[tuple[Any, memoryview]]) -> None:
    """Hash thread: the whole-file SHA-256 and the tensors' digests (hashlib and BLAKE3 release
    the GIL on large buffers, so this runs beside the chunker and the encoders)."""
    hasher.update(buf)
    for h, piece in digest_work:
        h.update(piece)


def hash_all(hasher: Any, pieces: list[bytes]) -> None:
    for p in pieces:
        hasher.update(p)


def _encode_batch(keys: RepoKeys, db: IndexDB, chunks: list[Chunk], level: int) -> list[NewChunk]:
    """Worker thread: ids for a batch, then encode the chunks the host index does not know."""
    cids = [codec.chunk_id(keys, c.data) for c in chunks]
    known = db.known(cids)
    aead = AESGCM(keys.data_key)
    out = []
    for c, cid in zip(chunks, cids, strict=True):
        if cid in known:
            out.append(NewChunk(cid, len(c.data), None))
        else:
            known.add(cid)  # a repeat inside the batch is appended once
            out.append(NewChunk(cid, len(c.data), codec.encode_chunk(keys, cid, c.data, c.hint, level, aead)))
    return out
