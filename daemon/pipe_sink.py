"""Direct smudge: the daemon writes a file's pkt-lines into the pipe Git reads from the filter.

Without this, every smudged byte crosses the Unix socket to the filter process, which copies it
into pkt-lines and writes it to Git: two copies and a Python loop in a second process, about
1.5 CPU-seconds per GiB on top of Git's own work. Here the filter asks the daemon to write the
content packets to the filter's own stdout: the daemon opens that pipe through
/proc/<peer pid>/fd/1 (a new open file description, so its O_NONBLOCK is the daemon's alone)
and writes whole packets, never a partial one unless it dies; the filter writes the status
lines before and after, as before.

The peer pid comes from SO_PEERCRED and the client names the pipe by (st_dev, st_ino), which
must match what the daemon opened: a connection can only ever write into its own stdout.
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Any

from gitmld.daemon.channel import RequestError
from gitmld.proto import pktline

IOV_MAX = 1024  # Linux: buffers per writev


def require_pipe_id(request: dict[str, Any]) -> tuple[int, int]:
    raw = request.get("pipe")
    if not isinstance(raw, dict) or not all(
            isinstance(raw.get(k), int) and not isinstance(raw.get(k), bool) for k in ("dev", "ino")):
        raise RequestError("bad_request", "request field 'pipe' must be {\"dev\": int, \"ino\": int} (fstat of fd 1)")
    return raw["dev"], raw["ino"]


def open_peer_stdout(pid: int, dev: int, ino: int) -> int:
    """A write fd (O_NONBLOCK) on the peer's stdout pipe; RequestError when it is not that pipe."""
    if pid <= 0:
        raise RequestError("unsupported", "direct smudge needs the peer's pid (SO_PEERCRED), which is unknown")
    path = f"/proc/{pid}/fd/1"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RequestError("unsupported", f"cannot open the filter's stdout through {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
            raise RequestError("unsupported", f"{path} is not the pipe the client named (dev {dev}, inode {ino})")
    except BaseException:
        os.close(fd)
        raise
    return fd


class PipeSink:
    """Content packets into Git's pipe with vectored non-blocking writes. Packets are full size
    (65516-byte payloads) across the pieces given to write(); every byte handed to the pipe
    belongs to a packet that the sink finishes unless the daemon dies or the filter leaves (then
    the pipe may end inside a packet; Git fails the file, as the filter is gone)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._carry: list[memoryview] = []  # the start of the next packet (< MAX_PAYLOAD bytes)
        self._carried = 0
        self.written = 0  # content bytes given to write() (the last < 64 KiB go out in finish())

    @classmethod
    def open(cls, pid: int, dev: int, ino: int) -> PipeSink:
        return cls(open_peer_stdout(pid, dev, ino))

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.written += len(view)
        parts: list[bytes | memoryview] = []
        need = pktline.MAX_PAYLOAD - self._carried
        if self._carried and len(view) < need:
            self._carry.append(view)
            self._carried += len(view)
            return
        if self._carried:
            parts += [b"%04x" % (pktline.MAX_PKT_SIZE), *self._carry, view[:need]]
            view = view[need:]
            self._carry, self._carried = [], 0
        whole = len(view) - len(view) % pktline.MAX_PAYLOAD
        parts += pktline.stream_parts(view[:whole])
        if whole < len(view):
            self._carry, self._carried = [view[whole:]], len(view) - whole
        await self._writev(parts)

    async def finish(self) -> None:
        """Write the last (short) packet: the content is complete in the pipe."""
        if self._carried:
            head = b"%04x" % (self._carried + pktline.HEADER_SIZE)
            carry, self._carry, self._carried = self._carry, [], 0
            await self._writev([head, *carry])

    def close(self) -> None:
        """Close the daemon's fd (Git's end stays open: the filter goes on with the status
        lines). Without finish(), the bytes in the pipe are whole packets, the carry is dropped."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    async def _writev(self, parts: list[bytes | memoryview]) -> None:
        i = 0
        while i < len(parts):
            try:
                n = os.writev(self._fd, parts[i : i + IOV_MAX])
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as e:
                raise RequestError("io", f"git stopped reading the filter's output: {e.strerror}") from None
            while n:
                size = len(parts[i])
                if n >= size:
                    n -= size
                    i += 1
                else:
                    parts[i] = memoryview(parts[i])[n:]
                    n = 0

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(self._fd, _resolve, ready)
        try:
            await ready
        finally:
            loop.remove_writer(self._fd)


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
