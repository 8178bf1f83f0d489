"""Direct smudge when the filter leaves mid-file (docs/DECISIONS.md, "Direct smudge").

The daemon writes pkt-lines into the filter's stdout (Git's pipe) through /proc/<pid>/fd/1. When
the filter process dies while that runs, the daemon must stop writing, close its end of the pipe
(so that Git, holding the read end, sees EOF instead of waiting forever), forget the transfer
and go on serving. Here a real daemon serves a real child process that asks for `get_pipe` with
a pipe as its stdout; the test holds the pipe's read end, playing Git, and SIGKILLs the child:
- "full": the test never reads, so the daemon is parked on a full pipe when the child dies;
- "flowing": the test drains the pipe as fast as it can and kills the child after a few MiB,
  so the daemon is busy mid-file (decoding chunks, writing packets, or waiting a moment for
  the reader) when the child dies.
Either way the pipe must reach EOF (the test holds no write end, the child is dead: only the
daemon's fd could keep it open) well before the whole file could have been written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gitmld.client.daemon_client import DaemonClient
from gitmld.proto import pktline

from tests.integration.gitenv import GitEnv, wait_until

pytestmark = pytest.mark.integration

SIZE = 64 << 20  # far more than a pipe holds, and than the daemon writes in the moment it takes to notice
PIPE_SIZE = 1 << 20  # what the filter makes of its stdout (client/filter_process.py widen_pipe)
KILL_AFTER = 4 << 20  # "flowing": bytes the test reads before it kills the filter
DEADLINE = 15.0  # seconds for anything the test waits on; a passing run takes a fraction

# The filter's part of direct smudge, and nothing else: stdout (fd 1) is the pipe.
FILTER = """
import json, sys
from gitmld.client.daemon_client import DaemonClient
args = json.loads(sys.argv[1])
client = DaemonClient.connect(args["socket"], autostart=False)
written = client.get_into_pipe(args["remote"], args["oid"], args["size"], "model.bin", 1)
sys.stderr.write(f"get_pipe wrote {written}\\n")
"""


def framed(data: bytes, upto: int) -> bytes:
    """The first `upto` bytes of what the daemon writes for `data`: full 65516-byte packets."""
    packets = -(-upto // pktline.MAX_PKT_SIZE)
    pay = pktline.MAX_PAYLOAD
    return b"".join(pktline.encode_data(data[i * pay:(i + 1) * pay]) for i in range(packets))[:upto]


def framed_size(size: int) -> int:
    return size + -(-size // pktline.MAX_PAYLOAD) * pktline.HEADER_SIZE


def pipe_full(read_fd: int) -> bool:
    """No room for another write, which is what the daemon's writer then waits for (POLLOUT).
    Asked on a write end of our own, opened and closed at once; the bytes in the pipe are no
    measure: the kernel fills it page by page and a full pipe may hold less than its size."""
    w = os.open(f"/proc/self/fd/{read_fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return not select.select([], [w], [], 0)[1]
    finally:
        os.close(w)


def holds_pipe(pid: int, ino: int) -> bool:
    """Whether process `pid` has an fd open on the pipe with inode `ino`."""
    target = f"pipe:[{ino}]"
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        try:
            if os.readlink(fds / fd) == target:
                return True
        except FileNotFoundError:
            continue
    return False


def read_to_eof(fd: int, deadline_s: float, on_bytes: Callable[[int], None] | None = None) -> bytes:
    """Everything from the pipe until every writer has closed it; TimeoutError if that takes
    longer than `deadline_s` (someone still holds a write end)."""
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    out = bytearray()
    end = time.monotonic() + deadline_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the pipe was still open for writing after {deadline_s}s ({len(out)} bytes read)")
        if not poller.poll(left * 1000):
            continue
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            continue
        if not data:
            return bytes(out)
        out += data
        if on_bytes is not None:
            on_bytes(len(out))


def start_filter(user: GitEnv, remote: dict[str, Any], oid: str, size: int, stderr: Path) -> tuple[
        subprocess.Popen[bytes], int, int]:
    """A child asking for get_pipe into its stdout: (child, read end of its stdout, pipe inode)."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    args = {"socket": str(user.socket_path), "remote": remote, "oid": oid, "size": size}
    with open(stderr, "ab") as err:
        child = subprocess.Popen([sys.executable, "-c", FILTER, json.dumps(args)], env=user.env,
                                 stdin=subprocess.DEVNULL, stdout=w, stderr=err)
    os.close(w)  # the child's fd 1 (and, once it opens it, the daemon's fd) are the only writers
    return child, r, os.fstat(r).st_ino


