"""The Remote contract, run here against the file:// backend (and by
tests/integration/test_remote_s3.py against S3), plus the directory's own guarantees and
the shared machinery every backend uses: errors, the factory, retry with backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions as bex
import pytest
from gitmld.daemon.remote.base import (
    Remote,
    RemoteError,
    RemoteNotFound,
    RemoteStats,
    RemoteUnavailable,
    open_remote,
)
from gitmld.daemon.remote.directory import TMP_PREFIX, DirectoryRemote
from gitmld.daemon.remote.retry import RetryPolicy, is_transient, with_retry

MiB = 1 << 20
MakeRemote = Callable[..., Remote]


def random_file(path: Path, size: int) -> str:
    """Write size pseudo-random bytes (incompressible, non-repeating) and return their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


class RemoteContract:
    """What every backend promises. Subclasses provide `make_remote(**options) -> Remote`.

    Options a backend does not have (multipart sizes, concurrency) are ignored by it.
    """

    @pytest.fixture
    async def remote(self, make_remote: MakeRemote) -> Remote:
        remote = make_remote()
        await remote.prepare_new_repository()  # what creating a repository does first
        return remote

    async def test_put_then_get_round_trips_and_overwrites(self, remote: Remote) -> None:
        await remote.put_bytes("packs/ab/one", b"first")
        assert await remote.get_bytes("packs/ab/one") == b"first"
        await remote.put_bytes("packs/ab/one", b"second version")
        assert await remote.get_bytes("packs/ab/one") == b"second version"

    async def test_empty_object(self, remote: Remote) -> None:
        await remote.put_bytes("empty", b"")
        assert await remote.exists("empty")
        assert await remote.get_bytes("empty") == b""
        assert await remote.get_range("empty", 0, 10) == b""

    async def test_get_range_is_exact_inside_and_short_only_at_the_end(self, remote: Remote) -> None:
        data = bytes(range(256)) * 4
        await remote.put_bytes("r", data)
        assert await remote.get_range("r", 0, 1) == data[:1]
        assert await remote.get_range("r", 100, 300) == data[100:400]
        assert await remote.get_range("r", 1000, 100) == data[1000:]
        assert await remote.get_range("r", len(data), 10) == b""
        assert await remote.get_range("r", 5, 0) == b""

    async def test_exists(self, remote: Remote) -> None:
        assert not await remote.exists("a/b")
        await remote.put_bytes("a/b", b"x")
        assert await remote.exists("a/b")
        assert not await remote.exists("a")  # a "directory" is not an object

    async def test_list_is_a_string_prefix_relative_to_the_root_and_sorted(self, remote: Remote) -> None:
        for name in ["idx/b", "idx/a", "idx2/c", "packs/00/x", "packs/01/y", "top"]:
            await remote.put_bytes(name, name.encode())
        assert await remote.list("idx/") == ["idx/a", "idx/b"]
        assert await remote.list("idx") == ["idx/a", "idx/b", "idx2/c"]
        assert await remote.list("packs/0") == ["packs/00/x", "packs/01/y"]
        assert await remote.list("") == ["idx/a", "idx/b", "idx2/c", "packs/00/x", "packs/01/y", "top"]
        assert await remote.list("nothing/") == []

    async def test_delete_is_idempotent_and_makes_the_object_missing(self, remote: Remote) -> None:
        await remote.put_bytes("gone", b"x")
        await remote.delete("gone")
        assert not await remote.exists("gone")
        assert await remote.list("") == []
        await remote.delete("gone")  # again: no error, as on S3

    async def test_missing_object_raises_not_found_naming_remote_and_object(self, remote: Remote) -> None:
        with pytest.raises(RemoteNotFound) as info:
            await remote.get_bytes("manifests/missing")
        assert remote.url in str(info.value)
        assert "manifests/missing" in str(info.value)
        assert info.value.object_name == "manifests/missing"
        with pytest.raises(RemoteNotFound):
            await remote.get_range("manifests/missing", 0, 10)

    async def test_put_file_large_is_byte_identical(self, make_remote: MakeRemote, tmp_path: Path) -> None:
        # 40 MiB with a 16 MiB threshold and 8 MiB parts: the multipart path on S3 (5 parts).
        remote = make_remote(multipart_threshold=16 * MiB, part_size=8 * MiB, concurrency=4)
        src = tmp_path / "big.bin"
        digest = random_file(src, 40 * MiB)
        await remote.put_file("big", src)
        back = await remote.get_bytes("big")
        assert len(back) == 40 * MiB
        assert hashlib.sha256(back).hexdigest() == digest
        tail = await remote.get_range("big", 40 * MiB - 100, 1000)
        assert tail == back[-100:]
        assert remote.stats.puts == 1 and remote.stats.put_bytes == 40 * MiB

    async def test_put_file_small_is_byte_identical(self, remote: Remote, tmp_path: Path) -> None:
        src = tmp_path / "small.bin"
        src.write_bytes(b"small file body")
        await remote.put_file("small", src)
        assert await remote.get_bytes("small") == b"small file body"

    async def test_concurrent_puts_all_land(self, make_remote: MakeRemote) -> None:
        remote = make_remote(concurrency=4)
        blobs = {f"c/{i:03d}": os.urandom(1000 + i) for i in range(40)}
        await asyncio.gather(*(remote.put_bytes(name, data) for name, data in blobs.items()))
        assert await remote.list("c/") == sorted(blobs)
        got = await asyncio.gather(*(remote.get_bytes(name) for name in blobs))
        assert dict(zip(blobs, got, strict=True)) == blobs
        assert remote.stats.puts == 40
        assert remote.stats.put_bytes == sum(len(b) for b in blobs.values())

    async def test_stats_count_requests_and_bytes(self, remote: Remote) -> None:
        before = remote.stats.snapshot()
        await remote.put_bytes("s/one", b"12345")
        await remote.get_bytes("s/one")
        await remote.get_range("s/one", 1, 2)
        await remote.list("s/")
        after = remote.stats.snapshot()
        assert before == {"gets": 0, "get_bytes": 0, "puts": 0, "put_bytes": 0, "lists": 0, "retries": 0}
        assert after == {"gets": 2, "get_bytes": 7, "puts": 1, "put_bytes": 5, "lists": 1, "retries": 0}
        assert remote.stats.snapshot() is not remote.stats.snapshot()  # a copy, not a live view


    async def test_put_file_reports_progress_as_parts_complete(self, make_remote: MakeRemote,
                                                              tmp_path: Path) -> None:
        remote = make_remote(multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=2)
        src = tmp_path / "src"
        random_file(src, 12 * MiB + 7)
        seen: list[int] = []
        await remote.put_file("big", src, progress=seen.append)
        assert sum(seen) == 12 * MiB + 7
        assert len(seen) >= 2 and all(0 < n <= 8 * MiB for n in seen)  # parts or steps, never per byte
        await remote.put_file("small", src, progress=None)
        assert await remote.get_range("small", 12 * MiB, 7) == src.read_bytes()[12 * MiB :]

    async def test_probe_answers_whether_an_object_exists(self, remote: Remote) -> None:
        await remote.put_bytes("config", b"c")
        before = remote.stats.snapshot()
        assert await remote.probe("config") is True
        assert await remote.probe("no/such/object") is False
        assert remote.stats.retries == before["retries"]


