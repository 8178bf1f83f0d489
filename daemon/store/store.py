"""`ContentStore`: files in, files out, through the host cache and one remote repository.

The facade over the pieces: repository.py opens the bucket's repository, writer.py runs
puts into the open pack, transfer.py uploads sealed packs in the background, reader.py
streams files back, local_cache.py / index_db.py are the host cache. flush() is where
the crash-safe write order packs -> index -> manifests is enforced (FORMAT.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import hashlib
import inspect
import logging
import os
import time
from array import array
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gitmld.daemon.remote.base import Remote, RemoteError, RemoteNotFound, open_remote
from gitmld.daemon.store import remote_index
from gitmld.daemon.store.chunker import DEFAULT_AVG_SIZE, TensorInfo
from gitmld.daemon.store.errors import (
    CacheBusy,
    CorruptObject,
    InvalidRequest,
    NotDurable,
    NotFound,
    UnsupportedFormat,
)
from gitmld.daemon.store.local_cache import HostCache
from gitmld.daemon.store.manifest import RECORD, Manifest, decode_plain, oid_bytes, open_sealed, remote_name
from gitmld.daemon.store.progress import FlushProgress, Transfer, TransferBoard, sealed_bound
from gitmld.daemon.store.reader import ChunkReader, ReadOptions
from gitmld.daemon.store.repository import CONFIG_NAME, Repository, keyfile_path, open_repository
from gitmld.daemon.store.transfer import PackUploader
from gitmld.daemon.store.writer import HASH_BATCH, PutPipeline, PutStats, hash_all
from gitmld.proto.remote_config import RemoteConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
FlushHook = Callable[[str], Awaitable[None] | None]
RANGE_MANIFESTS = 16  # manifests (with their chunk offsets) kept for ranged reads


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Knobs that bound memory and disk; the remote's own options come from RemoteConfig."""

    cache_limit_bytes: int = 50 << 30  # segments beyond this are evicted, least recently used first
    chunk_avg_size: int = DEFAULT_AVG_SIZE  # for repositories created by this store
    read_ahead: int = 32 << 20  # plaintext bytes a reader plans ahead (bounds read memory)
    threads: int = max(2, os.cpu_count() or 2)  # CPU pool: chunk ids, zstd, AES-GCM
    max_range: int = 4 << 20  # largest coalesced GET (read_ahead / max_range GETs in flight)
    max_gap: int = 256 << 10  # unneeded bytes a GET may span to join two chunks
    max_fetching: int = 32 << 20  # fetched bytes not yet written to the host cache (all readers)
    put_batch_bytes: int = 2 << 20  # chunks per CPU-pool call
    put_in_flight_bytes: int = 16 << 20  # chunks between the chunker and the pack
    max_uploading: int = 32 << 20  # bytes of packs uploading at once (a remote may hold ~2-3 copies in RAM)
    # background upload bytes allowed while a put runs (None: no limit, 0: uploads wait for
    # the puts to end; a flush never waits). On 2 CPUs a put keeps both busy, so uploads wait.
    upload_while_putting: int | None = 0 if (os.cpu_count() or 2) <= 2 else None
    fetch_segment_size: int = 64 << 20  # size of a host-cache segment of fetched chunks
    index_refresh_seconds: float = 300.0  # merge other hosts' new index segments this often (on put)


@dataclass(frozen=True, slots=True)
class PutResult:
    oid: str  # "sha256:<hex>"
    size: int
    tensors: list[TensorInfo] | None


@dataclass(frozen=True, slots=True)
class FlushResult:
    uploaded_bytes: int
    objects: int


@dataclass(frozen=True, slots=True)
class _RangePlan:
    """The chunks a ranged read decodes, and how much of them it trims away."""

    chunks: Manifest  # a manifest holding only the chunks that overlap the range
    skip: int  # bytes of the first chunk before the range
    length: int


