"""One client connection: wire frames in and out, presented to handlers as a `Channel`.

The sans-IO `proto.wire.Connection` checks every frame against the protocol state; this
module only moves bytes between it and the socket, with backpressure both ways.

Why a BufferedProtocol and not asyncio streams: a put moves gigabytes through here, and the
stream reader copies every byte three more times (into its buffer, out of it, into the
parser's). The socket is read straight into one reused buffer and fed to the parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from gitmld.daemon.channel import ChannelClosed, ProtocolViolation
from gitmld.proto import wire
from gitmld.proto.version import __version__

log = logging.getLogger("gitmld.connection")

READ_SIZE = 1 << 20  # one recv_into at most
HIGH_WATER = 8 << 20  # unparsed bytes at which reading pauses (the handler is behind)
LOW_WATER = 2 << 20  # ... and resumes
RequestHandler = Callable[[dict[str, Any], "ServerConnection"], Awaitable[None]]


class SocketStream(asyncio.BufferedProtocol):
    """The I/O edge of one connection: received bytes go to `wire.Connection.feed`; waiters
    are woken when there is something to parse, when the peer leaves, or when writes drain."""

    def __init__(self, on_connect: Callable[[SocketStream], Awaitable[None]]) -> None:
        self._on_connect = on_connect
        self.conn = wire.Connection(wire.Role.SERVER)
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost: BaseException | None = None  # set when the connection is gone
        self._scratch = bytearray(READ_SIZE)
        self._view = memoryview(self._scratch)
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # EOF or lost
        self.task: asyncio.Task[None] | None = None

    # -- protocol callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's
        self.task = asyncio.ensure_future(self._on_connect(self))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.conn.feed(self._view[:nbytes])
        except wire.WireError as e:  # data after EOF: the parser reports it on the next read
            self.lost = e
        if self.conn.buffered >= HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        if not self._gone.done():
            self._gone.set_result(None)
        return True  # keep the write side open: an answer may still be owed

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        self._wake_reader()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)
        if not self._gone.done():
            self._gone.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- for the connection ------------------------------------------------------------------
    async def readable(self) -> None:
        """Wait for more bytes, EOF or the end of the connection."""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._readable = asyncio.get_running_loop().create_future()
        await self._readable

    def consumed(self) -> None:
        """The handler took events: resume reading once the backlog is small."""
        if self._reading_paused and self.conn.buffered <= LOW_WATER and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.writelines(parts)

    async def drain(self) -> None:
        if self.lost is not None:
            raise ConnectionResetError("connection closed")
        if self._writable is not None and not self._writable.done():
            await self._writable
            if self.lost is not None:
                raise ConnectionResetError("connection closed")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await self._closed

    async def peer_gone(self) -> None:
        """Wait until the client has closed its side (or the connection is lost)."""
        await asyncio.shield(self._gone)

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)


class ServerConnection:
    """The daemon's side of one connection; serves requests one at a time."""

    def __init__(self, stream: SocketStream, peer_pid: int = -1) -> None:
        self.stream = stream
        self.peer = f"pid {peer_pid}"
        self.peer_pid = peer_pid
        self._conn = stream.conn
        self._stopping = False
        self._in_request = False

    async def serve(self, handler: RequestHandler) -> None:
        """Handshake, then requests until the client leaves or the daemon stops."""
        try:
            first = await self._next_event()
            if first is None:
                return
            if not isinstance(first, wire.Hello):
                raise ProtocolViolation(f"first frame must be HELLO, got {type(first).__name__.upper()}")
            await self._send(wire.Hello({"proto": wire.PROTO_VERSION, "agent": f"gitmld-daemon/{__version__}"}))
            while not self._stopping:
                event = await self._next_event()
                if event is None:
                    return
                if not isinstance(event, wire.Request):
                    raise ProtocolViolation(f"expected REQUEST, got {type(event).__name__.upper()}")
                self._in_request = True
                try:
                    await handler(event.payload, self)
                    if self._conn.in_upload:
                        await self._drain_upload()
                finally:
                    self._in_request = False
        except ProtocolViolation as e:
            log.warning("protocol error from %s: %s", self.peer, e)
            with contextlib.suppress(Exception):
                self.stream.writelines([wire.encode_error("protocol", f"wire protocol violation: {e}")])
                await self.stream.drain()
        except ChannelClosed as e:
            log.debug("connection from %s closed: %s", self.peer, e)
        finally:
            self.stream.close()
            with contextlib.suppress(Exception):
                await self.stream.wait_closed()

    def stop_after_current_request(self) -> None:
        """Graceful shutdown: finish what is running, take no new request."""
        self._stopping = True
        if not self._in_request:
            self.stream.close()

    # -- Channel ---------------------------------------------------------------------------

    async def incoming_data(self) -> AsyncIterator[bytes]:
        while self._conn.in_upload:
            event = await self._next_event()
            if event is None:
                raise ChannelClosed("client closed the connection in the middle of its data")
            if isinstance(event, wire.Data):
                yield event.data
            elif isinstance(event, wire.End):
                return

    async def respond(self, payload: dict[str, Any]) -> None:
        await self._send(wire.Response(payload))

    async def peer_gone(self) -> None:
        await self.stream.peer_gone()

    async def send_data(self, data: bytes | memoryview) -> None:
        """Any length: framed here, written without copying the payload."""
        await self._write(lambda: self._conn.send_data(data))

    async def end_data(self) -> None:
        await self._send(wire.End())

    async def progress(self, payload: dict[str, Any]) -> None:
        await self._send(wire.Progress(payload))

    async def error(self, code: str, message: str, obj: str | None = None) -> None:
        await self._send(wire.Error(code, message, obj))

    # -- bytes -----------------------------------------------------------------------------

    async def _drain_upload(self) -> None:
        async for _ in self.incoming_data():
            pass

    async def _next_event(self) -> wire.Event | None:
        try:
            stream = self.stream
            while True:
                event = self._conn.next_event()
                if event is not None:
                    stream.consumed()
                    return event
                if stream.eof:
                    self._conn.feed_eof()
                    return None
                if stream.lost is not None:
                    if isinstance(stream.lost, wire.WireError):
                        raise stream.lost
                    raise ChannelClosed(str(stream.lost))
                await stream.readable()
        except wire.WireError as e:
            raise ProtocolViolation(str(e)) from None
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(str(e)) from None

    async def _send(self, event: wire.Event) -> None:
        await self._write(lambda: [self._conn.send(event)])

    async def _write(self, frames: Callable[[], list[bytes | memoryview]]) -> None:
        """Encode (checking the protocol state), write and drain, with errors translated."""
        try:
            self.stream.writelines(frames())
            await self.stream.drain()
        except wire.WireError as e:
            raise ProtocolViolation(f"daemon bug: {e}") from None
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(str(e)) from None