class TestDirectoryRemote(RemoteContract):
    @pytest.fixture
    async def make_remote(self, tmp_dir_remote: str) -> AsyncIterator[MakeRemote]:
        made: list[Remote] = []

        def make(**_options: Any) -> Remote:
            made.append(DirectoryRemote(tmp_dir_remote))
            made[-1].root.mkdir(parents=True, exist_ok=True)  # the place exists, as a bucket does
            return made[-1]

        yield make
        for remote in made:
            await remote.close()


# -- the directory backend's own guarantees ----------------------------------------------


@pytest.fixture
def directory(tmp_path: Path) -> DirectoryRemote:
    (tmp_path / "remote").mkdir()
    return DirectoryRemote((tmp_path / "remote").as_uri())


async def test_directory_objects_are_plain_files_under_the_root(directory: DirectoryRemote) -> None:
    await directory.put_bytes("packs/ab/cd", b"payload")
    assert (directory.root / "packs" / "ab" / "cd").read_bytes() == b"payload"
    assert not [p for p in directory.root.rglob("*") if p.name.startswith(TMP_PREFIX)]


async def test_directory_ignores_leftover_temp_files_from_a_crash(directory: DirectoryRemote) -> None:
    await directory.put_bytes("packs/one", b"whole")
    leftover = directory.root / "packs" / f"{TMP_PREFIX}two.deadbeef"
    leftover.write_bytes(b"half")  # what a kill -9 in the middle of a put leaves
    assert await directory.list("") == ["packs/one"]
    assert not await directory.exists("packs/two")


