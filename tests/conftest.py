"""Shared fixtures: a real SeaweedFS S3 server per session, fresh buckets, directory remotes.

Tests under tests/integration/ are marked `integration` automatically, so
`pytest -m "not integration"` runs the fast unit suite alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.s3server import S3Server, start_s3_server, weed_binary

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


# -- S3 (SeaweedFS) ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the session; its credentials are in the environment (AWS chain) meanwhile."""
    try:
        weed_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    env = pytest.MonkeyPatch()  # session scope cannot use the monkeypatch fixture; undone below
    try:
        for name, value in server.env().items():
            env.setenv(name, value)
        # Keep the developer's own AWS setup (profiles, config, instance metadata) out of tests.
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", str(server.workdir / "no-aws-config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(server.workdir / "no-aws-credentials"))
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield server
    finally:
        env.undo()
        server.stop()


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket for one test, as the remote URL a user would configure."""

    url: str  # s3://bucket/prefix
    endpoint: str
    bucket: str
    prefix: str
    server: S3Server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    """A new empty bucket (no cleanup: the session's server directory goes away as a whole)."""
    bucket = s3_server.create_bucket(f"t-{uuid.uuid4().hex[:16]}")
    return S3Bucket(
        url=f"s3://{bucket}/repo", endpoint=s3_server.endpoint, bucket=bucket, prefix="repo", server=s3_server
    )


# -- directory remotes ------------------------------------------------------------------


@pytest.fixture
def tmp_dir_remote(tmp_path: Path) -> str:
    """A `file:///...` remote URL for a directory that does not exist yet (the first put makes it)."""
    return (tmp_path / "remote").as_uri()
