"""DaemonClient against a fake daemon (a thread speaking proto.wire), and autostart.

`FakeDaemon` is also used by test_filter_process.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gitmld.client import daemon_client
from gitmld.client.daemon_client import DaemonClient, DaemonError, DaemonUnavailable
from gitmld.proto import wire
from gitmld.proto.pointer import Pointer

REMOTE = {"url": "file:///tmp/fake-remote"}


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll with a deadline (no sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class FakeDaemon:
    """Just enough of the daemon: objects in a dict, a host cache set, scripted failures."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.objects: dict[str, bytes] = {}
        self.cached: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.received: dict[str, int] = {}  # put path -> bytes so far (streaming is observable)
        self.fail_get_after: dict[str, int] = {}  # oid -> bytes sent before an ERROR
        self.reject_put_paths: set[str] = set()  # ERROR after the first DATA
        self.fetch_failures: dict[str, str] = {}
        self.fetch_gate = threading.Event()  # fetches complete only once this is set
        self.fetch_gate.set()
        self.fetch_state: dict[str, str | None] = {}  # oid -> None (pending), "" (ready), message
        self.progress_per_wait = 0  # bytes a pending fetch advances per `wait` (a slow download)
        self.fetch_done: dict[str, int] = {}  # oid -> bytes its fetch reports done
        self.hang_waits = False  # `wait` never answers (a stuck daemon)
        self.cond = threading.Condition()
        self.max_data_frame = 0
        self._stop = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conns: list[socket.socket] = []

    def __enter__(self) -> FakeDaemon:
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with self.cond:
            self.cond.notify_all()

    def add(self, content: bytes, cached: bool = True) -> Pointer:
        oid = "sha256:" + hashlib.sha256(content).hexdigest()
        self.objects[oid] = content
        if cached:
            self.cached.add(oid)
        return Pointer(oid, len(content), [("format", "raw")])

    def ops(self) -> list[str]:
        return [r["op"] for r in self.requests]

    def release_fetches(self) -> None:
        with self.cond:
            self.fetch_gate.set()
            for oid, state in self.fetch_state.items():
                if state is None:
                    self._complete_fetch(oid)
            self.cond.notify_all()

    def _complete_fetch(self, oid: str) -> None:
        if oid in self.fetch_failures:
            self.fetch_state[oid] = self.fetch_failures[oid]
        elif oid in self.objects:
            self.cached.add(oid)
            self.fetch_state[oid] = ""
        else:
            self.fetch_state[oid] = f"object {oid} is not in the remote {REMOTE['url']}"

    # -- serving ---------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            self._conns.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = wire.Connection(wire.Role.SERVER)

        def events() -> Iterator[wire.Event]:
            while True:
                event = conn.next_event()
                if event is not None:
                    yield event
                    continue
                data = sock.recv(1 << 16)
                if not data:
                    return
                conn.feed(data)

        def send(*evs: wire.Event) -> None:
            sock.sendall(b"".join(conn.send(e) for e in evs))

        stream = events()
        try:
            for event in stream:
                if isinstance(event, wire.Hello):
                    send(wire.Hello({"proto": 1, "agent": "fake-daemon/0"}))
                elif isinstance(event, wire.Request):
                    self.requests.append(event.payload)
                    if not self._handle(event.payload, stream, send):
                        return
        except (OSError, wire.WireError):
            pass
        finally:
            sock.close()

    def _handle(self, req: dict[str, Any], stream: Iterator[wire.Event], send: Callable[..., None]) -> bool:
        op = req["op"]
        if op == "put":
            path, digest, size, rejected = req["path"], hashlib.sha256(), 0, False
            chunks = []
            for event in stream:
                if isinstance(event, wire.End):
                    break
                assert isinstance(event, wire.Data)
                self.max_data_frame = max(self.max_data_frame, len(event.data))
                if rejected:
                    continue
                digest.update(event.data)
                chunks.append(event.data)
                size += len(event.data)
                self.received[path] = size
                if path in self.reject_put_paths:
                    rejected = True
                    send(wire.Error("io", f"cannot store {path}: disk full"))
            if not rejected:
                content = b"".join(chunks)
                oid = "sha256:" + digest.hexdigest()
                self.objects[oid] = content
                self.cached.add(oid)
                pointer = Pointer(oid, size, [("format", "raw")])
                send(wire.Response({"oid": oid, "size": size, "pointer": pointer.to_text()}))
        elif op == "get":
            oid = req["oid"]
            if oid not in self.objects:
                send(wire.Error("not_found", f"object {oid} not found in {REMOTE['url']}", oid))
                return True
            content = self.objects[oid]
            limit = self.fail_get_after.get(oid)
            send(wire.Response({"size": len(content)}))
            for i in range(0, len(content), 65536):
                if limit is not None and i >= limit:
                    send(wire.Error("corrupt", f"chunk of {oid} failed verification", oid))
                    return True
                send(wire.Data(content[i : i + 65536]))
            send(wire.End())
        elif op == "has":
            present = req["oid"] in (self.cached if req.get("local") else self.objects)
            send(wire.Response({"present": present}))
        elif op == "fetch":
            with self.cond:
                for oid in req["oids"]:
                    self.fetch_state.setdefault(oid, None)
                    if self.fetch_gate.is_set():
                        self._complete_fetch(oid)
                self.cond.notify_all()
            send(wire.Response({"queued": len(req["oids"])}))
        elif op == "wait":
            oids = req["oids"]
            with self.cond:
                if self.hang_waits:
                    self.cond.wait_for(lambda: self._stop)
                    return False
                self.cond.wait_for(
                    lambda: self._stop or any(self.fetch_state.get(o) is not None for o in oids),
                    timeout=min(float(req["timeout"]), 10.0),
                )
                ready = [o for o in oids if self.fetch_state.get(o) == ""]
                failed = {o: self.fetch_state[o] for o in oids if self.fetch_state.get(o)}
                progress = {}
                for o in oids:
                    if o in self.fetch_state and self.fetch_state[o] is None:
                        self.fetch_done[o] = self.fetch_done.get(o, 0) + self.progress_per_wait
                        progress[o] = {"done": self.fetch_done[o], "total": len(self.objects.get(o, b"")),
                                       "idle_seconds": 0.0}
            send(wire.Response({"ready": ready, "failed": failed, "progress": progress}))
        elif op == "flush":
            send(wire.Progress({"done": 1, "total": 2}), wire.Progress({"done": 2, "total": 2}))
            send(wire.Response({"uploaded_bytes": 2, "objects": 1}))
        elif op == "die":
            return False  # close without answering
        elif op in ("pipe_check", "get_pipe"):  # as a daemon that cannot write into our pipe
            send(wire.Error("unsupported", "no direct smudge in the fake daemon"))
        else:
            send(wire.Response({"op": op, "daemon": "fake"}))
        return True


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "daemon.sock")


