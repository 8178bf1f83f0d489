"""Request dispatch: one handler per wire op, on top of one ContentStore per remote.

The daemon serves every repository and checkout of its user, so stores are keyed by the
remote they write to and opened on first use; all checkouts of one remote share one store,
one host cache and one set of in-flight transfers (single-flight lives in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitmld.daemon.channel import Channel, ChannelClosed, RequestError
from gitmld.daemon.content_sample import StreamSample
from gitmld.daemon.errors import classify
from gitmld.daemon.pipe_sink import PipeSink, open_peer_stdout, require_pipe_id
from gitmld.daemon.reachability import Reachability
from gitmld.daemon.store.progress import FlushProgress
from gitmld.daemon.store.store import ContentStore, PutResult, StoreOptions
from gitmld.proto import compose
from gitmld.proto.pointer import Pointer
from gitmld.proto.remote_config import RemoteConfig
from gitmld.proto.version import __version__

log = logging.getLogger("gitmld.service")

PROGRESS_INTERVAL = 0.5


@dataclass
class DaemonSettings:
    """What the daemon was started with; shown by `gitmld status`."""

    socket_path: Path
    cache_dir: Path
    cache_limit_bytes: int = 50 * 1024**3
    max_tensor_lines: int = 256
    store_overrides: dict[str, Any] = field(default_factory=dict)  # StoreOptions fields (env, tests)


@dataclass
class FetchState:
    """A background fetch into the host cache that `wait` can report on."""

    task: asyncio.Task[None]
    path: str = ""
    started: float = field(default_factory=time.monotonic)


Handler = Callable[[dict[str, Any], Channel], Awaitable[None]]


class Service:
    """The daemon's request handlers; owns the stores and the background fetches."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self._stores: dict[str, ContentStore] = {}
        self._store_configs: dict[str, RemoteConfig] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._fetches: dict[tuple[str, str], FetchState] = {}
        self._reachability = Reachability()
        self.connections = 0
        self.requests_served = 0
        self.direct_smudge_bytes = 0  # content written straight into filters' pipes (get_pipe)
        self.shutdown_requested = asyncio.Event()
        self._ops: dict[str, Handler] = {
            "put": self.op_put,
            "compose": self.op_compose,
            "get": self.op_get,
            "get_pipe": self.op_get_pipe,
            "pipe_check": self.op_pipe_check,
            "has": self.op_has,
            "fetch": self.op_fetch,
            "wait": self.op_wait,
            "flush": self.op_flush,
            "status": self.op_status,
            "shutdown": self.op_shutdown,
        }

    # -- plumbing ---------------------------------------------------------------------------

    async def handle(self, request: dict[str, Any], ch: Channel) -> None:
        """Run one request; every failure becomes one ERROR frame with a clear message."""
        op = request.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise RequestError("bad_request", f"unknown op {op!r}; this daemon knows {sorted(self._ops)}")
            await handler(request, ch)
            self.requests_served += 1
        except RequestError as e:
            await ch.error(e.code, e.message, e.obj)
        except ChannelClosed:
            raise
        except Exception as e:
            code, message = classify(e)
            if code == "internal":
                log.exception("request %s failed", op)
            await ch.error(code, message, request.get("oid"))

    async def store_for(self, request: dict[str, Any]) -> tuple[str, ContentStore]:
        """The store of the request's remote, opened once and shared by every checkout."""
        raw = request.get("remote")
        if not isinstance(raw, dict):
            raise RequestError("bad_request", "request has no 'remote' object (the client resolves it from git config)")
        try:
            config = RemoteConfig.from_json(raw)
        except (ValueError, TypeError) as e:
            raise RequestError("bad_request", f"bad remote configuration: {e}") from e
        key = store_key(config)
        store = self._stores.get(key)
        if store is not None:
            return key, store
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:
            store = self._stores.get(key)
            if store is None:
                options = StoreOptions(cache_limit_bytes=self.settings.cache_limit_bytes,
                                       **self.settings.store_overrides)
                store = await ContentStore.open(config, self.settings.cache_dir, options=options)
                self._stores[key] = store
                self._store_configs[key] = config
                log.info("opened store for %s", config.url)
        return key, store

    async def close(self) -> None:
        """Stop background fetches and close every store; queued uploads stay persisted."""
        for state in self._fetches.values():
            state.task.cancel()
        await asyncio.gather(*(s.task for s in self._fetches.values()), return_exceptions=True)
        for store in self._stores.values():
            await store.close()
        self._stores.clear()

    # -- ops -------------------------------------------------------------------------------

    async def op_put(self, request: dict[str, Any], ch: Channel) -> None:
        """Store the streamed content, describe it, answer with the pointer text."""
        path = str(request.get("path", ""))
        incoming = ch.incoming_data()
        try:
            _, store = await self.store_for(request)
        except BaseException:
            await drain(incoming)
            raise
        sample = StreamSample()

        async def sampled() -> AsyncIterator[bytes]:
            async for data in incoming:
                sample.feed(data)
                yield data

        try:
            result = await store.put(sampled())
        except BaseException:
            await drain(incoming)
            raise
        await self._answer_stored(ch, sample, result, path)

    async def _answer_stored(self, ch: Channel, sample: StreamSample, result: PutResult, path: str) -> None:
        """put's and compose's answer: the new object's pointer, with its description."""
        description = describe_content(sample, result.tensors, self.settings.max_tensor_lines, path)
        pointer = Pointer(oid=result.oid, size=result.size, description=description)
        await ch.respond({"oid": result.oid, "size": result.size, "pointer": pointer.to_text()})

    async def op_compose(self, request: dict[str, Any], ch: Channel) -> None:
        """Store a new file made of ranges of stored files and inline bytes from the client's
        DATA (proto/compose.py), and answer like put. Copied ranges never cross the socket, and
        the tensor-aware chunker cuts them into the chunks they already have: they dedup."""
        path = str(request.get("path", ""))
        incoming = ch.incoming_data()
        try:
            try:
                parts = compose.parts_from_json(request.get("parts"))
            except compose.ComposeError as e:
                raise RequestError("bad_request", f"compose: {e}") from None
            _, store = await self.store_for(request)
            # Every copied range is checked (unknown object, out of bounds) before anything is stored.
            ranges = [await store.open_range(p.oid, p.offset, p.length) if isinstance(p, compose.CopyPart) else None
                      for p in parts]
        except BaseException:
            await drain(incoming)
            raise
        splitter = compose.InlineSplitter([p.length for p in parts if isinstance(p, compose.InlinePart)])
        sample = StreamSample()

        async def assembled() -> AsyncIterator[bytes]:
            pending: deque[bytes] = deque()  # inline bytes received ahead of their part
            for part, copied in zip(parts, ranges, strict=True):
                if copied is not None:
                    async for copy in copied:
                        sample.feed(copy)
                        yield copy
                    continue
                left = part.length
                while left:
                    if not pending:
                        received = await next_data(incoming)
                        if received is None:
                            splitter.finish()  # raises: the client sent fewer bytes than declared
                        else:
                            pending.extend(piece for _, piece in splitter.feed(received))
                        continue
                    piece = pending.popleft()
                    left -= len(piece)
                    sample.feed(piece)
                    yield piece
            async for extra in incoming:
                splitter.feed(extra)  # raises: more bytes than declared
            splitter.finish()

        try:
            result = await store.put(assembled())
        except compose.ComposeError as e:
            await drain(incoming)
            raise RequestError("bad_request", f"compose: {e}") from None
        except BaseException:
            await drain(incoming)
            raise
        await self._answer_stored(ch, sample, result, path)

    async def op_get(self, request: dict[str, Any], ch: Channel) -> None:
        """Stream an object's bytes, or with `offset` and `length` a range of them (only the
        chunks the range overlaps are read); an error after the first DATA makes the client
        discard all."""
        oid = require_str(request, "oid")
        _, store = await self.store_for(request)
        if "offset" in request or "length" in request:
            offset, length = require_count(request, "offset"), require_count(request, "length")
            ranged = await store.open_range(oid, offset, length)  # checked before we answer
            await ch.respond({"size": length, "offset": offset})
            await send_stream(ch, ranged)
            return
        await require_object(store, oid, request)
        stream = store.open_file(oid, path=str(request.get("path", "")))
        await ch.respond({"size": request.get("size")})
        await send_stream(ch, stream)

    async def op_get_pipe(self, request: dict[str, Any], ch: Channel) -> None:
        """get, with the content written as Git data pkt-lines straight into the peer's stdout
        pipe (pipe_sink.py); PROGRESS frames while it runs, one RESPONSE with the bytes written
        once the whole file is in the pipe and verified. On an error the pipe ends after whole
        packets and the ERROR frame follows."""
        oid = require_str(request, "oid")
        dev, ino = require_pipe_id(request)
        _, store = await self.store_for(request)
        await require_object(store, oid, request)
        sink = PipeSink.open(ch.peer_pid, dev, ino)
        copy = asyncio.ensure_future(self._copy_into_pipe(store.open_file(oid, path=str(request.get("path", ""))),
                                                          sink, ch))
        gone = asyncio.ensure_future(ch.peer_gone())  # a filter that left must not leave us writing to Git
        try:
            await asyncio.wait({copy, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not copy.done():
                copy.cancel()
                await asyncio.gather(copy, return_exceptions=True)
            sink.close()
        if copy.cancelled():
            raise ChannelClosed("the filter left while its file was being written into Git's pipe")
        copy.result()
        self.direct_smudge_bytes += sink.written
        await ch.respond({"size": sink.written})

    @staticmethod
    async def _copy_into_pipe(stream: AsyncGenerator[bytes, None], sink: PipeSink, ch: Channel) -> None:
        reported = time.monotonic()
        async with contextlib.aclosing(stream):  # an abandoned read ends now, not when collected
            async for piece in stream:
                await sink.write(piece)
                if time.monotonic() - reported >= PROGRESS_INTERVAL:  # keeps the client's timeout fed
                    reported = time.monotonic()
                    await ch.progress({"done": sink.written})
        await sink.finish()

    async def op_pipe_check(self, request: dict[str, Any], ch: Channel) -> None:
        """Whether get_pipe can write into the peer's stdout (its pid is known, /proc lets us open it)."""
        os.close(open_peer_stdout(ch.peer_pid, *require_pipe_id(request)))
        await ch.respond({"ok": True})

    async def op_has(self, request: dict[str, Any], ch: Channel) -> None:
        oid = require_str(request, "oid")
        _, store = await self.store_for(request)
        present = await store.has(oid, local_only=bool(request.get("local", False)))
        await ch.respond({"present": present})

    async def op_fetch(self, request: dict[str, Any], ch: Channel) -> None:
        """Start background fetches into the host cache; `wait` reports them."""
        key, store = await self.store_for(request)
        oids = require_oid_list(request)
        queued = 0
        for oid in oids:
            state = self._fetches.get((key, oid))
            if state is not None and not (state.task.done() and state.task.exception() is not None):
                continue  # running or done: single-flight per object
            path = str(request.get("path", ""))
            task = asyncio.create_task(store.fetch(oid, path=path), name=f"fetch {oid}")
            self._fetches[(key, oid)] = FetchState(task=task, path=path)
            queued += 1
        await ch.respond({"queued": queued})

    async def op_wait(self, request: dict[str, Any], ch: Channel) -> None:
        """Answer as soon as at least one of the objects is ready or failed, or at the timeout;
        `progress` tells the client whether the fetches still pending are moving."""
        key, store = await self.store_for(request)
        oids = require_oid_list(request)
        timeout = float(request.get("timeout", 60.0))
        states = {oid: self._fetches.get((key, oid)) for oid in oids}
        pending = {s.task for s in states.values() if s is not None and not s.task.done()}
        if pending and all(s is not None and not s.task.done() for s in states.values()):
            await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ready: list[str] = []
        failed: dict[str, str] = {}
        for oid, state in states.items():
            if state is None:
                if await store.has(oid, local_only=True):
                    ready.append(oid)
                else:
                    failed[oid] = f"object {oid} was never requested with 'fetch'"
            elif state.task.done():
                exc = state.task.exception()
                if exc is None:
                    ready.append(oid)
                else:
                    failed[oid] = classify(exc)[1]
        for oid in ready + list(failed):
            self._fetches.pop((key, oid), None)
        progress = {oid: fetch_progress(store, oid, state) for oid, state in states.items()
                    if state is not None and oid not in failed and oid not in ready}
        await ch.respond({"ready": ready, "failed": failed, "progress": progress})

    async def op_flush(self, request: dict[str, Any], ch: Channel) -> None:
        """Make objects durable in the remote, reporting progress while the queue drains."""
        _, store = await self.store_for(request)
        oids = request.get("oids")
        if oids is not None:
            oids = require_oid_list(request)
        progress = FlushProgress()
        flush = asyncio.create_task(store.flush(oids, progress=progress))
        while not flush.done():
            done, _ = await asyncio.wait({flush}, timeout=PROGRESS_INTERVAL)
            if not done and progress.planned and progress.total:
                await ch.progress(progress.frame())
        result = flush.result()
        if progress.planned and progress.total:  # the last frame: done == total == uploaded_bytes
            await ch.progress(progress.frame())
        await ch.respond({"uploaded_bytes": result.uploaded_bytes, "objects": result.objects})

    async def op_status(self, request: dict[str, Any], ch: Channel) -> None:
        """Probe the remotes (cached for a few seconds, bounded by a short timeout), then answer."""
        await self._reachability.refresh({key: store.probe_remote for key, store in self._stores.items()})
        # walking a large cache directory takes a while: not on the event loop, which serves checkouts
        cache_bytes = await asyncio.to_thread(dir_bytes, self.settings.cache_dir)
        await ch.respond(self.status(cache_bytes))

    async def op_shutdown(self, request: dict[str, Any], ch: Channel) -> None:
        await ch.respond({})
        self.shutdown_requested.set()

    def status(self, cache_bytes: int | None = None) -> dict[str, Any]:
        """The status document behind `gitmld status --json` (cache_bytes: measured by the caller)."""
        remotes = []
        transfers = []
        for key, store in self._stores.items():
            config = self._store_configs[key]
            remotes.append({"url": config.url, "endpoint": config.endpoint, **self._reachability.describe(key),
                            "stats": store.stats()})
            transfers += [{**t, "remote": config.url} for t in store.transfers()]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "socket": str(self.settings.socket_path),
            "cache_dir": str(self.settings.cache_dir),
            "cache_bytes": dir_bytes(self.settings.cache_dir) if cache_bytes is None else cache_bytes,
            "cache_limit_bytes": self.settings.cache_limit_bytes,
            "connections": self.connections,
            "requests_served": self.requests_served,
            "direct_smudge_bytes": self.direct_smudge_bytes,
            "transfers": transfers,
            "remotes": remotes,
        }


def fetch_progress(store: ContentStore, oid: str, state: FetchState) -> dict[str, Any]:
    """A pending fetch's bytes done, total and seconds since they last grew (the fetch may not
    have reached the store yet: then it has been idle since the request)."""
    t = store.fetch_progress(oid)
    if t is None:
        return {"done": 0, "total": 0, "idle_seconds": round(time.monotonic() - state.started, 1)}
    return {"done": t.done, "total": t.total, "idle_seconds": round(t.idle_seconds(), 1)}


def store_key(config: RemoteConfig) -> str:
    """Checkouts that name the same bucket prefix at the same endpoint share a store."""
    return f"{config.endpoint or ''}|{config.url}"


def describe_content(
    sample: StreamSample, tensors: list[Any] | None, max_tensor_lines: int, path: str
) -> list[tuple[str, str]]:
    """Describe the content for its pointer; never fails a `git add` (falls back to generic)."""
    from gitmld.daemon.describe.registry import describe

    digests = {t.name: t.digest for t in tensors} if tensors else None
    try:
        return describe(sample.reader(), max_tensor_lines=max_tensor_lines, tensor_digests=digests)
    except Exception as e:
        log.warning("describing %s failed: %s", path or "<stdin>", e)
        return [("format", "unknown")]


async def next_data(stream: AsyncIterator[bytes]) -> bytes | None:
    """The next DATA payload, or None at END."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


async def drain(stream: AsyncIterator[bytes]) -> None:
    """Read a failed put's remaining DATA so the client is never blocked writing to us."""
    async for _ in stream:
        pass


def require_str(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise RequestError("bad_request", f"request field {key!r} must be a non-empty string")
    return value


def require_count(request: dict[str, Any], key: str) -> int:
    value = request.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError("bad_request", f"request field {key!r} must be a non-negative integer, not {value!r}")
    return value


async def require_object(store: ContentStore, oid: str, request: dict[str, Any]) -> None:
    if not await store.has(oid):
        raise RequestError(
            "not_found",
            f"object {oid} ({request.get('path', '?')}) is in neither the host cache nor the remote",
            oid,
        )


async def send_stream(ch: Channel, stream: AsyncGenerator[bytes, None]) -> None:
    """DATA frames, then END (the channel frames each piece without copying it). A read the
    client abandons is closed at once (its transfer leaves `status`, its buffers go), not
    when the generator is collected."""
    async with contextlib.aclosing(stream):
        async for piece in stream:
            await ch.send_data(piece)
    await ch.end_data()


def require_oid_list(request: dict[str, Any]) -> list[str]:
    value = request.get("oids")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError("bad_request", "request field 'oids' must be a list of object ids")
    return value


def dir_bytes(root: Path) -> int:
    """Bytes on disk under root (allocated blocks, so sparse files count what they use)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total

