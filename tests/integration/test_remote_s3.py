"""The Remote contract against a real SeaweedFS S3, plus what only S3 has: multipart uploads,
credentials from the AWS chain, retries against unreachable and throttling endpoints.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from gitmld.daemon.remote.base import Remote, RemoteError, RemoteNotFound, RemoteUnavailable
from gitmld.daemon.remote.retry import RetryPolicy
from gitmld.daemon.remote.s3 import S3Remote

from tests.conftest import S3Bucket
from tests.s3server import free_ports
from tests.unit.test_remote_directory import MakeRemote, MiB, RemoteContract, random_file

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, deadline=10.0)


@pytest.fixture
async def s3_remotes() -> AsyncIterator[list[S3Remote]]:
    """Remotes made by a test; closed after it (each holds a connection pool)."""
    made: list[S3Remote] = []
    yield made
    for remote in made:
        await remote.close()


class TestS3Remote(RemoteContract):
    @pytest.fixture
    def make_remote(self, s3_bucket: S3Bucket, s3_remotes: list[S3Remote]) -> MakeRemote:
        def make(**options: Any) -> Remote:
            # No credentials passed: the AWS chain finds the ones s3_server put in the environment.
            s3_remotes.append(S3Remote(s3_bucket.url, endpoint=s3_bucket.endpoint, path_style=True, **options))
            return s3_remotes[-1]

        return make


async def test_large_put_file_is_a_multipart_upload(
    s3_bucket: S3Bucket, s3_remotes: list[S3Remote], tmp_path: Path
) -> None:
    remote = S3Remote(s3_bucket.url, endpoint=s3_bucket.endpoint, path_style=True,
                      multipart_threshold=16 * MiB, part_size=8 * MiB, concurrency=3)
    s3_remotes.append(remote)
    src = tmp_path / "f"
    random_file(src, 20 * MiB + 123)
    await remote.put_file("m", src)
    head = s3_bucket.server.client().head_object(Bucket=s3_bucket.bucket, Key="repo/m")
    assert head["ETag"].strip('"').endswith("-3")  # S3 marks multipart objects with -<parts>
    assert head["ContentLength"] == 20 * MiB + 123
    uploads = s3_bucket.server.client().list_multipart_uploads(Bucket=s3_bucket.bucket)
    assert not uploads.get("Uploads")


async def test_objects_live_under_the_url_prefix(s3_bucket: S3Bucket, s3_remotes: list[S3Remote]) -> None:
    remote = S3Remote(s3_bucket.url, endpoint=s3_bucket.endpoint, path_style=True)
    other = S3Remote(f"s3://{s3_bucket.bucket}/other", endpoint=s3_bucket.endpoint, path_style=True)
    s3_remotes += [remote, other]
    await remote.put_bytes("k", b"v")
    await other.put_bytes("k", b"w")
    keys = [o["Key"] for o in s3_bucket.server.client().list_objects_v2(Bucket=s3_bucket.bucket)["Contents"]]
    assert keys == ["other/k", "repo/k"]
    assert await remote.list("") == ["k"]
    assert await remote.get_bytes("k") == b"v"


async def test_list_pages_through_more_than_one_response(
    s3_bucket: S3Bucket, s3_remotes: list[S3Remote]
) -> None:
    remote = S3Remote(s3_bucket.url, endpoint=s3_bucket.endpoint, path_style=True, list_page_size=2)
    s3_remotes.append(remote)
    names = [f"p/{i}" for i in range(5)]
    await asyncio.gather(*(remote.put_bytes(n, b"") for n in names))
    await remote.put_bytes("q", b"")  # outside the prefix
    assert await remote.list("p/") == names
    assert remote.stats.lists == 3


async def test_missing_bucket_is_a_clear_remote_error(s3_server: Any, s3_remotes: list[S3Remote]) -> None:
    remote = S3Remote("s3://no-such-bucket-here/x", endpoint=s3_server.endpoint, path_style=True)
    s3_remotes.append(remote)
    with pytest.raises(RemoteError, match="bucket 'no-such-bucket-here' does not exist"):
        await remote.put_bytes("k", b"v")
    assert remote.stats.retries == 0


async def test_wrong_secret_is_access_denied_without_retries(
    s3_bucket: S3Bucket, s3_remotes: list[S3Remote], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    remote = S3Remote(s3_bucket.url, endpoint=s3_bucket.endpoint, path_style=True)
    s3_remotes.append(remote)
    with pytest.raises(RemoteError) as info:
        await remote.get_bytes("k")
    assert not isinstance(info.value, RemoteNotFound)
    assert "access denied" in str(info.value) and "AWS_ACCESS_KEY_ID" in str(info.value)
    assert "not-the-secret" not in str(info.value)
    assert remote.stats.retries == 0


# -- retries against endpoints that misbehave (no SeaweedFS needed) ----------------------


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("fake_credentials")
async def test_unreachable_endpoint_is_unavailable_after_bounded_retries(s3_remotes: list[S3Remote]) -> None:
    (port,) = free_ports(1)  # nothing listens there: connection refused
    remote = S3Remote("s3://bucket/pre", endpoint=f"http://127.0.0.1:{port}", path_style=True,
                      retry=FAST_RETRY, connect_timeout=1.0)
    s3_remotes.append(remote)
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable) as info:
        await remote.get_bytes("packs/p1")
    assert time.monotonic() - started < 5.0
    text = str(info.value)
    assert "gave up after 3 attempts" in text and "s3://bucket/pre" in text and "'packs/p1'" in text
    assert f"127.0.0.1:{port}" in text  # the cause says where it tried
    assert remote.stats.retries == 2 and remote.stats.gets == 0


@pytest.mark.usefixtures("fake_credentials")
async def test_probe_of_an_unreachable_endpoint_fails_at_once(s3_remotes: list[S3Remote]) -> None:
    (port,) = free_ports(1)  # nothing listens there: connection refused
    remote = S3Remote("s3://bucket/pre", endpoint=f"http://127.0.0.1:{port}", path_style=True,
                      connect_timeout=1.0)  # the default retry policy: a probe must not use it
    s3_remotes.append(remote)
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable) as info:
        await remote.probe("config")
    assert time.monotonic() - started < 3.0
    assert "s3://bucket/pre" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert remote.stats.retries == 0


async def test_no_credentials_is_a_clear_error_without_retries(
    s3_remotes: list[S3Remote], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (port,) = free_ports(1)
    remote = S3Remote("s3://bucket/pre", endpoint=f"http://127.0.0.1:{port}", retry=FAST_RETRY)
    s3_remotes.append(remote)
    with pytest.raises(RemoteError, match=r"no usable AWS credentials found.*AWS_ACCESS_KEY_ID") as info:
        await remote.exists("k")
    assert not isinstance(info.value, RemoteUnavailable)
    assert remote.stats.retries == 0


@dataclass
class FakeS3:
    """A canned S3 on 127.0.0.1: fails the first `fail_first` requests with 503 SlowDown."""

    fail_first: int = 0
    part_status: int = 0  # non-zero: UploadPart answers this
    requests: list[str] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path_qs}")
        body = await request.read()
        if len(self.requests) <= self.fail_first:
            return _error(503, "SlowDown", "Please reduce your request rate.")
        if request.method == "POST" and "uploads" in request.query:
            return web.Response(content_type="application/xml", text=(
                "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                "<UploadId>up-1</UploadId></InitiateMultipartUploadResult>"))
        if request.method == "PUT" and "partNumber" in request.query and self.part_status:
            return _error(self.part_status, "AccessDenied", "no parts for you")
        if request.method == "DELETE":
            return web.Response(status=204)
        if request.method == "PUT":
            self.objects[request.path] = body
            return web.Response(headers={"ETag": '"etag"'})
        if request.method == "GET" and request.path in self.objects:
            return web.Response(body=self.objects[request.path])
        return _error(404, "NoSuchKey", "The specified key does not exist.")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/xml",
                        text=f"<Error><Code>{code}</Code><Message>{message}</Message></Error>")


@pytest.fixture
async def fake_s3() -> AsyncIterator[tuple[FakeS3, str]]:
    fake = FakeS3()
    app = web.Application(client_max_size=64 * MiB)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    yield fake, f"http://127.0.0.1:{sock.getsockname()[1]}"
    await runner.cleanup()


@pytest.mark.usefixtures("fake_credentials")
async def test_throttling_is_retried_until_it_succeeds(
    fake_s3: tuple[FakeS3, str], s3_remotes: list[S3Remote]
) -> None:
    fake, endpoint = fake_s3
    remote = S3Remote("s3://bucket/pre", endpoint=endpoint, path_style=True, retry=FAST_RETRY)
    s3_remotes.append(remote)
    fake.fail_first = 2
    await remote.put_bytes("obj", b"payload")
    assert remote.stats.retries == 2 and remote.stats.puts == 1
    assert fake.requests == ["PUT /bucket/pre/obj"] * 3
    fake.fail_first = len(fake.requests) + 2
    assert await remote.get_bytes("obj") == b"payload"
    assert remote.stats.retries == 4 and remote.stats.gets == 1


@pytest.mark.usefixtures("fake_credentials")
async def test_failed_multipart_upload_is_aborted(
    fake_s3: tuple[FakeS3, str], s3_remotes: list[S3Remote], tmp_path: Path
) -> None:
    fake, endpoint = fake_s3
    fake.part_status = 403
    remote = S3Remote("s3://bucket/pre", endpoint=endpoint, path_style=True, retry=FAST_RETRY,
                      multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=2)
    s3_remotes.append(remote)
    src = tmp_path / "f"
    random_file(src, 11 * MiB)
    with pytest.raises(RemoteError, match="access denied"):
        await remote.put_file("big", src)
    assert fake.requests[0] == "POST /bucket/pre/big?uploads"
    assert fake.requests[-1] == "DELETE /bucket/pre/big?uploadId=up-1"
    assert not any("?uploadId=up-1" in r and r.startswith("POST") for r in fake.requests)  # never completed
    assert remote.stats.puts == 0
