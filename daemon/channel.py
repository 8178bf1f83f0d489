"""What a request handler may do with its connection, independent of the socket and framing.

The server implements this over `proto.wire`; tests can implement it in memory. Keeping the
handlers unaware of frames is what lets the wire format change without touching them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Channel(Protocol):
    """One client connection, as seen by the handler of its current request."""

    peer: str
    peer_pid: int  # from SO_PEERCRED; -1 when unknown

    def incoming_data(self) -> AsyncIterator[bytes]:
        """DATA payloads the client sends after its request, until END."""
        ...

    async def respond(self, payload: dict[str, Any]) -> None: ...

    async def peer_gone(self) -> None:
        """Returns once the client has left (for handlers that do not read while they work)."""
        ...

    async def send_data(self, data: bytes | memoryview) -> None: ...

    async def end_data(self) -> None: ...

    async def progress(self, payload: dict[str, Any]) -> None: ...

    async def error(self, code: str, message: str, obj: str | None = None) -> None: ...


class RequestError(Exception):
    """A failure to report to the client as an ERROR frame, with one of the wire error codes."""

    def __init__(self, code: str, message: str, obj: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.obj = obj


class ChannelClosed(Exception):
    """The connection cannot carry an answer any more (peer gone, or it broke the protocol).

    Handlers let it pass: there is nobody to send an ERROR frame to.
    """


class ProtocolViolation(ChannelClosed):
    """The client sent frames that break the wire protocol; the daemon answers and closes."""
