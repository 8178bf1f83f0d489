"""The filter process, driven through pipes as git drives it, against the fake daemon; then real git."""

from __future__ import annotations

import hashlib
import io
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gitmld.client.daemon_client import DaemonClient, DaemonUnavailable
from gitmld.client.filter_process import FilterProcess, main
from gitmld.proto import filter_protocol as fp
from gitmld.proto import pktline
from gitmld.proto.pointer import Pointer

from tests.unit.test_daemon_client import REMOTE, FakeDaemon, wait_until

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
)


class Git:
    """Git's side of the pipes, with a FilterProcess running in a thread."""

    def __init__(self, connect: Callable[[], DaemonClient], fetch_timeout: float = 600.0,
                 direct: bool | None = False) -> None:
        to_filter_r, self.to_filter = os.pipe()
        self.from_filter, from_filter_w = os.pipe()
        self.stderr = io.StringIO()
        self.filter = FilterProcess(
            to_filter_r, from_filter_w, connect=connect, remote=lambda: REMOTE, stderr=self.stderr,
            fetch_timeout=lambda: fetch_timeout, direct=direct,
        )
        self.error: BaseException | None = None
        self.rc: int | None = None
        self._fds = (to_filter_r, from_filter_w)
        self.reader = pktline.PktLineReader()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.rc = self.filter.run()
        except BaseException as exc:
            self.error = exc
        finally:
            for fd in self._fds:
                os.close(fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.to_filter, view) :]

    def packet(self, timeout: float = 10.0) -> pktline.Event:
        deadline = time.monotonic() + timeout
        while (event := self.reader.next_event()) is None:
            ready, _, _ = select.select([self.from_filter], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"the filter said nothing for {timeout}s (error: {self.error!r})")
            data = os.read(self.from_filter, 1 << 16)
            if not data:
                raise AssertionError(f"the filter closed its stdout (error: {self.error!r})")
            self.reader.feed(data)
        return event

    def has_output(self) -> bool:
        return self.reader.buffered > 0 or bool(select.select([self.from_filter], [], [], 0)[0])

    def text_list(self) -> list[str]:
        out = []
        while isinstance(event := self.packet(), pktline.Data):
            out.append(event.data.decode().rstrip("\n"))
        assert isinstance(event, pktline.Flush)
        return out

    def content(self) -> bytes:
        out = bytearray()
        while isinstance(event := self.packet(), pktline.Data):
            out += event.data
        assert isinstance(event, pktline.Flush)
        return bytes(out)

    def handshake(self) -> list[str]:
        self.write(fp.encode_client_welcome() + fp.encode_client_capabilities())
        assert self.text_list() == ["git-filter-server", "version=2"]
        return self.text_list()

    def answer(self) -> tuple[str, bytes, list[str]]:
        """(status, content, trailing status list) of one clean/smudge answer."""
        status = self.text_list()
        if status != ["status=success"]:
            return status[0].removeprefix("status="), b"", []
        content = self.content()
        return "success", content, self.text_list()

    def request(self, name: str, path: str, content: bytes, **headers: str) -> tuple[str, bytes, list[str]]:
        self.write(fp.encode_request(name, {"pathname": path, **headers}, content))
        return self.answer()

    def list_available(self) -> list[str]:
        self.write(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
        paths = self.text_list()
        assert self.text_list() == ["status=success"]
        return paths

    def close(self) -> int | None:
        os.close(self.to_filter)
        self.thread.join(10)
        os.close(self.from_filter)
        if self.error is not None:
            raise self.error
        return self.rc


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "daemon.sock")


@pytest.fixture
def daemon(sock_path: str) -> Iterator[FakeDaemon]:
    with FakeDaemon(sock_path) as d:
        yield d


@pytest.fixture
def git(daemon: FakeDaemon, sock_path: str) -> Iterator[Git]:
    g = Git(lambda: DaemonClient.connect(sock_path, autostart=False, timeout=5))
    assert g.handshake() == ["capability=clean", "capability=smudge", "capability=delay"]
    yield g
    assert g.close() == 0