class ContentStore:
    """One repository (remote) and its host cache; every checkout of that remote shares it,
    so concurrent requests share transfers (single-flight) and the cache."""

    def __init__(self, *, config: RemoteConfig, remote: Remote, repo: Repository, cache: HostCache,
                 root: Path, lock_fd: int, options: StoreOptions, io: ThreadPoolExecutor) -> None:
        self.config = config
        self.remote = remote
        self.repo = repo
        self.root = root
        self.options = options
        self._cache = cache
        self._lock_fd = lock_fd
        self._io_pool = io
        self._cpu_pool = ThreadPoolExecutor(options.threads, "gitmld-cpu")
        self._hash_pool = ThreadPoolExecutor(2, "gitmld-hash")
        self._transfers = TransferBoard()  # uploads and downloads in flight, for status
        self._uploader = PackUploader(remote, cache.files.path, cache.db.is_queued, self._pack_uploaded,
                                      config.concurrency, options.max_uploading, self._transfers,
                                      while_putting=options.upload_while_putting)
        self._loop = asyncio.get_running_loop()
        cache.on_sealed = self._pack_sealed
        self._reader = ChunkReader(
            remote=remote, cache=cache, keys=repo.keys, run_cpu=self._cpu, run_io=self._io,
            concurrency=config.concurrency,
            options=ReadOptions(read_ahead=options.read_ahead, max_range=options.max_range,
                                max_gap=options.max_gap, max_fetching=options.max_fetching))
        self._put_stats = PutStats()
        self._bytes_out = 0
        self._range_reads = 0
        self._range_bytes_out = 0  # bytes ranged reads delivered (also counted in bytes_out)
        self._range_chunk_bytes = 0  # plaintext of the whole chunks decoded to serve them
        # oid -> (manifest, end offset of each chunk): ranged reads of one file come in series
        self._range_index: OrderedDict[str, tuple[Manifest, array[int]]] = OrderedDict()
        self._flush_lock = asyncio.Lock()
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._fetch_progress: dict[str, Transfer] = {}  # oid -> its running fetch's counters
        self._manifest_tasks: dict[str, asyncio.Task[Manifest]] = {}
        self._closed = False
        self._index_loaded = 0.0  # monotonic time of the last merge of the remote index
        self._index_refresh: asyncio.Task[None] | None = None
        self.flush_hook: FlushHook | None = None  # tests: called after each flush stage

    # -- opening and closing ----------------------------------------------------------------

    @classmethod
    async def open(cls, remote: RemoteConfig, cache_dir: Path, *,
                   options: StoreOptions | None = None) -> ContentStore:
        """Open (or create) the repository at remote.url with its host cache in cache_dir."""
        options = options or StoreOptions()
        cache_dir = Path(cache_dir)
        backend = open_remote(remote)
        lock_fd = -1
        io: ThreadPoolExecutor | None = None
        try:
            repo = await open_repository(backend, keyfile_path(remote.keyfile),
                                         chunk_avg_size=options.chunk_avg_size, cache_dir=cache_dir)
            root = cache_dir / "repos" / repo.config.repo_id
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock(root)
            io = ThreadPoolExecutor(1, "gitmld-io")
            cache = await asyncio.get_running_loop().run_in_executor(io, _open_cache, root, repo, remote, options)
        except BaseException:
            if io is not None:
                io.shutdown()
            if lock_fd >= 0:
                os.close(lock_fd)
            await backend.close()
            raise
        store = cls(config=remote, remote=backend, repo=repo, cache=cache, root=root, lock_fd=lock_fd,
                    options=options, io=io)
        try:
            if not repo.offline:
                await store._load_remote_index()
            for pack_id in cache.db.queue()[0]:
                store._uploader.submit(pack_id)  # resume the persistent upload queue
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Stop background work and close the cache; queued uploads stay queued on disk."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._fetches.values(), *self._manifest_tasks.values()]
        if self._index_refresh is not None:
            tasks.append(self._index_refresh)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._uploader.close()
        await self._reader.close()
        for pool in (self._cpu_pool, self._hash_pool):  # no worker may still touch LMDB
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
        await self._io(self._cache.close)
        self._io_pool.shutdown()
        os.close(self._lock_fd)
        await self.remote.close()

    # -- put ------------------------------------------------------------------------------------

    async def put(self, stream: AsyncIterator[bytes]) -> PutResult:
        """Store a file; returns when it is in the host cache (flush makes it durable)."""
        self._check_open()
        self._refresh_index_soon()
        pipeline = PutPipeline(
            keys=self.repo.keys, cache=self._cache, run_cpu=self._cpu, run_hash=self._hash, run_io=self._io,
            chunk_avg_size=self.repo.config.chunk_avg_size, level=self.config.compression_level,
            batch_bytes=self.options.put_batch_bytes, max_in_flight=self.options.put_in_flight_bytes,
            stats=self._put_stats)
        self._uploader.putting(+1)
        try:
            outcome = await pipeline.run(stream)
        finally:
            self._uploader.putting(-1)
        m = outcome.manifest
        await self._io(self._cache.record_pending)  # the manifest may only name recorded chunks
        await self._io(self._cache.db.put_manifest, oid_bytes(m.oid), m.encode_plain(), uploaded=False)
        return PutResult(m.oid, m.size, outcome.tensors)

    def _pack_sealed(self, pack_id: bytes) -> None:
        """Sealer thread: a pack is queued in LMDB; upload it in the background."""
        # RuntimeError: the loop is gone (shutting down); the queue in LMDB resumes it next start
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._uploader.submit, pack_id)

    async def _pack_uploaded(self, pack_id: bytes) -> None:
        await self._io(self._cache.pack_uploaded, pack_id)

    # -- reads ----------------------------------------------------------------------------------

    async def open_file(self, oid: str, *, path: str = "") -> AsyncGenerator[bytes, None]:
        """The file's bytes in order. An exception at any point (NotFound, CorruptObject, a
        remote error) means the whole file failed: callers must discard what they got.
        `path` (the client's name for the file) only labels the transfer in status."""
        self._check_open()
        manifest = await self._manifest(oid)
        progress = self._transfers.start("download", "read", oid, manifest.size, path=path)
        try:
            async for data in self._verified(oid, manifest):
                progress.advance(len(data))
                yield data
        finally:
            self._transfers.finish(progress)

    async def _verified(self, oid: str, manifest: Manifest) -> AsyncGenerator[bytes, None]:
        """The file's chunks in order, then a check of the whole file's sha256 and size."""
        hasher = hashlib.sha256()
        hashing: Awaitable[None] | None = None
        buf: list[bytes] = []
        buffered = total = 0
        # the whole-file SHA-256 below covers the cached chunks' content: skip their id hashes
        async for data in self._reader.stream(manifest, want_data=True, verify_ids=False):
            total += len(data)
            self._bytes_out += len(data)
            buf.append(data)
            buffered += len(data)
            if buffered >= HASH_BATCH:
                if hashing is not None:
                    await hashing
                hashing = self._hash(hash_all, hasher, buf)
                buf, buffered = [], 0
            yield data
        if hashing is not None:
            await hashing
        await self._hash(hash_all, hasher, buf)
        got = "sha256:" + hasher.hexdigest()
        if got != oid or total != manifest.size:
            raise CorruptObject(f"{oid}: the reassembled file ({total} bytes) hashes to {got}: the repository"
                                f" at {self.remote.url} holds a wrong manifest for it", object=oid)

    async def open_range(self, oid: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """`length` bytes of the file from `offset`: only the chunks that overlap the range are
        read (from the host cache or the remote), the first and last are trimmed.

        The range is checked before this returns (InvalidRequest when it is not inside the
        file, NotFound for an unknown oid), so callers can answer before the first byte. Every
        chunk is verified (AEAD tag and keyed chunk id) as for whole files, but the file's
        sha256 cannot be checked on a part of it: a range is exactly as trustworthy as its
        chunks, and a manifest that lists wrong chunks is only caught by a whole-file read.
        """
        self._check_open()
        plan = await self._plan_range(oid, offset, length)
        return self._read_range(oid, plan)

    async def _plan_range(self, oid: str, offset: int, length: int) -> _RangePlan:
        for name, value in (("offset", offset), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"{oid}: range {name} {value!r} is not a non-negative integer", object=oid)
        manifest, ends = await self._range_manifest(oid)
        if offset + length > manifest.size:
            raise InvalidRequest(
                f"{oid}: the range of {length} bytes at offset {offset} ends at {offset + length}, past the end"
                f" of the file ({manifest.size} bytes)", object=oid)
        if length == 0:
            return _RangePlan(Manifest(oid, 0, [], b""), 0, 0)
        first = bisect.bisect_right(ends, offset)  # the first chunk that ends after offset
        last = bisect.bisect_left(ends, offset + length)  # the chunk holding the range's last byte
        start = ends[first - 1] if first else 0
        records = manifest.records[first * RECORD.size : (last + 1) * RECORD.size]
        chunks = Manifest(oid, ends[last] - start, manifest.pack_ids, records)
        return _RangePlan(chunks, offset - start, length)

    async def _range_manifest(self, oid: str) -> tuple[Manifest, array[int]]:
        """The manifest and its chunks' end offsets, kept for the next ranged read of the file
        (a diff or a merge reads many tensors of one file; decoding a 50 GB file's manifest
        and summing its chunk sizes costs ~0.5 s)."""
        entry = self._range_index.get(oid)
        if entry is not None:
            self._range_index.move_to_end(oid)
            return entry
        manifest = await self._manifest(oid)
        ends = await self._cpu(_chunk_ends, manifest)
        self._range_index[oid] = entry = (manifest, ends)
        while len(self._range_index) > RANGE_MANIFESTS:
            self._range_index.popitem(last=False)
        return entry

    async def _read_range(self, oid: str, plan: _RangePlan) -> AsyncGenerator[bytes, None]:
        self._range_reads += 1
        skip, left = plan.skip, plan.length
        if not left:
            return
        # verify_ids stays on: no whole-file sha256 covers a range, so every chunk's id is checked
        async for data in self._reader.stream(plan.chunks, want_data=True, verify_ids=True):
            self._range_chunk_bytes += len(data)
            if skip or len(data) > left:
                data = data[skip : skip + left]
                skip = 0
            left -= len(data)
            self._bytes_out += len(data)
            self._range_bytes_out += len(data)
            yield data
        if left:
            raise CorruptObject(f"{oid}: its chunks ended {left} bytes before the end of the range; the"
                                f" manifest in {self.remote.url} is wrong", object=oid)

    async def fetch(self, oid: str, *, path: str = "") -> None:
        """Make every chunk of the file local (single-flight per oid); `path` labels the
        transfer in status."""
        self._check_open()
        task = self._fetches.get(oid)
        if task is None:
            task = asyncio.create_task(self._fetch(oid, path), name=f"fetch {oid}")
            self._fetches[oid] = task
            task.add_done_callback(lambda t: self._fetches.pop(oid, None))
        await asyncio.shield(task)

    async def _fetch(self, oid: str, path: str) -> None:
        progress = self._transfers.start("download", "fetch", oid, 0, path=path)
        self._fetch_progress[oid] = progress
        try:
            manifest = await self._manifest(oid)
            progress.total = manifest.size
            async for _ in self._reader.stream(manifest, want_data=False, progress=progress.advance):
                pass
        finally:
            self._transfers.finish(progress)
            if self._fetch_progress.get(oid) is progress:
                del self._fetch_progress[oid]

    def fetch_progress(self, oid: str) -> Transfer | None:
        """The counters of oid's running fetch (None when none runs): `wait` reports them so
        the filter can tell a slow download from a stalled one."""
        return self._fetch_progress.get(oid)

    async def has(self, oid: str, *, local_only: bool = False) -> bool:
        """Whether the file can be read; local_only: from the host cache alone."""
        self._check_open()
        raw = oid_bytes(oid)
        rec = self._cache.db.manifest(raw)
        if local_only:
            if rec is None:
                return False
            manifest = decode_plain(rec[1], name=oid)
            locs = self._cache.db.local_locs(c.cid for c in manifest.chunks())
            return all(loc is not None and loc.seg_id in self._cache.sizes for loc in locs)
        if rec is not None:
            return True
        return await self.remote.exists(remote_name(self.repo.keys, oid))

    async def _manifest(self, oid: str) -> Manifest:
        rec = self._cache.db.manifest(oid_bytes(oid))
        if rec is not None:
            return decode_plain(rec[1], name=oid)
        task = self._manifest_tasks.get(oid)
        if task is None:
            task = asyncio.create_task(self._fetch_manifest(oid), name=f"manifest {oid}")
            self._manifest_tasks[oid] = task
            task.add_done_callback(lambda t: self._manifest_tasks.pop(oid, None))
        return await asyncio.shield(task)

    async def _fetch_manifest(self, oid: str) -> Manifest:
        name = remote_name(self.repo.keys, oid)
        try:
            blob = await self.remote.get_bytes(name)
        except RemoteNotFound:
            raise NotFound(
                f"{oid} is neither in the host cache nor in the remote {self.remote.url}: push it from the"
                " machine that has it (`git push`), or check gitmld.url", object=oid) from None
        manifest = await self._cpu(open_sealed, self.repo.keys, blob, name=name)
        if manifest.oid != oid:
            raise CorruptObject(f"manifest {name} in {self.remote.url} is for {manifest.oid}, not {oid}",
                                object=name)
        await self._io(self._cache.db.put_manifest, oid_bytes(oid), manifest.encode_plain(), uploaded=True)
        return manifest

    # -- flush ----------------------------------------------------------------------------------

    async def flush(self, oids: Iterable[str] | None = None, *,
                    progress: FlushProgress | None = None) -> FlushResult:
        """Make files durable in the remote: packs, then an index segment, then manifests
        (all queued files, or those of `oids` and what they need). `progress`, when given,
        is planned once the flush knows what it uploads and then advances with it."""
        self._check_open()
        async with self._flush_lock:
            if oids is None:
                manifests = self._cache.db.queue()[1]  # before sealing: their chunks are all appended
                sealed = await self._io(self._cache.seal_open_pack)  # and every seal in progress
                if sealed:
                    self._uploader.submit(sealed)
                packs = self._cache.db.queue()[0]
            else:
                manifests, packs = await self._flush_plan(list(oids))
                if not manifests:
                    return FlushResult(0, 0)  # all of them are durable already
            self._check_lost(manifests)
            progress = progress or FlushProgress()
            bounds = await self._plan_progress(progress, manifests, packs)
            uploaded = await self._uploader.wait(packs, on_done=progress.pack_finished)
            objects = len(packs)
            await self._stage("packs")
            unindexed = await self._io(self._cache.db.unindexed)
            index_blob = 0
            if unindexed:
                name = remote_index.new_name()
                blob = await self._cpu(remote_index.encode, self.repo.keys, unindexed)
                await self.remote.put_bytes(name, blob)
                await self._io(self._cache.db.index_written, name, list(unindexed))
                uploaded += len(blob)
                objects += 1
                index_blob = len(blob)
            progress.metadata(bounds.pop(b""), index_blob)
            await self._stage("index")
            slots = asyncio.Semaphore(self.config.concurrency)

            async def upload_manifest(raw: bytes) -> int:
                size = await self._upload_manifest(raw, slots)
                progress.metadata(bounds.get(raw, 0), size)
                return size

            sizes = await asyncio.gather(*(upload_manifest(raw) for raw in manifests))
            uploaded += sum(sizes)
            objects += sum(1 for s in sizes if s)
            await self._stage("manifests")
            return FlushResult(uploaded, objects)

    async def _plan_progress(self, progress: FlushProgress, manifests: list[bytes],
                             packs: list[bytes]) -> dict[bytes, int]:
        """Plan progress: the packs' sizes (exact) and bounds of the sealed index segment and
        manifests; returns the bounds (b"" for the index segment) to settle as they upload."""
        bounds: dict[bytes, int] = {}
        for raw in manifests:
            rec = self._cache.db.manifest(raw)
            bounds[raw] = sealed_bound([len(rec[1])]) if rec is not None and not rec[0] else 0
        backlog = await self._io(self._cache.db.index_backlog)
        index_plain = remote_index.plain_size(*backlog)
        bounds[b""] = sealed_bound([index_plain]) if index_plain else 0
        sizes = {p: self._cache.sizes.get(p, 0) for p in packs}
        metadata_objects = sum(1 for b in bounds.values() if b)
        progress.plan(sizes, sum(bounds.values()), metadata_objects, self._uploader.uploaded_of)
        return bounds

    async def _flush_plan(self, oids: list[str]) -> tuple[list[bytes], list[bytes]]:
        """For flush(oids): the manifests to upload and the packs they need."""
        manifests: list[bytes] = []
        needed: set[bytes] = set()
        missing: list[str] = []
        for oid in oids:
            raw = oid_bytes(oid)
            rec = self._cache.db.manifest(raw)
            if rec is None:
                if not await self.remote.exists(remote_name(self.repo.keys, oid)):
                    missing.append(oid)
                continue
            if not rec[0]:
                manifests.append(raw)
                needed.update(decode_plain(rec[1], name=oid).pack_ids)
        if missing:
            raise NotDurable(
                f"{len(missing)} file(s) are neither in the host cache nor in {self.remote.url}: "
                + ", ".join(missing[:5]) + ("" if len(missing) <= 5 else ", ...")
                + "; add them again (`git add`) on a machine that has them", object=missing[0], missing=missing)
        await self._io(self._cache.wait_sealed)  # packs being sealed join the queue first
        open_pack = self._cache.open_pack
        if open_pack is not None and open_pack in needed:
            sealed = await self._io(self._cache.seal_open_pack, open_pack)
            if sealed:
                self._uploader.submit(sealed)
        return manifests, [p for p in self._cache.db.queue()[0] if p in needed]

    def _check_lost(self, manifests: list[bytes]) -> None:
        lost = self._cache.lost_packs
        if not lost:
            return
        bad = []
        for raw in manifests:
            rec = self._cache.db.manifest(raw)
            if rec is not None and lost & set(decode_plain(rec[1], name=raw.hex()).pack_ids):
                bad.append("sha256:" + raw.hex())
        if bad:
            raise NotDurable(f"pack data of {', '.join(bad)} was lost from the host cache before upload;"
                             " add those files again", object=bad[0], missing=bad)

    async def _upload_manifest(self, raw: bytes, slots: asyncio.Semaphore) -> int:
        rec = self._cache.db.manifest(raw)
        if rec is None or rec[0]:
            return 0
        manifest = decode_plain(rec[1], name=raw.hex())
        blob = await self._cpu(manifest.seal, self.repo.keys)
        async with slots:
            await self.remote.put_bytes(remote_name(self.repo.keys, manifest.oid), blob)
        await self._io(self._cache.db.manifest_uploaded, raw)
        return len(blob)

    async def _stage(self, stage: str) -> None:
        if self.flush_hook is not None:
            result = self.flush_hook(stage)
            if inspect.isawaitable(result):
                await result

    # -- the remote index -----------------------------------------------------------------------

    def _refresh_index_soon(self) -> None:
        """Other hosts keep writing: merge their new index segments now and then, in the
        background (a put never waits for it; dedup is an optimisation)."""
        if self.repo.offline or (self._index_refresh is not None and not self._index_refresh.done()):
            return
        if time.monotonic() - self._index_loaded < self.options.index_refresh_seconds:
            return
        self._index_refresh = asyncio.create_task(self._refresh_index(), name="index refresh")

    async def _refresh_index(self) -> None:
        try:
            await self._load_remote_index()
        except Exception as exc:
            log.warning("refreshing the remote index of %s failed: %s", self.remote.url, exc)

    async def _load_remote_index(self) -> None:
        """Merge index segments this cache has not seen: dedup then needs no round trips."""
        self._index_loaded = time.monotonic()
        try:
            names = await self.remote.list(remote_index.PREFIX)
        except RemoteError as exc:
            log.warning("cannot list the remote index (%s); dedup uses what this host knows", exc)
            return
        seen = self._cache.db.seen_index()
        slots = asyncio.Semaphore(self.config.concurrency)

        async def merge(name: str) -> None:
            try:
                async with slots:
                    blob = await self.remote.get_bytes(name)
                sections = await self._cpu(lambda: list(remote_index.decode(self.repo.keys, name, blob)))
            except (RemoteError, CorruptObject, UnsupportedFormat) as exc:
                log.warning("skipping index segment %s: %s", name, exc)
                return
            await self._io(self._cache.db.merge_index, name, sections)

        await asyncio.gather(*(merge(n) for n in names if n not in seen))

    # -- status ---------------------------------------------------------------------------------

    async def probe_remote(self) -> None:
        """One quick request for the repository's config object (no retries; the caller bounds
        the time): returns when the remote answers, raises RemoteError when it does not."""
        await self.remote.probe(CONFIG_NAME)

    def transfers(self) -> list[dict[str, Any]]:
        """Uploads and downloads in flight (progress.Transfer.snapshot), oldest first."""
        return self._transfers.snapshot()

    def stats(self) -> dict[str, int]:
        packs, manifests = self._cache.db.queue()
        rs = self.remote.stats
        ps = self._put_stats
        return {
            "bytes_in": ps.bytes_in,
            "bytes_out": self._bytes_out,
            "range_reads": self._range_reads,
            "range_bytes_out": self._range_bytes_out,
            "range_chunk_bytes": self._range_chunk_bytes,
            "cache_hits": self._reader.stats.cache_hits,
            "cache_misses": self._reader.stats.cache_misses,
            "corrupt_cache_entries": self._reader.stats.corrupt_cache_entries,
            "upload_queue": len(packs),
            "upload_queue_bytes": sum(self._cache.sizes.get(p, 0) for p in packs),
            "upload_queue_manifests": len(manifests),
            "uploads_in_flight": self._uploader.in_flight,
            "upload_failures": self._uploader.failures,
            "new_chunks": ps.new_chunks,
            "new_chunk_bytes": ps.new_chunk_bytes,
            "stored_bytes": ps.stored_bytes,
            "dedup_chunks": ps.dedup_chunks,
            "cache_bytes": self._cache.total_bytes,
            "remote_gets": rs.gets,
            "remote_get_bytes": rs.get_bytes,
            "remote_puts": rs.puts,
            "remote_put_bytes": rs.put_bytes,
            "remote_retries": rs.retries,
        }

    # -- helpers --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the content store is closed")

    def _cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        return _run(self._cpu_pool, fn, args, kwargs)

    def _hash(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return _run(self._hash_pool, fn, args, {})

    def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        return _run(self._io_pool, fn, args, kwargs)


def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], args: tuple[Any, ...],
         kwargs: dict[str, Any]) -> asyncio.Future[T]:
    loop = asyncio.get_running_loop()
    if kwargs:
        return loop.run_in_executor(pool, lambda: fn(*args, **kwargs))
    return loop.run_in_executor(pool, fn, *args)


def _chunk_ends(manifest: Manifest) -> array[int]:
    """Worker thread: the file offset where each chunk ends (ascending: chunks are never empty)."""
    ends: array[int] = array("Q")
    total = 0
    for record in RECORD.iter_unpack(manifest.records):
        total += record[1]  # plain_len
        ends.append(total)
    return ends


def _lock(root: Path) -> int:
    """One process owns a repository's host cache (LMDB may not be opened twice in a process)."""
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CacheBusy(f"the host cache {root} is in use by another process (pid {holder}); one daemon per"
                        " host owns it: talk to that daemon, or set GITMLD_CACHE_DIR to another directory",
                        object=str(root)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _open_cache(root: Path, repo: Repository, remote: RemoteConfig, options: StoreOptions) -> HostCache:
    cache = HostCache(root, repo.keys, pack_size=remote.pack_size, fetch_segment_size=options.fetch_segment_size,
                      limit_bytes=options.cache_limit_bytes)
    try:
        cache.recover()
    except BaseException:
        with contextlib.suppress(Exception):
            cache.db.close()
        raise
    return cache