@pytest.fixture
def daemon(sock_path: str) -> Iterator[FakeDaemon]:
    with FakeDaemon(sock_path) as d:
        yield d


@pytest.fixture
def client(daemon: FakeDaemon, sock_path: str) -> Iterator[DaemonClient]:
    with DaemonClient.connect(sock_path, autostart=False, timeout=5) as c:
        yield c


def test_hello_and_plain_request(client: DaemonClient, daemon: FakeDaemon) -> None:
    assert client.daemon_hello["agent"] == "fake-daemon/0"
    assert client.request("status") == {"op": "status", "daemon": "fake"}
    assert client.request("has", remote=REMOTE, oid="sha256:" + "0" * 64, local=True) == {"present": False}
    assert daemon.requests[1] == {"op": "has", "remote": REMOTE, "oid": "sha256:" + "0" * 64, "local": True}


def test_put_streams_and_get_returns_the_content(client: DaemonClient, daemon: FakeDaemon) -> None:
    content = os.urandom(700_000)
    answer = client.put(REMOTE, "m.bin", (content[i : i + 300_000] for i in range(0, len(content), 300_000)))
    assert answer["size"] == len(content)
    assert Pointer.parse(answer["pointer"]).oid == answer["oid"]
    assert daemon.max_data_frame <= wire.MAX_DATA
    got = b"".join(client.get(REMOTE, answer["oid"], len(content), "m.bin"))
    assert got == content
    assert client.request("status")["op"] == "status"  # connection still in step


def test_get_not_found_raises_before_any_data(client: DaemonClient) -> None:
    oid = "sha256:" + "1" * 64
    with pytest.raises(DaemonError) as info:
        client.get(REMOTE, oid, 5, "x.bin")
    assert info.value.code == "not_found" and info.value.object == oid
    assert client.request("status")["op"] == "status"


def test_get_error_mid_stream(client: DaemonClient, daemon: FakeDaemon) -> None:
    p = daemon.add(os.urandom(300_000))
    daemon.fail_get_after[p.oid] = 131072
    received = []
    with pytest.raises(DaemonError, match="failed verification") as info:
        for piece in client.get(REMOTE, p.oid, p.size, "x.bin"):
            received.append(piece)
    assert info.value.code == "corrupt"
    assert sum(map(len, received)) == 131072
    assert client.request("status")["op"] == "status"


def test_abandoned_download_closes_the_connection(client: DaemonClient, daemon: FakeDaemon) -> None:
    p = daemon.add(os.urandom(300_000))
    stream = client.get(REMOTE, p.oid, p.size, "x.bin")
    next(stream)
    stream.close()
    assert not client.connected
    with pytest.raises(DaemonUnavailable, match="closed"):
        client.request("status")