def test_clean_streams_20mb_to_the_daemon(git: Git, daemon: FakeDaemon) -> None:
    block = os.urandom(1 << 20)
    content = b"".join(bytes([i]) + block[1:] for i in range(20))
    git.write(pktline.encode_text("command=clean") + pktline.encode_text("pathname=big.bin") + pktline.FLUSH_PKT)
    git.write(pktline.encode_stream(content[: 10 << 20]))
    # half written and git has not finished: the daemon must already have most of it
    wait_until(lambda: daemon.received.get("big.bin", 0) >= 8 << 20, what="streaming to the daemon")
    git.write(pktline.encode_stream(content[10 << 20 :]) + pktline.FLUSH_PKT)
    status, out, trailer = git.answer()
    assert status == "success" and trailer == []
    pointer = Pointer.parse(out)
    assert pointer.oid == "sha256:" + hashlib.sha256(content).hexdigest() and pointer.size == len(content)
    assert daemon.objects[pointer.oid] == content
    assert daemon.max_data_frame <= 256 << 10
    assert daemon.requests[0]["remote"] == REMOTE and daemon.requests[0]["path"] == "big.bin"


def test_clean_of_a_pointer_or_an_empty_file_needs_no_daemon(git: Git, daemon: FakeDaemon) -> None:
    text = daemon.add(b"weights").to_bytes()
    assert git.request("clean", "m.bin", text) == ("success", text, [])
    assert git.request("clean", "empty.bin", b"") == ("success", b"", [])
    newer = text.replace(b"gitmld/1", b"gitmld/2")
    assert git.request("clean", "new.bin", newer) == ("success", newer, [])
    assert daemon.requests == []
    assert "newer gitmld is needed" in git.stderr.getvalue()


def test_clean_of_a_pointer_lookalike_stores_it_as_content(git: Git, daemon: FakeDaemon) -> None:
    fake = b"version gitmld/1\nthis is a note about the format\n"
    status, out, _ = git.request("clean", "notes.txt", fake)
    assert status == "success" and daemon.objects[Pointer.parse(out).oid] == fake
    assert "notes.txt" in git.stderr.getvalue()


def test_smudge_streams_verified_content(git: Git, daemon: FakeDaemon) -> None:
    content = os.urandom(300_000)
    pointer = daemon.add(content)
    assert git.request("smudge", "m.bin", pointer.to_bytes(), **{"can-delay": "1"}) == ("success", content, [])
    assert daemon.ops() == ["has", "get"]
    assert daemon.requests[1] == {"op": "get", "remote": REMOTE, "oid": pointer.oid, "size": 300_000, "path": "m.bin"}


def test_smudge_falls_back_to_the_socket_when_the_daemon_cannot_write_into_the_pipe(
        daemon: FakeDaemon, sock_path: str) -> None:
    g = Git(lambda: DaemonClient.connect(sock_path, autostart=False, timeout=5), direct=None)
    g.handshake()
    content = os.urandom(200_000)
    pointer = daemon.add(content)
    for _ in range(2):
        assert g.request("smudge", "m.bin", pointer.to_bytes()) == ("success", content, [])
    assert daemon.ops() == ["pipe_check", "get", "get"], "asked once per process, then the socket path"
    assert g.close() == 0


def test_smudge_does_not_ask_for_direct_writes_when_disabled(daemon: FakeDaemon, sock_path: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITMLD_NO_DIRECT_SMUDGE", "1")
    g = Git(lambda: DaemonClient.connect(sock_path, autostart=False, timeout=5), direct=None)
    g.handshake()
    pointer = daemon.add(b"x" * 1000)
    assert g.request("smudge", "m.bin", pointer.to_bytes()) == ("success", b"x" * 1000, [])
    assert daemon.ops() == ["get"]
    assert g.close() == 0


def test_smudge_rejects_content_that_does_not_match_the_pointer(git: Git, daemon: FakeDaemon) -> None:
    # The daemon verifies the SHA-256 (an ERROR before END); the filter checks the length.
    pointer = daemon.add(b"right")
    daemon.objects[pointer.oid] = b"wrong!"
    status, _, trailer = git.request("smudge", "m.bin", pointer.to_bytes())
    assert status == "success" and trailer == ["status=error"]
    assert "does not match the pointer" in git.stderr.getvalue() and "m.bin" in git.stderr.getvalue()


def test_smudge_passes_non_pointers_through(git: Git, daemon: FakeDaemon) -> None:
    small = b"a file committed before it was tracked\n"
    assert git.request("smudge", "old.bin", small) == ("success", small, [])
    large = os.urandom(3 << 20)
    assert git.request("smudge", "old-big.bin", large) == ("success", large, [])
    assert git.request("smudge", "empty.bin", b"") == ("success", b"", [])
    assert daemon.requests == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"version gitmld/1\noid sha256:nothex\nsize 3\n", "not a valid gitmld pointer: line 2: oid"),
        (b"version gitmld/9\noid x\n", "newer gitmld is needed"),
        (LFS_POINTER, "Git LFS pointer"),
    ],
)
def test_smudge_of_a_bad_pointer_fails_naming_the_path(git: Git, content: bytes, message: str) -> None:
    assert git.request("smudge", "dir/model.bin", content) == ("error", b"", [])
    err = git.stderr.getvalue()
    assert "smudge of 'dir/model.bin' failed" in err and message in err
    assert git.request("smudge", "next.bin", b"plain") == ("success", b"plain", [])  # still in step


