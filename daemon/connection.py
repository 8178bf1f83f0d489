"""One client connection: wire frames in and out, presented to handlers as a `Channel`.

The sans-IO `proto.wire.Connection` checks every frame against the protocol state; this
module only moves bytes between it and the asyncio stream, with backpressure on writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gitmld.daemon.channel import ChannelClosed, ProtocolViolation
from gitmld.proto import wire
from gitmld.proto.version import __version__

log = logging.getLogger("gitmld.connection")

READ_SIZE = 256 * 1024
RequestHandler = Callable[[dict[str, Any], "ServerConnection"], Awaitable[None]]


class ServerConnection:
    """The daemon's side of one connection; serves requests one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self._conn = wire.Connection(wire.Role.SERVER)
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
                self.writer.write(wire.encode_error("protocol", f"wire protocol violation: {e}"))
                await self.writer.drain()
        except ChannelClosed as e:
            log.debug("connection from %s closed: %s", self.peer, e)
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def stop_after_current_request(self) -> None:
        """Graceful shutdown: finish what is running, take no new request."""
        self._stopping = True
        if not self._in_request:
            self.writer.close()

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

    async def send_data(self, data: bytes) -> None:
        await self._send(wire.Data(data))

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
            while True:
                event = self._conn.next_event()
                if event is not None:
                    return event
                data = await self.reader.read(READ_SIZE)
                if not data:
                    self._conn.feed_eof()
                    return None
                self._conn.feed(data)
        except wire.WireError as e:
            raise ProtocolViolation(str(e)) from None
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(str(e)) from None

    async def _send(self, event: wire.Event) -> None:
        try:
            self.writer.write(self._conn.send(event))
            await self.writer.drain()
        except wire.WireError as e:
            raise ProtocolViolation(f"daemon bug: {e}") from None
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(str(e)) from None
