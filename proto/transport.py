"""Socket tuning shared by both ends of the wire (the only I/O helper in proto/: both the
stdlib-only client and the daemon need it, and neither may import the other)."""

from __future__ import annotations

import contextlib
import socket

SOCKET_BUFFER = 4 << 20


def widen_socket(sock: socket.socket) -> None:
    """4 MiB socket buffers: a file streams in fewer, larger syscalls (the kernel caps the
    size at net.core.wmem_max / rmem_max; a refusal leaves the default)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