def status(user: GitEnv) -> dict[str, Any]:
    client = DaemonClient.connect(str(user.socket_path), autostart=False)
    try:
        return client.request("status")
    finally:
        client.close()


@pytest.mark.parametrize("when", ["full", "flowing"])
def test_a_filter_that_dies_mid_file_stops_the_daemon_writing_into_its_pipe(
        when: str, make_user: Callable[..., GitEnv], tmp_path: Path) -> None:
    user = make_user("u")
    daemon = user.daemon
    assert daemon is not None
    remote = {"url": (tmp_path / "remote").as_uri()}
    data = random.Random(when).randbytes(SIZE)
    oid = "sha256:" + hashlib.sha256(data).hexdigest()
    client = DaemonClient.connect(str(user.socket_path), autostart=False)
    put = client.put(remote, "model.bin", (data[i:i + (8 << 20)] for i in range(0, SIZE, 8 << 20)))
    client.close()
    assert put["oid"] == oid
    filter_log = tmp_path / "filter.log"

    child, r, ino = start_filter(user, remote, oid, SIZE, filter_log)
    try:
        if when == "full":
            # The daemon fills the pipe and waits for Git to read; nobody does.
            wait_until(lambda: child.poll() is not None or pipe_full(r), DEADLINE, "the daemon to fill the pipe")
            assert child.poll() is None, filter_log.read_text()
            child.kill()
            child.wait(DEADLINE)
            wait_until(lambda: not holds_pipe(daemon.pid, ino), DEADLINE, "the daemon to close its end of the pipe")
            received = read_to_eof(r, DEADLINE)
        else:
            def kill_once_flowing(got: int) -> None:
                if got >= KILL_AFTER and child.returncode is None:
                    child.kill()
                    child.wait(DEADLINE)

            received = read_to_eof(r, DEADLINE, kill_once_flowing)
            # EOF: the daemon closed its end too
            assert child.returncode == -signal.SIGKILL, f"not killed mid-file: {filter_log.read_text()}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE)
        os.close(r)
    assert 0 < len(received) < framed_size(SIZE), f"{len(received)} bytes: the daemon did not stop"
    assert received == framed(data, len(received)), "the pipe holds the start of the file's packets"

    # The handler is gone (its connection closed) and so is the transfer it was reading.
    def settled() -> dict[str, Any] | None:
        doc = status(user)
        mine = [t for t in doc["transfers"] if t["what"] == oid]
        return doc if doc["connections"] == 1 and not mine else None  # 1: this status request

    try:
        doc = wait_until(settled, DEADLINE, "the daemon to drop the dead filter's connection and its transfer")
    except TimeoutError:
        raise AssertionError(f"status still shows it: {json.dumps(status(user), indent=1)}") from None
    assert doc["direct_smudge_bytes"] == 0, "an abandoned get_pipe counts as written"

    # The daemon still serves the same object, into a pipe and over the socket.
    child, r, _ = start_filter(user, remote, oid, SIZE, filter_log)
    try:
        whole = read_to_eof(r, DEADLINE)
    finally:
        os.close(r)
    assert child.wait(DEADLINE) == 0, filter_log.read_text()
    assert len(whole) == framed_size(SIZE) and whole == framed(data, len(whole))
    assert status(user)["direct_smudge_bytes"] == SIZE
    client = DaemonClient.connect(str(user.socket_path), autostart=False)
    got = hashlib.sha256()
    for piece in client.get(remote, oid, SIZE, "model.bin"):
        got.update(piece)
    client.close()
    assert "sha256:" + got.hexdigest() == oid

    # Nothing is left running that would hold up a graceful stop.
    assert user.stop_daemon(timeout=DEADLINE) == 0, user.daemon_log()[-3000:]
