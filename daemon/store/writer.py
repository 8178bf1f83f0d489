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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from gitmld.daemon.store import codec
from gitmld.daemon.store.budget import ByteBudget
from gitmld.daemon.store.chunker import Chunk, StreamChunker, TensorInfo
from gitmld.daemon.store.index_db import IndexDB
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.local_cache import HostCache, NewChunk
from gitmld.daemon.store.manifest import Manifest, ManifestBuilder

Runner = Callable[..., Awaitable[Any]]
HASH_BATCH = 4 << 20


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
    sealed: list[bytes] = field(default_factory=list)


class PutPipeline:
    def __init__(self, *, keys: RepoKeys, cache: HostCache, run_cpu: Runner, run_hash: Runner,
                 run_io: Runner, chunk_avg_size: int, level: int, batch_bytes: int, max_in_flight: int,
                 on_sealed: Callable[[list[bytes]], None], stats: PutStats) -> None:
        self._keys = keys
        self._cache = cache
        self._run_cpu = run_cpu
        self._run_hash = run_hash
        self._run_io = run_io
        self._avg = chunk_avg_size
        self._level = level
        self._batch_bytes = batch_bytes
        self._max_in_flight = max_in_flight
        self._on_sealed = on_sealed
        self._stats = stats

    async def run(self, stream: AsyncIterator[bytes]) -> PutOutcome:
        chunker = StreamChunker(self._avg, tensor_aware=True)
        builder = ManifestBuilder()
        budget = ByteBudget(self._max_in_flight)
        queue: asyncio.Queue[tuple[asyncio.Future[list[NewChunk]], int] | None] = asyncio.Queue()
        appender = asyncio.create_task(self._append_loop(queue, builder, budget))
        hasher = hashlib.sha256()
        hashing: asyncio.Future[None] | None = None
        hash_buf: list[bytes] = []
        hash_bytes = 0
        batch: list[Chunk] = []
        batch_bytes = 0
        size = 0

        async def submit() -> None:
            nonlocal batch, batch_bytes
            if batch:
                await budget.acquire(batch_bytes)
                fut = self._run_cpu(_encode_batch, self._keys, self._cache.db, batch, self._level)
                queue.put_nowait((asyncio.ensure_future(fut), batch_bytes))
                batch, batch_bytes = [], 0

        try:
            async for data in stream:
                if not data:
                    continue
                size += len(data)
                hash_buf.append(data)
                hash_bytes += len(data)
                if hash_bytes >= HASH_BATCH:
                    if hashing is not None:
                        await hashing
                    hashing = asyncio.ensure_future(self._run_hash(hash_all, hasher, hash_buf))
                    hash_buf, hash_bytes = [], 0
                for chunk in chunker.feed(data):
                    batch.append(chunk)
                    batch_bytes += len(chunk.data)
                    if batch_bytes >= self._batch_bytes:
                        await submit()
            for chunk in chunker.finish():
                batch.append(chunk)
                batch_bytes += len(chunk.data)
            await submit()
            queue.put_nowait(None)
            sealed = await appender
            if hashing is not None:
                await hashing
            await self._run_hash(hash_all, hasher, hash_buf)
        except BaseException:
            appender.cancel()
            await asyncio.gather(appender, return_exceptions=True)
            raise
        self._stats.bytes_in += size
        tensors = chunker.tensors
        manifest = builder.build("sha256:" + hasher.hexdigest(), size,
                                 [asdict(t) for t in tensors] if tensors is not None else None, chunker.metadata)
        return PutOutcome(manifest, tensors, sealed)

    async def _append_loop(self, queue: asyncio.Queue[tuple[asyncio.Future[list[NewChunk]], int] | None],
                           builder: ManifestBuilder, budget: ByteBudget) -> list[bytes]:
        """Append encoded batches in stream order; record every chunk's location."""
        sealed_all: list[bytes] = []
        try:
            while (item := await queue.get()) is not None:
                fut, nbytes = item
                chunks = await fut
                result = await self._run_io(self._cache.append_new, chunks)
                for chunk, loc in zip(chunks, result.locs, strict=True):
                    builder.add(chunk.cid, chunk.plain_len, loc.pack_id, loc.offset, loc.stored_len)
                s = self._stats
                s.new_chunks += result.new_chunks
                s.new_chunk_bytes += result.new_plain
                s.stored_bytes += result.new_stored
                s.dedup_chunks += len(chunks) - result.new_chunks
                if result.sealed:
                    sealed_all += result.sealed
                    self._on_sealed(result.sealed)
                await budget.release(nbytes)
        except BaseException as exc:
            await budget.fail(exc)
            while not queue.empty():  # let encodes already started finish quietly
                left = queue.get_nowait()
                if left is not None:
                    left[0].add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        return sealed_all


def hash_all(hasher: Any, pieces: list[bytes]) -> None:
    for p in pieces:
        hasher.update(p)


def _encode_batch(keys: RepoKeys, db: IndexDB, chunks: list[Chunk], level: int) -> list[NewChunk]:
    """Worker thread: ids for a batch, then encode the chunks the host index does not know."""
    cids = [codec.chunk_id(keys, c.data) for c in chunks]
    known = db.known(cids)
    out = []
    for c, cid in zip(chunks, cids, strict=True):
        if cid in known:
            out.append(NewChunk(cid, len(c.data), None))
        else:
            known.add(cid)  # a repeat inside the batch is appended once
            out.append(NewChunk(cid, len(c.data), codec.encode_chunk(keys, cid, c.data, c.hint, level)))
    return out
