"""The daemon's Unix socket: binding or socket activation, peer checks, graceful shutdown.

One daemon serves every repository of its user on the host. The socket lives in a 0700
directory and is 0600 itself; on top of that, each connection's peer credentials
(SO_PEERCRED) are checked and logged, so another user's process is refused even if the file
modes were loosened. A flock on `daemon.lock` beside the socket makes a second daemon exit
instead of stealing the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import logging
import os
import signal
import socket
import struct
from pathlib import Path

from gitmld.daemon.connection import ServerConnection, SocketStream
from gitmld.daemon.service import DaemonSettings, Service
from gitmld.daemon.store.repository import known_remote_urls
from gitmld.proto.transport import widen_socket

log = logging.getLogger("gitmld.server")

SD_LISTEN_FDS_START = 3
SHUTDOWN_GRACE_SECONDS = 120.0


class AlreadyRunning(Exception):
    """Another daemon holds the lock of this socket."""


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed us (LISTEN_FDS), if it did and meant us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)  # children must not think the sockets are theirs
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.setblocking(False)
    return sock


def take_lock(socket_path: Path) -> int:
    """Hold daemon.lock beside the socket for the daemon's lifetime; AlreadyRunning if taken."""
    lock_path = socket_path.parent / "daemon.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another gitmld daemon already serves {socket_path}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def prepare_socket_dir(socket_path: Path) -> None:
    """Create the socket's directory 0700, and refuse one that others can enter."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = socket_path.parent.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"socket directory {socket_path.parent} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o077:
        os.chmod(socket_path.parent, 0o700)


def bind_socket(socket_path: Path) -> socket.socket:
    """Bind a fresh listening socket, 0600, replacing a stale one (we hold the lock)."""
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class Server:
    """Accepts connections and runs each on its own task until shutdown."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._connections: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_connect(self, stream: SocketStream) -> None:
        assert stream.transport is not None
        sock = stream.transport.get_extra_info("socket")
        try:
            pid, uid, _ = peer_credentials(sock)
        except OSError:
            pid, uid = -1, -1
        if uid not in (os.getuid(), 0):
            log.warning("refused connection from pid %s uid %s: not our user", pid, uid)
            stream.close()
            return
        log.debug("connection from pid %s uid %s", pid, uid)
        if sock is not None:
            widen_socket(sock)
        conn = ServerConnection(stream, peer_pid=pid)
        self._connections.add(conn)
        self.service.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.serve(self.service.handle)
        finally:
            self._connections.discard(conn)
            self.service.connections -= 1
            if task is not None:
                self._tasks.discard(task)

    async def drain(self, grace: float) -> None:
        """Let in-flight requests finish (up to grace seconds), then close idle connections."""
        for conn in list(self._connections):
            conn.stop_after_current_request()
        busy = [t for t in self._tasks if not t.done()]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def run(settings: DaemonSettings) -> int:
    """Serve until SIGTERM/SIGINT or a `shutdown` request; return the exit code."""
    sock = activated_socket()
    lock_fd = None
    created_socket = False
    if sock is None:
        prepare_socket_dir(settings.socket_path)
        try:
            lock_fd = take_lock(settings.socket_path)
        except AlreadyRunning as e:
            log.error("%s; not starting a second one", e)
            return 1
        sock = bind_socket(settings.socket_path)
        created_socket = True
    settings.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    service = Service(settings)
    server_obj = Server(service)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: SocketStream(server_obj.on_connect), sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("gitmld daemon %s serving %s (cache %s)", os.getpid(), settings.socket_path, settings.cache_dir)
    preload = loop.run_in_executor(None, preload_remote_modules, settings.cache_dir)
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(service.shutdown_requested.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    log.info("shutting down: finishing in-flight requests")
    server.close()
    await server_obj.drain(SHUTDOWN_GRACE_SECONDS)
    await service.close()
    if created_socket:
        with contextlib.suppress(FileNotFoundError):
            settings.socket_path.unlink()
    if lock_fd is not None:
        os.close(lock_fd)
    await preload
    log.info("stopped")
    return 0


def preload_remote_modules(cache_dir: Path) -> bool:
    """When this host cache has used an S3 remote before, import the S3 client stack (aiobotocore,
    botocore, aiohttp) and parse the S3 service model (~0.8 CPU-s together) on a worker thread
    once the socket serves, so the first clone or push after a daemon (re)start does not wait
    for it. Only this one module is imported here, and the event loop's own first use of it goes
    through the same module lock, so the two threads cannot deadlock on import locks. True when
    it preloaded."""
    if not any(url.startswith("s3://") for url in known_remote_urls(cache_dir)):
        return False
    try:
        importlib.import_module("gitmld.daemon.remote.s3").warm_up()
        return True
    except Exception as exc:  # pragma: no cover - e.g. a dependency is missing; its first use reports it
        log.debug("preloading the S3 client failed: %s", exc)
        return False