def test_get_error_mid_stream_fails_the_file(git: Git, daemon: FakeDaemon) -> None:
    pointer = daemon.add(os.urandom(400_000))
    daemon.fail_get_after[pointer.oid] = 200_000
    status, content, trailer = git.request("smudge", "m.bin", pointer.to_bytes())
    assert status == "success" and trailer == ["status=error"]
    assert len(content) < 400_000
    err = git.stderr.getvalue()
    assert "'m.bin'" in err and pointer.oid in err and "failed verification" in err
    other = daemon.add(b"next file")
    assert git.request("smudge", "n.bin", other.to_bytes()) == ("success", b"next file", [])


def test_daemon_rejecting_a_put_fails_that_file_only(git: Git, daemon: FakeDaemon) -> None:
    daemon.reject_put_paths.add("full.bin")
    assert git.request("clean", "full.bin", os.urandom(3 << 20)) == ("error", b"", [])
    assert "clean of 'full.bin' failed: cannot store full.bin: disk full" in git.stderr.getvalue()
    status, out, _ = git.request("clean", "ok.bin", b"fine")
    assert status == "success" and daemon.objects[Pointer.parse(out).oid] == b"fine"


def test_missing_object_fails_before_any_content(git: Git, daemon: FakeDaemon) -> None:
    pointer = Pointer("sha256:" + "ab" * 32, 10)
    assert git.request("smudge", "gone.bin", pointer.to_bytes()) == ("error", b"", [])
    assert "not found" in git.stderr.getvalue() and "gone.bin" in git.stderr.getvalue()


