"""Blocking Unix-socket client of the gitmld daemon over `proto.wire`; starts the daemon if needed.

Standard library only and cheap to import: the filter process and the CLI both use it.
`subprocess` is imported only when a daemon has to be started.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from gitmld.proto import paths, wire
from gitmld.proto.transport import widen_socket
from gitmld.proto.version import __version__

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the filter ~5 ms
if TYPE_CHECKING:
    import subprocess
    from typing import Any

RECV_SIZE = 1 << 20
AUTOSTART_LOCK = "autostart.lock"
NO_AUTOSTART_ENV = "GITMLD_NO_AUTOSTART"
_POLL_EVERY = 1 << 20  # while uploading, look for an early ERROR from the daemon every MiB


class DaemonError(Exception):
    """The daemon answered ERROR (or could not be talked to); `code` is a wire error code."""

    def __init__(self, code: str, message: str, object: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.object = object

    def __str__(self) -> str:
        if self.object and self.object not in self.message:
            return f"{self.message} (object {self.object})"
        return self.message


class DaemonUnavailable(DaemonError):
    """No daemon answers, or the connection to it was lost."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


def _autostart_disabled() -> bool:
    return os.environ.get(NO_AUTOSTART_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def daemon_argv() -> list[str]:
    """The command that starts a daemon (tests replace it)."""
    return [sys.executable, "-m", "gitmld.daemon"]


class DaemonClient:
    """One connection to the daemon; one request at a time (open more clients for concurrency)."""

    def __init__(self, sock: socket.socket, socket_path: str, *, agent: str) -> None:
        self._sock: socket.socket | None = sock
        self.socket_path = socket_path
        self._conn = wire.Connection(wire.Role.CLIENT)
        self._streaming = False
        self.daemon_hello: dict[str, Any] = {}
        self._send(wire.Hello({"proto": wire.PROTO_VERSION, "agent": agent, "pid": os.getpid()}))
        event = self._next_event()
        if not isinstance(event, wire.Hello):
            self._break()
            raise DaemonUnavailable(f"daemon at {socket_path} did not answer HELLO (got {event!r})")
        self.daemon_hello = event.payload

    # -- connecting ----------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        socket_path: str | None = None,
        *,
        autostart: bool = True,
        timeout: float = 10.0,
        agent: str = f"gitmld-client/{__version__}",
    ) -> DaemonClient:
        """Connect (and HELLO); start a daemon when none answers, unless told not to."""
        path = socket_path or str(paths.socket_path())
        deadline = time.monotonic() + timeout
        try:
            return cls._open(path, deadline, agent)
        except DaemonUnavailable as exc:
            if not autostart or _autostart_disabled():
                why = f"{NO_AUTOSTART_ENV} is set" if autostart else "autostart is off"
                raise DaemonUnavailable(
                    f"{exc}; not starting one because {why}. Start it with `gitmld daemon` "
                    "(or the systemd unit), or unset GITMLD_NO_AUTOSTART"
                ) from None
        return cls._autostart(path, deadline, agent)

    @classmethod
    def _open(cls, path: str, deadline: float, agent: str) -> DaemonClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        widen_socket(sock)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(path)
            client = cls(sock, path, agent=agent)
        except DaemonUnavailable:
            sock.close()
            raise
        except (OSError, ValueError) as exc:  # ValueError: embedded NUL in the path
            sock.close()
            raise DaemonUnavailable(f"no gitmld daemon answers at {path} ({_reason(exc)})") from None
        sock.settimeout(None)
        return client

    @classmethod
    def _autostart(cls, path: str, deadline: float, agent: str) -> DaemonClient:
        """Under an flock, try once more, else spawn a daemon and wait for it to answer."""
        sock_dir = Path(path).parent
        try:
            sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(sock_dir / AUTOSTART_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DaemonUnavailable(f"cannot start a gitmld daemon: {sock_dir}: {_reason(exc)}") from None
        try:
            _lock(lock_fd, deadline, sock_dir / AUTOSTART_LOCK)
            try:  # someone else may have started it while we waited for the lock
                return cls._open(path, deadline, agent)
            except DaemonUnavailable:
                pass
            _remove_stale_socket(path)
            proc, log_path = _spawn(path)
            delay = 0.01
            while True:
                try:
                    return cls._open(path, deadline, agent)
                except DaemonUnavailable as exc:
                    if proc.poll() is not None:
                        raise DaemonUnavailable(
                            f"the gitmld daemon exited with status {proc.returncode} at start-up; "
                            f"see {log_path}: {_tail(log_path)}"
                        ) from None
                    if time.monotonic() >= deadline:
                        raise DaemonUnavailable(
                            f"started a gitmld daemon (pid {proc.pid}) but it did not answer at {path} "
                            f"in time ({exc}); see {log_path}"
                        ) from None
                time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 0.1)
        finally:
            os.close(lock_fd)  # releases the flock

    # -- requests ------------------------------------------------------------------------
    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request without data streams; returns the RESPONSE payload."""
        return self.request_progress(op, None, **fields)

    def request_progress(
        self, op: str, on_progress: Callable[[dict[str, Any]], None] | None, **fields: Any
    ) -> dict[str, Any]:
        if op in wire.UPLOAD_OPS or op in wire.DOWNLOAD_OPS:
            raise ValueError(f"use DaemonClient.{op}() for {op!r}: it streams data")
        self._send(wire.Request({"op": op, **fields}))
        return self._await_response(on_progress)

    def put(self, remote: dict[str, Any], path: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        """Stream content to the daemon; returns {"oid", "size", "pointer"}.

        If `chunks` raises, the connection is closed (the protocol has no way to abandon an
        upload) and the exception propagates.
        """
        self._send(wire.Request({"op": "put", "remote": remote, "path": path}))
        return self._upload_data(chunks)

    def get(self, remote: dict[str, Any], oid: str, size: int, path: str, *,
            offset: int | None = None, length: int | None = None) -> Iterator[bytes]:
        """Ask for an object, or for `length` bytes of it from `offset` (a ranged read: the
        daemon reads only the chunks the range overlaps); errors before the first byte raise
        here, later ones from the iterator.

        The iterator checks that the daemon sent exactly the size it announced. Abandoning it
        before the end closes the connection.
        """
        request: dict[str, Any] = {"op": "get", "remote": remote, "oid": oid, "size": size, "path": path}
        if offset is not None or length is not None:
            request.update(offset=offset or 0, length=size - (offset or 0) if length is None else length)
        self._send(wire.Request(request))
        answer = self._await_response(None)
        announced = answer.get("size", size)
        if not isinstance(announced, int) or isinstance(announced, bool) \
                or ("length" in request and announced != request["length"]):
            self._break()
            raise DaemonError("protocol", f"daemon answered get with a bad size {announced!r}", oid)
        return self._download(oid, announced)

    def check_pipe(self, fd: int) -> None:
        """DaemonError unless the daemon can write into pipe `fd` of this process (get_into_pipe)."""
        self.request("pipe_check", pipe=_pipe_id(fd))

    def get_into_pipe(self, remote: dict[str, Any], oid: str, size: int, path: str, fd: int) -> int:
        """Have the daemon write the object as Git data pkt-lines straight into pipe `fd` (the
        filter's stdout; daemon/pipe_sink.py); returns the content bytes it wrote, all verified.
        A DaemonError means it stopped after whole packets; DaemonUnavailable (the daemon is
        gone) means the pipe may end inside a packet."""
        answer = self.request("get_pipe", remote=remote, oid=oid, size=size, path=path, pipe=_pipe_id(fd))
        written = answer.get("size")
        if not isinstance(written, int) or isinstance(written, bool):
            raise DaemonError("protocol", f"daemon answered get_pipe with a bad size {written!r}", oid)
        return written

    def compose(self, remote: dict[str, Any], path: str, parts: list[dict[str, Any]],
                inline: Iterable[bytes]) -> dict[str, Any]:
        """Store a new file made of `parts` (proto/compose.py): ranges of stored files, which the
        daemon copies itself, and inline parts, whose bytes `inline` yields in order. Returns
        {"oid", "size", "pointer"}, as put does."""
        self._send(wire.Request({"op": "compose", "remote": remote, "path": path, "parts": parts}))
        return self._upload_data(inline)

    def _upload_data(self, chunks: Iterable[bytes]) -> dict[str, Any]:
        """DATA* END for the current upload request, then its answer; an early ERROR from the
        daemon stops the upload."""
        rejected: wire.Error | None = None
        unpolled = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                self._send_data(view)
                unpolled += len(view)
                if unpolled >= _POLL_EVERY:
                    unpolled = 0
                    rejected = self._poll_upload()
                    if rejected is not None:
                        break
        except DaemonError:
            raise
        except BaseException:
            self._break()
            raise
        self._send(wire.End())
        if rejected is not None:
            raise DaemonError(rejected.code, rejected.message, rejected.object)
        return self._await_response(None)

    def _download(self, oid: str, size: int) -> Iterator[bytes]:
        self._streaming = True
        received = 0
        try:
            while True:
                event = self._next_event()
                if isinstance(event, wire.Data):
                    received += len(event.data)
                    if received > size:
                        raise self._fail(DaemonError("corrupt", f"daemon sent more than {size} bytes", oid))
                    yield event.data
                elif isinstance(event, wire.End):
                    if received != size:
                        raise DaemonError("corrupt", f"daemon sent {received} of {size} bytes", oid)
                    self._streaming = False
                    return
                elif isinstance(event, wire.Error):
                    self._streaming = False
                    raise DaemonError(event.code, event.message, event.object or oid)
        finally:
            if self._streaming:  # abandoned or failed mid-stream: the rest is unreadable
                self._streaming = False
                self._break()

    def close(self) -> None:
        self._break()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def set_timeout(self, seconds: float | None) -> None:
        """Bound every later blocking send and receive (None: wait forever). A timeout breaks
        the connection (DaemonUnavailable): a stuck daemon must not hang `git checkout`."""
        if self._sock is not None:
            self._sock.settimeout(seconds)

    # -- frames --------------------------------------------------------------------------
    def _await_response(self, on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        while True:
            event = self._next_event()
            if isinstance(event, wire.Response):
                return event.payload
            if isinstance(event, wire.Progress):
                if on_progress is not None:
                    on_progress(event.payload)
            elif isinstance(event, wire.Error):
                raise DaemonError(event.code, event.message, event.object)

    def _send(self, event: wire.Event) -> None:
        sock = self._require()
        try:
            data = self._conn.send(event)
        except wire.WireError as exc:
            self._break()
            raise DaemonError("protocol", f"client protocol error: {exc}") from None
        try:
            sock.sendall(data)
        except OSError as exc:
            raise self._lost(exc) from None

    def _send_data(self, data: bytes | memoryview) -> None:
        """DATA frames for data of any length, sent with sendmsg from views (no copy)."""
        sock = self._require()
        try:
            parts = [memoryview(p) for p in self._conn.send_data(data)]
        except wire.WireError as exc:
            self._break()
            raise DaemonError("protocol", f"client protocol error: {exc}") from None
        try:
            while parts:
                sent = sock.sendmsg(parts)
                while parts and sent >= len(parts[0]):
                    sent -= len(parts.pop(0))
                if sent:
                    parts[0] = parts[0][sent:]
        except OSError as exc:
            raise self._lost(exc) from None

    def _next_event(self) -> wire.Event:
        sock = self._require()
        while True:
            try:
                event = self._conn.next_event()
            except wire.WireError as exc:
                raise self._fail(DaemonError("protocol", f"bad frame from the daemon: {exc}")) from None
            if event is not None:
                if isinstance(event, wire.Error) and event.code == "protocol":
                    self._break()
                return event
            if self._conn.phase is wire.Phase.CLOSED:
                raise self._fail(DaemonUnavailable("the daemon closed the connection"))
            try:
                data = sock.recv(RECV_SIZE)
            except OSError as exc:
                raise self._lost(exc) from None
            if not data:
                raise self._fail(DaemonUnavailable(f"the gitmld daemon at {self.socket_path} closed the connection"))
            self._conn.feed(data)

    def _poll_upload(self) -> wire.Error | None:
        """Non-blocking look for frames the daemon sent while we upload: an early ERROR."""
        sock = self._require()
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return None
        try:
            data = sock.recv(RECV_SIZE)
        except OSError as exc:
            raise self._lost(exc) from None
        if not data:
            raise self._fail(DaemonUnavailable("the gitmld daemon closed the connection during an upload"))
        self._conn.feed(data)
        try:
            for event in self._conn:
                if isinstance(event, wire.Error):
                    return event
        except wire.WireError as exc:
            raise self._fail(DaemonError("protocol", f"bad frame from the daemon: {exc}")) from None
        return None

    def _lost(self, exc: OSError) -> DaemonError:
        """A send or receive failed: surface the daemon's ERROR if it sent one before closing."""
        sock = self._sock
        if sock is not None and exc.errno in (errno.EPIPE, errno.ECONNRESET):
            try:
                sock.setblocking(False)
                while data := sock.recv(RECV_SIZE):
                    self._conn.feed(data)
            except OSError:
                pass
            try:
                for event in self._conn:
                    if isinstance(event, wire.Error):
                        return self._fail(DaemonError(event.code, event.message, event.object))
            except wire.WireError:
                pass
        return self._fail(DaemonUnavailable(f"lost the connection to the gitmld daemon ({_reason(exc)})"))

    def _fail(self, error: DaemonError) -> DaemonError:
        self._break()
        return error

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise DaemonUnavailable("the connection to the gitmld daemon is closed")
        return self._sock

    def _break(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _lock(fd: int, deadline: float, where: Path) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise DaemonUnavailable(
                    f"timed out waiting for {where} (another client starting the daemon)"
                ) from None
            time.sleep(0.01)


def _remove_stale_socket(path: str) -> None:
    """A socket file nobody listens on (a killed daemon) would make the new daemon fail to bind."""
    try:
        if Path(path).is_socket():
            os.unlink(path)
    except OSError:
        pass


def _spawn(path: str) -> tuple[subprocess.Popen[bytes], Path]:
    import subprocess  # only here: it costs start-up time

    log_dir = paths.cache_dir()
    try:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = open(log_dir / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
    except OSError as exc:
        raise DaemonUnavailable(f"cannot start a gitmld daemon: {log_dir}: {_reason(exc)}") from None
    env = dict(os.environ, GITMLD_SOCKET=path)
    try:
        proc = subprocess.Popen(
            daemon_argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=env,
        )
    except OSError as exc:
        raise DaemonUnavailable(f"cannot start a gitmld daemon ({' '.join(daemon_argv())}): {_reason(exc)}") from None
    finally:
        log.close()
    return proc, log_dir / "daemon.log"


def _tail(path: Path, limit: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - limit, 0))
            return f.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    except OSError:
        return "(no log)"


def _pipe_id(fd: int) -> dict[str, int]:
    st = os.fstat(fd)
    return {"dev": st.st_dev, "ino": st.st_ino}