def test_early_put_rejection_stops_the_upload(client: DaemonClient, daemon: FakeDaemon) -> None:
    daemon.reject_put_paths.add("big.bin")
    produced = 0

    def chunks() -> Iterator[bytes]:
        nonlocal produced
        for _ in range(400):  # 100 MiB if nobody stopped us
            produced += 256 << 10
            yield b"\0" * (256 << 10)

    with pytest.raises(DaemonError, match="disk full") as info:
        client.put(REMOTE, "big.bin", chunks())
    assert info.value.code == "io"
    assert produced < 50 << 20
    assert client.request("status")["op"] == "status"  # END was sent: both sides are idle


def test_progress_callback(client: DaemonClient) -> None:
    seen: list[dict[str, Any]] = []
    assert client.request_progress("flush", seen.append, remote=REMOTE) == {"uploaded_bytes": 2, "objects": 1}
    assert [p["done"] for p in seen] == [1, 2]


def test_streaming_ops_need_their_methods(client: DaemonClient) -> None:
    with pytest.raises(ValueError, match="put"):
        client.request("put", path="x")


def test_connection_lost(client: DaemonClient) -> None:
    with pytest.raises(DaemonUnavailable, match="closed the connection"):
        client.request("die")
    assert not client.connected


def test_failing_chunk_source_breaks_the_connection(client: DaemonClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"abc"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        client.put(REMOTE, "x", chunks())
    assert not client.connected


def test_no_daemon_without_autostart(sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DaemonUnavailable, match="autostart is off") as info:
        DaemonClient.connect(sock_path, autostart=False, timeout=1)
    assert sock_path in str(info.value) and "gitmld daemon" in str(info.value)
    monkeypatch.setenv("GITMLD_NO_AUTOSTART", "1")
    with pytest.raises(DaemonUnavailable, match=r"GITMLD_NO_AUTOSTART is set.*`gitmld daemon`"):
        DaemonClient.connect(sock_path, timeout=1)
    assert not Path(sock_path).parent.joinpath("autostart.lock").exists()


def test_not_a_daemon(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        with pytest.raises(DaemonUnavailable):
            DaemonClient.connect(path, autostart=False, timeout=0.3)  # accepts, never says HELLO
    finally:
        listener.close()


# -- autostart ---------------------------------------------------------------------------
FAKE_DAEMON_MAIN = """
import os, socket, sys, time
from gitmld.proto import wire
path = os.environ["GITMLD_SOCKET"]
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(0.3)  # a slow start-up widens the window in which other clients could start a second one
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(64)
srv.settimeout(60)
print("fake daemon listening", flush=True)
while True:
    conn, _ = srv.accept()
    w = wire.Connection(wire.Role.SERVER)
    while True:
        data = conn.recv(65536)
        if not data:
            break
        w.feed(data)
        stop = False
        for ev in w:
            if isinstance(ev, wire.Hello):
                conn.sendall(w.send(wire.Hello({"proto": 1, "agent": "spawned"})))
            elif isinstance(ev, wire.Request):
                conn.sendall(w.send(wire.Response({"pid": os.getpid()})))
                stop = ev.op == "shutdown"
        if stop:
            sys.exit(0)
    conn.close()
"""


@pytest.fixture
def spawned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make autostart run a fake daemon; kill whatever it started afterwards (by pid)."""
    script = tmp_path / "fake_daemon.py"
    script.write_text(FAKE_DAEMON_MAIN)
    starts = tmp_path / "starts.txt"
    monkeypatch.setattr(daemon_client, "daemon_argv", lambda: [sys.executable, str(script), str(starts)])
    monkeypatch.setenv("GITMLD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GITMLD_NO_AUTOSTART", raising=False)
    yield starts
    if starts.exists():
        for pid in starts.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_many_clients_start_exactly_one_daemon(spawned: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "daemon.sock")
    results: list[object] = []

    def connect() -> None:
        try:
            with DaemonClient.connect(path, timeout=15) as c:
                results.append(c.request("status")["pid"])
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6 and all(isinstance(r, int) for r in results), results
    pids = spawned.read_text().split()
    assert len(pids) == 1 and set(results) == {int(pids[0])}
    assert (tmp_path / "cache" / "daemon.log").read_text().startswith("fake daemon listening")
    assert oct((tmp_path / "run").stat().st_mode & 0o777) == "0o700"
    with DaemonClient.connect(path, autostart=False) as c:
        c.request("shutdown")


def test_autostart_replaces_a_stale_socket(spawned: Path, tmp_path: Path) -> None:
    path = tmp_path / "daemon.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a killed daemon leaves
    with DaemonClient.connect(str(path), timeout=15) as c:
        assert c.daemon_hello["agent"] == "spawned"
        c.request("shutdown")


def test_autostart_reports_a_daemon_that_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        daemon_client, "daemon_argv", lambda: [sys.executable, "-c", "print('no keyfile here'); raise SystemExit(3)"]
    )
    monkeypatch.setenv("GITMLD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GITMLD_NO_AUTOSTART", raising=False)
    with pytest.raises(DaemonUnavailable, match=r"exited with status 3.*daemon\.log.*no keyfile here"):
        DaemonClient.connect(str(tmp_path / "daemon.sock"), timeout=15)
