"""An `s3://bucket/prefix` remote over aiobotocore, for AWS and S3-compatible servers.

One client (one connection pool) per remote, created on first use. botocore's own retries are
off: `retry.with_retry` retries instead, so every retry is counted and bounded. A semaphore of
`concurrency` bounds requests in flight; large files go up as concurrent multipart parts.
CRC32 checksums of request bodies are computed in worker threads (zlib releases the GIL) and
passed in, so botocore neither hashes on the event loop nor signs bodies with SHA-256 (bodies
are covered by the CRC and, above us, by AEAD and content addressing).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import zlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import botocore.exceptions as bex
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from gitmld.daemon.remote.base import Progress, RemoteError, RemoteNotFound, RemoteStats, RemoteUnavailable
from gitmld.daemon.remote.retry import RetryPolicy, with_retry

T = TypeVar("T")
Client = Any  # aiobotocore's generated S3 client has no static type
_Parts = list[dict[str, Any]]  # CompleteMultipartUpload's part list (an alias: S3Remote.list shadows list)

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10_000  # S3's ceiling on parts per upload
_CRC_IN_THREAD = 256 * 1024  # below this, a thread hop costs more than the checksum

_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_ACCESS = frozenset({
    "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled",
})
_CREDENTIALS_HINT = (
    "check the AWS credentials the daemon sees (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "~/.aws/credentials or the instance role) and that they may read and write this bucket"
)


_loader: Any = None


def new_session() -> Any:
    """A botocore session for one S3 client that shares the daemon's one data loader: the S3
    service model, endpoint rules and partitions are parsed once (~0.2 s per client
    otherwise), while credentials are still resolved per session, so a client made after the
    credentials changed sees the new ones."""
    global _loader
    session = get_session()
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


def warm_up() -> None:
    """Parse the S3 service data into the shared loader (no network, no credentials: callable
    from any thread, ahead of the first client)."""
    loader = new_session().get_component("data_loader")
    loader.load_service_model("s3", "service-2")
    loader.load_service_model("s3", "endpoint-rule-set-1")
    for name in ("endpoints", "partitions", "sdk-default-configuration"):
        loader.load_data(name)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); RemoteError if malformed."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc or parts.query or parts.fragment:
        raise RemoteError(url, None, "not an s3://bucket/prefix URL", hint="write it as s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def crc32_b64(data: bytes | memoryview) -> str:
    """The value of S3's x-amz-checksum-crc32 header for data."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")


