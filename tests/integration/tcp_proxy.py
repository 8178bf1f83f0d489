"""A loopback TCP forwarder that a test can switch off and on, to play an S3 outage.

Stopping the shared SeaweedFS would break other tests; a proxy in front of it gives one test
its own remote that goes down (connections refused) and comes back on the same port, that is
slow (bandwidth per connection and direction), or that hangs (`stall`: connections stay open
and nothing moves, as with a dead router; `resume` lets it flow again).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target while up; refuses connections while down."""

    def __init__(self, target_host: str, target_port: int, rate_bytes_per_s: int | None = None,
                 up_rate_bytes_per_s: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.rate = rate_bytes_per_s  # downstream bandwidth, to make a transfer last long enough
        self.up_rate = up_rate_bytes_per_s  # upstream (uploads), per connection too
        self._flowing = threading.Event()
        self._flowing.set()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def stall(self) -> None:
        """Keep every connection open but forward nothing more (at most one read slips by)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def down(self) -> None:
        """Close the listener and every forwarded connection: the remote is gone."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b, rate in ((client, upstream, self.up_rate), (upstream, client, self.rate)):
                threading.Thread(target=self._pump, args=(a, b, rate), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        start = time.monotonic()
        sent = 0
        try:
            while data := src.recv(1 << 16):
                while not self._flowing.wait(0.5):  # stalled: hold the data, keep the connection
                    if self._listener is None:
                        return  # the proxy went down meanwhile
                dst.sendall(data)
                sent += len(data)
                if rate:  # bandwidth shaping, not synchronisation: hold until the budget allows
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