async def test_directory_failed_put_file_leaves_no_object_and_no_temp(
    directory: DirectoryRemote, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        await directory.put_file("x", tmp_path / "no-such-source")
    assert not await directory.exists("x")
    assert not [p for p in directory.root.rglob("*") if p.is_file()]


async def test_directory_probe_of_a_missing_root_is_unavailable(tmp_path: Path) -> None:
    directory = DirectoryRemote((tmp_path / "unmounted").as_uri())
    with pytest.raises(RemoteUnavailable, match="does not exist") as info:
        await directory.probe("config")  # never written: the directory is not there (unmounted)
    assert str(directory.root) in str(info.value)


async def test_a_new_repository_creates_the_root_and_its_parents(tmp_path: Path) -> None:
    remote = DirectoryRemote((tmp_path / "xdg" / "gitmld" / "remote").as_uri())  # the default lives so
    await remote.prepare_new_repository()
    await remote.put_bytes("packs/k", b"v")
    assert (tmp_path / "xdg" / "gitmld" / "remote" / "packs" / "k").read_bytes() == b"v"


async def test_ordinary_writes_never_create_a_missing_root(tmp_path: Path) -> None:
    """A share that is not mounted leaves an empty mountpoint: uploads must fail (and stay
    queued), not fill the local disk under it."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    remote = DirectoryRemote((mountpoint / "models").as_uri())
    source = tmp_path / "pack"
    source.write_bytes(b"pack bytes")
    with pytest.raises(RemoteUnavailable, match="does not exist"):
        await remote.put_bytes("data/ab/cd", b"x")
    with pytest.raises(RemoteUnavailable, match="mount it"):
        await remote.put_file("data/ab/ef", source)
    assert list(mountpoint.iterdir()) == []


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "../escape", "a/../../b", "./a", f"a/{TMP_PREFIX}x"])
async def test_directory_refuses_names_that_escape_or_collide(directory: DirectoryRemote, name: str) -> None:
    with pytest.raises(RemoteError, match="invalid object name"):
        await directory.put_bytes(name, b"x")
    assert not (directory.root.parent / "escape").exists()


async def test_directory_url_is_percent_decoded(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    remote = DirectoryRemote(root.as_uri())
    assert "%20" in remote.url
    await remote.prepare_new_repository()
    await remote.put_bytes("k", b"v")
    assert (root / "k").read_bytes() == b"v"


@pytest.mark.parametrize("url", ["file://relative/path", "file:", "file://otherhost/abs"])
def test_directory_rejects_malformed_urls(url: str) -> None:
    with pytest.raises(RemoteError, match="file:///absolute/path"):
        DirectoryRemote(url)


# -- base: errors and the factory --------------------------------------------------------


def test_remote_error_message_names_remote_object_cause_and_remedy() -> None:
    err = RemoteUnavailable("s3://bucket/p", "packs/x", ConnectionRefusedError(111, "Connection refused"))
    text = str(err)
    assert "s3://bucket/p" in text and "'packs/x'" in text
    assert "ConnectionRefusedError" in text and "Connection refused" in text
    assert "check the network" in text
    assert isinstance(err, RemoteError)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is RemoteUnavailable and str(copy) == text


def test_remote_error_without_object_names_only_the_remote() -> None:
    text = str(RemoteError("file:///srv/r", None, "disk on fire", hint="call someone"))
    assert text == "remote file:///srv/r: disk on fire; call someone"


@dataclass(frozen=True)
class _Config:  # the attributes of gitmld.proto.remote_config.RemoteConfig open_remote reads
    url: str
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = False
    keyfile: str | None = None
    compression_level: int = 3
    pack_size: int = 16 * MiB
    concurrency: int = 8


async def test_open_remote_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    from gitmld.daemon.remote.s3 import S3Remote

    local = open_remote(_Config(url=tmp_path.as_uri()))
    assert isinstance(local, DirectoryRemote) and isinstance(local, Remote)
    s3 = open_remote(
        _Config(url="s3://bucket/pre/fix", endpoint="http://127.0.0.1:1", path_style=True, concurrency=3, region="")
    )
    assert isinstance(s3, S3Remote) and isinstance(s3, Remote)
    assert (s3.bucket, s3.endpoint, s3.path_style, s3.concurrency, s3.region) == (
        "bucket",
        "http://127.0.0.1:1",
        True,
        3,
        None,
    )
    await s3.close()  # never connected: closing is still fine
    # path_style None (unset): path style exactly when an endpoint is set (SeaweedFS, MinIO, Ceph).
    assert isinstance(implied := open_remote(_Config(url="s3://b/x", endpoint="http://h:1", path_style=None)),
                      S3Remote) and implied.path_style
    assert isinstance(aws := open_remote(_Config(url="s3://b/x", path_style=None)), S3Remote)
    assert not aws.path_style


async def test_open_remote_takes_the_real_remote_config(tmp_path: Path) -> None:
    remote_config = pytest.importorskip("gitmld.proto.remote_config")
    from gitmld.daemon.remote.s3 import S3Remote

    s3 = open_remote(remote_config.RemoteConfig(url="s3://bucket/p", endpoint="http://127.0.0.1:9"))
    assert isinstance(s3, S3Remote) and s3.path_style and s3.endpoint == "http://127.0.0.1:9"
    await s3.close()
    assert isinstance(open_remote(remote_config.RemoteConfig(url=tmp_path.as_uri())), DirectoryRemote)


def test_open_remote_rejects_unknown_schemes() -> None:
    with pytest.raises(RemoteError, match=r"unsupported URL scheme 'gs'.*s3://bucket/prefix"):
        open_remote(_Config(url="gs://bucket/x"))


# -- retry: backoff, classification, bounds ----------------------------------------------


def _client_error(status: int, code: str) -> bex.ClientError:
    return bex.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_client_error(503, "SlowDown"), True),
        (_client_error(500, "InternalError"), True),
        (_client_error(502, "BadGateway"), True),
        (_client_error(429, "TooManyRequests"), True),
        (_client_error(400, "RequestTimeout"), True),
        (_client_error(404, "NoSuchKey"), False),
        (_client_error(403, "AccessDenied"), False),
        (bex.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (bex.ReadTimeoutError(endpoint_url="http://x"), True),
        (ConnectionResetError(104, "reset"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (bex.SSLError(endpoint_url="https://x", error="bad cert"), False),
        (bex.NoCredentialsError(), False),
        (ValueError("bug"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    assert [policy.backoff(n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff(3, rand=lambda: 0.0) == 0.0
    assert policy.backoff(3, rand=lambda: 0.25) == 0.5


class _Flaky:
    """Fails with `error` the first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: Callable[[], BaseException]) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return "ok"