class S3Remote:
    """Objects are keys `prefix/name` in one bucket."""

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        list_page_size: int = 1000,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's floor), not {part_size}")
        self.bucket, prefix = parse_s3_url(url)
        self.url = url
        self.stats = RemoteStats()
        self.endpoint = endpoint
        self.region = region
        self.path_style = path_style
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.part_size = part_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.list_page_size = list_page_size
        self._root = f"{prefix}/" if prefix else ""
        self._requests = asyncio.Semaphore(concurrency)  # HTTP requests in flight
        self._part_buffers = asyncio.Semaphore(concurrency)  # multipart parts held in memory
        self._client: Client | None = None
        self._client_lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None

    # -- plumbing -----------------------------------------------------------------------

    def _key(self, name: str) -> str:
        if not name:
            raise RemoteError(self.url, name, "empty object name", hint="this is a bug in the caller")
        return self._root + name

    async def _get_client(self) -> Client:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    config = AioConfig(
                        region_name=self.region,
                        connect_timeout=self.connect_timeout,
                        read_timeout=self.read_timeout,
                        retries={"total_max_attempts": 1, "mode": "standard"},  # retry.py retries
                        max_pool_connections=self.concurrency + 4,  # + HEAD/list beside full transfers
                        s3={
                            "addressing_style": "path" if self.path_style else "auto",
                            "payload_signing_enabled": False,
                        },
                    )
                    stack = AsyncExitStack()
                    self._client = await stack.enter_async_context(
                        new_session().create_client(
                            "s3", endpoint_url=self.endpoint, region_name=self.region, config=config
                        )
                    )
                    self._stack = stack
        return self._client

    async def _call(self, name: str | None, op: Callable[[Client], Awaitable[T]]) -> T:
        """One request: bounded by the semaphore, retried when transient, errors translated."""
        client = await self._get_client()

        async def attempt() -> T:
            async with self._requests:
                return await op(client)

        try:
            return await with_retry(
                attempt, policy=self.retry, stats=self.stats, remote_url=self.url, object_name=name
            )
        except (bex.ClientError, bex.BotoCoreError) as exc:
            raise self._translate(name, exc) from exc

    def _translate(self, name: str | None, exc: Exception) -> RemoteError:
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            return RemoteError(self.url, name, "no usable AWS credentials found", hint=_CREDENTIALS_HINT)
        code = _error_code(exc)
        if code in _NOT_FOUND:
            return RemoteNotFound(self.url, name, f"no such key {self._key(name) if name else ''!r}")
        if code == "NoSuchBucket":
            return RemoteError(
                self.url, name, f"bucket {self.bucket!r} does not exist",
                hint="create the bucket or fix gitmld.url (and gitmld.endpoint for a non-AWS server)",
            )
        if code in _ACCESS:
            return RemoteError(self.url, name, f"access denied ({code})", hint=_CREDENTIALS_HINT)
        return RemoteError(self.url, name, exc)

    # -- reads --------------------------------------------------------------------------

    async def get_bytes(self, name: str) -> bytes:
        return await self._get(name, None)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """At most `length` bytes from `offset`; fewer only at the end of the object."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset} length={length}")
        if length == 0:
            return b""
        return await self._get(name, f"bytes={offset}-{offset + length - 1}")

    async def _get(self, name: str, byte_range: str | None) -> bytes:
        """One GET, whole or ranged, counted in the stats; a range past the end reads as empty."""
        key = self._key(name)
        extra = {"Range": byte_range} if byte_range else {}

        async def op(client: Client) -> bytes:
            try:
                resp = await client.get_object(Bucket=self.bucket, Key=key, **extra)
            except bex.ClientError as exc:
                if byte_range and _error_code(exc) == "InvalidRange":  # offset at or past the end
                    return b""
                raise
            async with resp["Body"] as body:
                data: bytes = await body.read()
            return data

        data = await self._call(name, op)
        self.stats.gets += 1
        self.stats.get_bytes += len(data)
        return data

    async def exists(self, name: str) -> bool:
        key = self._key(name)

        async def op(client: Client) -> bool:
            try:
                await client.head_object(Bucket=self.bucket, Key=key)
            except bex.ClientError as exc:
                if _error_code(exc) in _NOT_FOUND:
                    return False
                raise
            return True

        return await self._call(name, op)

    async def probe(self, name: str) -> bool:
        """One HEAD, not retried and not queued behind the transfers holding the request slots
        (the pool keeps connections spare for this), so a busy remote still answers quickly;
        the caller bounds the time."""
        client = await self._get_client()
        try:
            await client.head_object(Bucket=self.bucket, Key=self._key(name))
        except bex.ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                return False
            raise self._translate(name, exc) from exc
        except (bex.BotoCoreError, OSError, aiohttp.ClientError) as exc:
            raise RemoteUnavailable(self.url, name, exc) from exc
        return True

    async def list(self, prefix: str) -> list[str]:
        """Names starting with `prefix`, relative to the remote root, in S3's (byte) order."""
        full = self._root + prefix
        names: list[str] = []
        token: str | None = None
        while True:
            page = await self._call(prefix or None, _list_page(self.bucket, full, token, self.list_page_size))
            self.stats.lists += 1
            names.extend(obj["Key"][len(self._root):] for obj in page.get("Contents", ()))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names

    # -- writes -------------------------------------------------------------------------

    async def prepare_new_repository(self) -> None:
        """Nothing to make: the bucket must exist (a missing one is a clear error on first use)."""

    async def put_bytes(self, name: str, data: bytes) -> None:
        crc = await asyncio.to_thread(crc32_b64, data) if len(data) > _CRC_IN_THREAD else crc32_b64(data)
        await self._put_object(name, data, crc)

    async def _put_object(self, name: str, data: bytes, crc: str) -> None:
        key = self._key(name)
        await self._call(
            name, lambda c: c.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumCRC32=crc)
        )
        self.stats.puts += 1
        self.stats.put_bytes += len(data)

    async def put_file(self, name: str, path: Path, *, progress: Progress | None = None) -> None:
        """Single PUT below `multipart_threshold`, else a concurrent multipart upload;
        progress(n) as each part (or the single PUT) completes."""
        size = (await asyncio.to_thread(os.stat, path)).st_size
        if size < self.multipart_threshold:
            data, crc = await asyncio.to_thread(_read_part, path, 0, size)
            if len(data) != size:
                raise self._changed(name, path)
            await self._put_object(name, data, crc)
            if progress is not None:
                progress(size)
            return
        await self._put_multipart(name, path, size, progress)
        self.stats.puts += 1
        self.stats.put_bytes += size

    def _changed(self, name: str, path: Path) -> RemoteError:
        return RemoteError(
            self.url, name, f"{path} changed size while it was being uploaded",
            hint="do not modify files while gitmld uploads them; run the command again",
        )

    async def _put_multipart(self, name: str, path: Path, size: int, progress: Progress | None) -> None:
        key = self._key(name)
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        count = -(-size // part_size)
        created = await self._call(
            name,
            lambda c: c.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32"),
        )
        upload_id: str = created["UploadId"]
        parts: _Parts = [{} for _ in range(count)]
        numbers = iter(range(count))  # shared by the workers: next() never yields to the loop

        async def upload_parts() -> None:
            for index in numbers:
                offset = index * part_size
                length = min(part_size, size - offset)
                async with self._part_buffers:  # bounds memory to concurrency * part_size per remote
                    data, crc = await asyncio.to_thread(_read_part, path, offset, length)
                    if len(data) != length:
                        raise self._changed(name, path)
                    upload = _upload_part(self.bucket, key, upload_id, index + 1, data, crc)
                    resp = await self._call(name, upload)
                    del data, upload
                parts[index] = {"PartNumber": index + 1, "ETag": resp["ETag"], "ChecksumCRC32": crc}
                if progress is not None:
                    progress(length)

        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(self.concurrency, count)):
                        group.create_task(upload_parts())
            except BaseExceptionGroup as eg:
                raise eg.exceptions[0] from None  # callers expect one RemoteError, not a group
            await self._complete(name, key, upload_id, parts, size)
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise

    async def _complete(
        self, name: str, key: str, upload_id: str, parts: _Parts, size: int
    ) -> None:
        try:
            await self._call(
                name,
                lambda c: c.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except RemoteError as exc:
            # A retried complete whose first try succeeded (answer lost) sees NoSuchUpload.
            if _error_code(exc.__cause__) != "NoSuchUpload" or not await self._has_size(key, size):
                raise

    async def _has_size(self, key: str, size: int) -> bool:
        try:
            head = await self._call(None, lambda c: c.head_object(Bucket=self.bucket, Key=key))
        except RemoteError:
            return False
        return bool(head.get("ContentLength") == size)

    async def _abort(self, key: str, upload_id: str) -> None:
        """Best effort: an upload left behind only costs storage until a lifecycle rule drops it."""
        with contextlib.suppress(Exception):  # the original failure is what the caller must see
            await self._call(
                None, lambda c: c.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            )

    async def delete(self, name: str) -> None:
        """Idempotent, like S3: deleting a missing object is not an error."""
        key = self._key(name)
        await self._call(name, lambda c: c.delete_object(Bucket=self.bucket, Key=key))

    async def close(self) -> None:
        """Close the connection pool; a later request opens a new one."""
        async with self._client_lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()


def _error_code(exc: BaseException | None) -> str | None:
    if isinstance(exc, bex.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else None
    return None


def _list_page(
    bucket: str, prefix: str, token: str | None, page_size: int
) -> Callable[[Client], Awaitable[dict[str, Any]]]:
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if token:
        args["ContinuationToken"] = token
    return lambda c: c.list_objects_v2(**args)


def _upload_part(
    bucket: str, key: str, upload_id: str, number: int, data: bytes, crc: str
) -> Callable[[Client], Awaitable[dict[str, Any]]]:
    return lambda c: c.upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data, ChecksumCRC32=crc
    )


def _read_part(path: Path, offset: int, length: int) -> tuple[bytes, str]:
    """Read one part and checksum it, in a worker thread (both release the GIL)."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, offset)
        while len(data) < length:  # pread may return short reads above 2 GiB
            more = os.pread(f.fileno(), length - len(data), offset + len(data))
            if not more:
                break
            data += more
    return data, crc32_b64(data)
