"""The daemon process: graceful SIGTERM, and the upload queue across a restart."""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gitmld.client.daemon_client import DaemonClient, DaemonError

from tests.integration.gitenv import GitEnv, wait_until

pytestmark = pytest.mark.integration


def test_sigterm_lets_the_request_in_flight_finish_and_queued_uploads_survive(
    make_user: Callable[..., GitEnv], tmp_path: Path
) -> None:
    user = make_user("u")
    remote = {"url": (tmp_path / "remote").as_uri()}
    first, second = b"a" * (3 << 20), b"b" * (3 << 20)
    halfway, release = threading.Event(), threading.Event()

    def content() -> Iterator[bytes]:
        yield first
        halfway.set()
        release.wait(60)  # the test sends SIGTERM while the daemon waits for the rest
        yield second

    client = DaemonClient.connect(str(user.socket_path), autostart=False)
    answer: dict[str, Any] = {}
    put = threading.Thread(target=lambda: answer.update(client.put(remote, "model.bin", content())))
    put.start()
    assert halfway.wait(60)
    daemon = user.daemon
    assert daemon is not None
    daemon.send_signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in user.daemon_log(), 30, "the daemon to begin its shutdown")
    release.set()
    put.join(120)
    client.close()
    assert answer.get("oid") == "sha256:" + hashlib.sha256(first + second).hexdigest()
    assert daemon.wait(60) == 0
    assert not user.socket_path.exists()

    user.start_daemon()  # the queue persisted: a flush after the restart makes the object durable
    again = DaemonClient.connect(str(user.socket_path), autostart=False)
    again.request("flush", remote=remote, oids=[answer["oid"]])
    again.close()

    other = make_user("other", start=False)  # a fresh cache, same keyfile: reads through the remote
    key = Path(user.env["XDG_CONFIG_HOME"]) / "gitmld" / "keyfile"
    target = Path(other.env["XDG_CONFIG_HOME"]) / "gitmld" / "keyfile"
    target.parent.mkdir(parents=True, mode=0o700)
    target.write_bytes(key.read_bytes())
    target.chmod(0o600)
    other.start_daemon()
    reader = DaemonClient.connect(str(other.socket_path), autostart=False)
    data = b"".join(reader.get(remote, answer["oid"], len(first + second), "model.bin"))
    reader.close()
    assert data == first + second


def test_requests_after_shutdown_are_refused(make_user: Callable[..., GitEnv]) -> None:
    user = make_user("u")
    client = DaemonClient.connect(str(user.socket_path), autostart=False)
    assert client.request("shutdown") == {}
    assert user.daemon is not None and user.daemon.wait(60) == 0
    with pytest.raises(DaemonError):
        DaemonClient.connect(str(user.socket_path), autostart=False)


def test_a_file_above_4_gib_streams_through_put_and_get(make_user: Callable[..., GitEnv], tmp_path: Path) -> None:
    """Sizes past 2**32 cross every length field; zeros dedup, so the disk holds almost nothing."""
    user = make_user("u")
    remote = {"url": (tmp_path / "remote").as_uri()}
    block = bytes(8 << 20)
    blocks = (4 << 30) // len(block) + 25  # 4 GiB + 200 MiB
    size = blocks * len(block)
    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)

    client = DaemonClient.connect(str(user.socket_path), autostart=False)
    answer = client.put(remote, "huge.bin", (block for _ in range(blocks)))
    assert answer["size"] == size and answer["oid"] == "sha256:" + expected.hexdigest()
    got = hashlib.sha256()
    received = 0
    for piece in client.get(remote, answer["oid"], size, "huge.bin"):
        got.update(piece)
        received += len(piece)
    client.close()
    assert received == size and got.hexdigest() == expected.hexdigest()