async def _run(
    op: Callable[[], Awaitable[str]], policy: RetryPolicy, stats: RemoteStats, sleeps: list[float] | None = None
) -> str:
    async def fake_sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    return await with_retry(op, policy=policy, stats=stats, remote_url="s3://b/p", object_name="obj", sleep=fake_sleep)


async def test_retry_succeeds_after_throttling_and_counts_retries() -> None:
    stats = RemoteStats()
    sleeps: list[float] = []
    op = _Flaky(2, lambda: _client_error(503, "SlowDown"))
    assert await _run(op, RetryPolicy(attempts=5, base_delay=0.1, max_delay=1.0), stats, sleeps) == "ok"
    assert op.calls == 3 and stats.retries == 2
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


async def test_retry_gives_up_after_the_last_attempt_with_a_clear_message() -> None:
    stats = RemoteStats()
    op = _Flaky(99, lambda: ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(RemoteUnavailable) as info:
        await _run(op, RetryPolicy(attempts=3, base_delay=0.01), stats)
    assert op.calls == 3 and stats.retries == 2
    text = str(info.value)
    assert "gave up after 3 attempts over" in text and "Connection refused" in text
    assert "s3://b/p" in text and "'obj'" in text
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_retry_stops_at_the_deadline_before_the_attempt_budget() -> None:
    now = [0.0]

    async def slow_failure() -> str:
        now[0] += 4.0  # each attempt takes 4 s of (fake) time
        raise TimeoutError("read timed out")

    stats = RemoteStats()
    with pytest.raises(RemoteUnavailable, match=r"gave up after 3 attempts over 12\.0 s"):
        await with_retry(
            slow_failure,
            policy=RetryPolicy(attempts=100, base_delay=0.0, deadline=10.0),
            stats=stats,
            remote_url="u",
            object_name=None,
            sleep=lambda s: asyncio.sleep(0),
            clock=lambda: now[0],
        )
    assert stats.retries == 2


async def test_retry_raises_permanent_errors_at_once() -> None:
    stats = RemoteStats()
    op = _Flaky(1, lambda: _client_error(403, "AccessDenied"))
    with pytest.raises(bex.ClientError):
        await _run(op, RetryPolicy(attempts=5), stats)
    assert op.calls == 1 and stats.retries == 0