def test_delayed_smudge_and_list_available_blobs(git: Git, daemon: FakeDaemon) -> None:
    a = daemon.add(b"alpha" * 1000, cached=False)
    b = daemon.add(b"beta" * 1000, cached=False)
    missing = Pointer("sha256:" + "cd" * 32, 4)
    daemon.fetch_gate.clear()
    for path, pointer in (("a.bin", a), ("b.bin", b), ("c.bin", missing)):
        assert git.request("smudge", path, pointer.to_bytes(), **{"can-delay": "1"}) == ("delayed", b"", [])
    assert [r["op"] for r in daemon.requests] == ["has", "fetch"] * 3

    git.write(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
    wait_until(lambda: "wait" in daemon.ops(), what="the filter to wait")
    assert not git.has_output()  # nothing is ready: the answer must wait, not be empty
    daemon.release_fetches()
    paths = git.text_list()
    assert git.text_list() == ["status=success"]
    assert sorted(paths) == ["pathname=a.bin", "pathname=b.bin", "pathname=c.bin"]

    assert git.request("smudge", "a.bin", b"") == ("success", b"alpha" * 1000, [])
    assert git.request("smudge", "c.bin", b"") == ("error", b"", [])
    assert git.request("smudge", "b.bin", b"") == ("success", b"beta" * 1000, [])
    assert git.list_available() == []
    err = git.stderr.getvalue()
    assert "'c.bin'" in err and "not in the remote" in err and missing.oid in err


def delayed_git(sock_path: str, fetch_timeout: float) -> Git:
    g = Git(lambda: DaemonClient.connect(sock_path, autostart=False, timeout=5), fetch_timeout=fetch_timeout)
    g.handshake()
    return g


def test_a_stalled_delayed_fetch_fails_after_fetch_timeout(daemon: FakeDaemon, sock_path: str) -> None:
    git = delayed_git(sock_path, fetch_timeout=0.5)
    stuck = daemon.add(b"never arrives" * 100, cached=False)
    daemon.fetch_gate.clear()  # the fetch never finishes and never moves
    assert git.request("smudge", "dir/model.bin", stuck.to_bytes(), **{"can-delay": "1"})[0] == "delayed"
    start = time.monotonic()
    assert git.list_available() == ["pathname=dir/model.bin"]  # announced, so git asks again
    assert 0.4 < time.monotonic() - start < 5
    assert git.request("smudge", "dir/model.bin", b"") == ("error", b"", [])
    err = git.stderr.getvalue()
    assert "'dir/model.bin'" in err and stuck.oid in err, err
    assert re.search(r"no progress for 0\.[5-9] s \(0 of 1300 bytes fetched", err), err
    assert "gitmld.fetchTimeout" in err
    waits = [r for r in daemon.requests if r["op"] == "wait"]
    assert waits and all(r["timeout"] <= 0.5 for r in waits)  # never waits past the deadline
    assert [r["path"] for r in daemon.requests if r["op"] == "fetch"] == ["dir/model.bin"]
    assert git.close() == 0


def test_a_moving_fetch_is_streamed_before_it_completes(daemon: FakeDaemon, sock_path: str) -> None:
    """No delayed file is complete, but one's fetch moves: git gets it at once and its smudge
    streams while the fetch goes on (instead of waiting for the whole file first)."""
    git = delayed_git(sock_path, fetch_timeout=0.5)
    slow = daemon.add(b"slow" * 1000, cached=False)
    daemon.fetch_gate.clear()  # the fetch never completes during this test
    daemon.progress_per_wait = 100  # but the daemon's byte counter moves on every round
    assert git.request("smudge", "slow.bin", slow.to_bytes(), **{"can-delay": "1"})[0] == "delayed"
    assert git.list_available() == ["pathname=slow.bin"]
    assert daemon.ops().count("wait") == 1  # one short round told that it moves
    assert git.request("smudge", "slow.bin", b"") == ("success", b"slow" * 1000, [])
    assert git.stderr.getvalue() == ""
    daemon.release_fetches()
    assert git.close() == 0


def test_a_fetch_that_has_not_moved_is_not_streamed(daemon: FakeDaemon, sock_path: str) -> None:
    """Nothing moved yet: the filter keeps waiting (within the deadline) rather than hand git
    a file that would only block its smudge."""
    git = delayed_git(sock_path, fetch_timeout=30)
    slow = daemon.add(b"slow" * 1000, cached=False)
    daemon.fetch_gate.clear()
    assert git.request("smudge", "slow.bin", slow.to_bytes(), **{"can-delay": "1"})[0] == "delayed"
    git.write(fp.encode_request(fp.LIST_AVAILABLE_BLOBS))
    wait_until(lambda: daemon.ops().count("wait") >= 2, timeout=20, what="a second wait round")
    assert not git.has_output()
    daemon.release_fetches()
    assert git.text_list() == ["pathname=slow.bin"]
    assert git.text_list() == ["status=success"]
    assert git.request("smudge", "slow.bin", b"") == ("success", b"slow" * 1000, [])
    assert git.close() == 0


def test_a_daemon_that_never_answers_wait_fails_the_files(
        daemon: FakeDaemon, sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gitmld.client.filter_process.WAIT_GRACE", 0.3)
    git = delayed_git(sock_path, fetch_timeout=0.5)
    stuck = daemon.add(b"x" * 100, cached=False)
    daemon.fetch_gate.clear()
    daemon.hang_waits = True
    assert git.request("smudge", "m.bin", stuck.to_bytes(), **{"can-delay": "1"})[0] == "delayed"
    assert git.list_available() == ["pathname=m.bin"]
    assert git.request("smudge", "m.bin", b"") == ("error", b"", [])
    err = git.stderr.getvalue()
    assert "'m.bin'" in err and stuck.oid in err and "no progress for" in err and "did not answer" in err, err
    assert git.close() == 0


def test_unavailable_daemon_fails_files_and_keeps_git_in_step(daemon: FakeDaemon) -> None:
    attempts = []

    def connect() -> DaemonClient:
        attempts.append(1)
        raise DaemonUnavailable("no gitmld daemon answers at /nowhere; start it with `gitmld daemon`")

    g = Git(connect)
    g.handshake()
    assert g.request("clean", "a.bin", os.urandom(2 << 20)) == ("error", b"", [])
    assert g.request("clean", "b.bin", b"more") == ("error", b"", [])
    assert g.list_available() == []
    assert g.close() == 0
    assert len(attempts) == 1  # a failed start is not retried for every file
    assert "clean of 'a.bin' failed: no gitmld daemon answers" in g.stderr.getvalue()


def test_reconnects_after_the_daemon_connection_is_lost(git: Git, daemon: FakeDaemon) -> None:
    pointer = daemon.add(b"content")
    assert git.request("smudge", "a.bin", pointer.to_bytes())[0] == "success"
    client = git.filter._client
    assert client is not None
    client.close()  # as if the daemon restarted
    assert git.request("smudge", "b.bin", pointer.to_bytes()) == ("success", b"content", [])


def test_protocol_error_from_git_ends_the_process() -> None:
    g = Git(lambda: pytest.fail("no daemon needed"))
    g.write(b"0005x")
    with pytest.raises(fp.FilterProtocolError):
        g.close()


def test_main_usage() -> None:
    assert main(["--help"]) == 2


# -- real git -------------------------------------------------------------------------------
def _git(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, check=True, timeout=60)


def test_real_git_add_and_checkout(tmp_path: Path, daemon: FakeDaemon, sock_path: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GITMLD_SOCKET": sock_path,
        "GITMLD_NO_AUTOSTART": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    _git(repo, env, "init", "-q", "-b", "main")
    _git(repo, env, "config", "filter.gitmld.process", f"{sys.executable} -m gitmld.client.filter_process")
    _git(repo, env, "config", "filter.gitmld.required", "true")
    (repo / ".gitattributes").write_text("*.bin filter=gitmld\n")
    content = os.urandom(3 << 20)
    (repo / "model.bin").write_bytes(content)
    (repo / "notes.txt").write_text("not filtered\n")
    _git(repo, env, "add", ".")
    _git(repo, env, "commit", "-q", "-m", "model")

    stored = _git(repo, env, "cat-file", "-p", "HEAD:model.bin").stdout
    pointer = Pointer.parse(stored)
    assert pointer.oid == "sha256:" + hashlib.sha256(content).hexdigest() and pointer.size == len(content)
    assert daemon.objects[pointer.oid] == content

    (repo / "model.bin").unlink()
    daemon.cached.clear()  # not in the host cache: checkout delays it, fetches, waits
    _git(repo, env, "checkout", "--", "model.bin")
    assert (repo / "model.bin").read_bytes() == content
    assert {"has", "fetch", "wait", "get"} <= set(daemon.ops())
    assert _git(repo, env, "status", "--porcelain").stdout == b""


def test_real_git_checkout_fails_cleanly_when_the_object_is_missing(
    tmp_path: Path, daemon: FakeDaemon, sock_path: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
           "GITMLD_SOCKET": sock_path, "GITMLD_NO_AUTOSTART": "1"}
    _git(repo, env, "init", "-q")
    _git(repo, env, "config", "filter.gitmld.process", f"{sys.executable} -m gitmld.client.filter_process")
    _git(repo, env, "config", "filter.gitmld.required", "true")
    (repo / ".gitattributes").write_text("*.bin filter=gitmld\n")
    (repo / "model.bin").write_bytes(b"weights")
    _git(repo, env, "add", ".")
    daemon.objects.clear()
    daemon.cached.clear()
    (repo / "model.bin").unlink()
    result = subprocess.run(["git", "checkout", "--", "model.bin"], cwd=repo, env=env, capture_output=True, timeout=60)
    assert result.returncode != 0, result.stderr
    assert b"model.bin" in result.stderr and b"gitmld" in result.stderr
    assert not (repo / "model.bin").exists()  # never a partial or pointer file
