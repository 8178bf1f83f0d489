"""Client <-> daemon frames (docs/ARCHITECTURE.md, "Wire protocol"), sans-IO.

    frame = type:u8 length:u32be payload[length]

`FrameReader` turns bytes into typed events without judging their order; `Connection` adds
the per-side state machine (one request at a time, DATA only where a stream is expected).
Every violation is a `WireError`, as h11 has one ProtocolError.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterator

from gitmld.proto.pktline import Record
from gitmld.proto.receive_buffer import ReceiveBuffer

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the filter ~5 ms
if TYPE_CHECKING:
    from typing import Any

    JSON = dict[str, Any]

PROTO_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB: the most a peer may make us hold for one frame
MAX_DATA = 256 << 10  # 256 KiB: DATA frames are streamed, never large
HEADER = struct.Struct(">BI")

T_HELLO = 0x01
T_REQUEST = 0x02
T_RESPONSE = 0x03
T_DATA = 0x04
T_END = 0x05
T_ERROR = 0x06
T_PROGRESS = 0x07

UPLOAD_OPS = frozenset({"put", "compose"})  # REQUEST is followed by the client's DATA* END
DOWNLOAD_OPS = frozenset({"get"})  # RESPONSE is followed by the daemon's DATA* END
ERROR_CODES = frozenset({"protocol", "not_found", "corrupt", "remote", "key", "io", "bad_request", "internal"})


class WireError(Exception):
    """Malformed or out-of-order frames: the connection cannot continue."""


class Hello(Record):
    __slots__ = ("payload",)
    payload: JSON

    def __init__(self, payload: JSON) -> None:
        super().__init__(payload)

    @property
    def agent(self) -> str:
        return str(self.payload.get("agent", ""))


class Request(Record):
    __slots__ = ("payload",)
    payload: JSON

    def __init__(self, payload: JSON) -> None:
        super().__init__(payload)

    @property
    def op(self) -> str:
        return str(self.payload["op"])


class Response(Record):
    __slots__ = ("payload",)
    payload: JSON

    def __init__(self, payload: JSON) -> None:
        super().__init__(payload)


class Data(Record):
    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        super().__init__(data)


class End(Record):
    __slots__ = ()


class Error(Record):
    """ERROR frame: `payload` holds any fields beyond code, message and object."""

    __slots__ = ("code", "message", "object", "payload")
    code: str
    message: str
    object: str | None
    payload: JSON

    def __init__(self, code: str, message: str, object: str | None = None, payload: JSON | None = None) -> None:
        super().__init__(code, message, object, dict(payload or {}))


class Progress(Record):
    __slots__ = ("payload",)
    payload: JSON

    def __init__(self, payload: JSON) -> None:
        super().__init__(payload)


Event = Hello | Request | Response | Data | End | Error | Progress


# -- encoding -------------------------------------------------------------------------------
def _frame(ftype: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise WireError(f"frame payload of {len(payload)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    return HEADER.pack(ftype, len(payload)) + payload


def _json_frame(ftype: int, obj: JSON) -> bytes:
    if not isinstance(obj, dict):
        raise WireError("JSON payloads must be objects")
    return _frame(ftype, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def encode_hello(agent: str, **extra: Any) -> bytes:
    return _json_frame(T_HELLO, {"proto": PROTO_VERSION, "agent": agent, **extra})


def encode_request(op: str, **fields: Any) -> bytes:
    return _json_frame(T_REQUEST, {"op": op, **fields})


def encode_response(payload: JSON) -> bytes:
    return _json_frame(T_RESPONSE, payload)


def encode_data(data: bytes | bytearray | memoryview) -> bytes:
    """As many DATA frames as needed (none for empty data: an empty DATA says nothing)."""
    view = memoryview(data)
    return b"".join(_frame(T_DATA, bytes(view[i : i + MAX_DATA])) for i in range(0, len(view), MAX_DATA))


def encode_end() -> bytes:
    return HEADER.pack(T_END, 0)


def encode_error(code: str, message: str, object: str | None = None, **extra: Any) -> bytes:
    payload: JSON = {"code": code, "message": message, **extra}
    if object is not None:
        payload["object"] = object
    return _json_frame(T_ERROR, payload)


def encode_progress(done: int, total: int | None, unit: str = "bytes", what: str = "") -> bytes:
    return _json_frame(T_PROGRESS, {"done": done, "total": total, "unit": unit, "what": what})


def encode_event(event: Event) -> bytes:
    """Bytes for any event (what `Connection.send` uses)."""
    if isinstance(event, Data):
        if len(event.data) > MAX_DATA:
            raise WireError(f"DATA frame of {len(event.data)} bytes exceeds {MAX_DATA}")
        return _frame(T_DATA, event.data)
    if isinstance(event, End):
        return encode_end()
    if isinstance(event, Error):
        return encode_error(event.code, event.message, event.object, **event.payload)
    ftype = {Hello: T_HELLO, Request: T_REQUEST, Response: T_RESPONSE, Progress: T_PROGRESS}[type(event)]
    return _json_frame(ftype, event.payload)


# -- decoding -------------------------------------------------------------------------------
def _decode_json(ftype: int, payload: bytes) -> JSON:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"frame type {ftype:#04x}: bad JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError(f"frame type {ftype:#04x}: JSON payload is not an object")
    return obj


def _decode(ftype: int, payload: bytes) -> Event:
    if ftype == T_DATA:
        return Data(payload)
    if ftype == T_END:
        if payload:
            raise WireError("END frame with a payload")
        return End()
    obj = _decode_json(ftype, payload)
    if ftype == T_HELLO:
        if obj.get("proto") != PROTO_VERSION or isinstance(obj.get("proto"), bool):
            raise WireError(f"peer speaks wire protocol {obj.get('proto')!r}, we speak {PROTO_VERSION}")
        return Hello(obj)
    if ftype == T_REQUEST:
        if not isinstance(obj.get("op"), str):
            raise WireError("REQUEST without a string 'op'")
        return Request(obj)
    if ftype == T_RESPONSE:
        return Response(obj)
    if ftype == T_ERROR:
        code, message, oid = obj.get("code"), obj.get("message"), obj.get("object")
        if not isinstance(code, str) or not isinstance(message, str):
            raise WireError("ERROR frame without string 'code' and 'message'")
        if oid is not None and not isinstance(oid, str):
            raise WireError("ERROR frame with a non-string 'object'")
        extra = {k: v for k, v in obj.items() if k not in ("code", "message", "object")}
        return Error(code, message, oid, extra)
    return Progress(obj)  # T_PROGRESS; other types are rejected at the header


_KNOWN_TYPES = frozenset({T_HELLO, T_REQUEST, T_RESPONSE, T_DATA, T_END, T_ERROR, T_PROGRESS})


class FrameReader(ReceiveBuffer):
    """Feed bytes, pull events. A bad header fails at once, before its payload arrives."""

    error = WireError
    unit = "frame"

    def next_event(self) -> Event | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER.size:
            return None
        ftype, length = HEADER.unpack_from(buf, pos)
        if ftype not in _KNOWN_TYPES:
            raise WireError(f"unknown frame type {ftype:#04x}")
        limit = MAX_DATA if ftype == T_DATA else MAX_FRAME
        if length > limit:
            raise WireError(f"frame type {ftype:#04x} of {length} bytes exceeds the limit of {limit}")
        end = pos + HEADER.size + length
        if len(buf) < end:
            return None
        with memoryview(buf) as view:  # one copy (slicing the bytearray first would make two)
            payload = bytes(view[pos + HEADER.size : end])
        self._pos = end
        return _decode(ftype, payload)

    def __iter__(self) -> Iterator[Event]:
        while (event := self.next_event()) is not None:
            yield event


# -- per-side state machine -----------------------------------------------------------------
class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Phase(enum.Enum):
    IDLE = "idle"  # client may send a REQUEST
    UPLOADING = "uploading"  # client sends DATA* END (put)
    UPLOAD_REJECTED = "upload rejected"  # server sent ERROR mid-upload; client finishes with END
    AWAITING = "awaiting"  # server sends PROGRESS* then RESPONSE or ERROR
    DOWNLOADING = "downloading"  # server sends DATA* END, or ERROR (get)
    CLOSED = "closed"  # after an ERROR with code "protocol"


class Connection:
    """One side of a connection: `send(event) -> bytes`, `feed(bytes)`, `next_event()`.

    Both sides track the same phase, so each checks its own sends and the peer's frames.
    The client may send its REQUEST right after its HELLO (no round trip); the server sends
    HELLO only in answer to the client's.
    """

    def __init__(self, role: Role) -> None:
        self.role = role
        self.phase = Phase.IDLE
        self.op: str | None = None
        self._reader = FrameReader()
        self._hello_sent = False
        self._hello_received = False

    @property
    def handshaken(self) -> bool:
        return self._hello_sent and self._hello_received

    @property
    def in_upload(self) -> bool:
        """The client is still sending DATA* END (also after the daemon rejected the upload)."""
        return self.phase in (Phase.UPLOADING, Phase.UPLOAD_REJECTED)

    def send(self, event: Event) -> bytes:
        self._transition(event, self.role)
        return encode_event(event)

    def send_data(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        """DATA frames for ``data`` of any length, as header and payload views to write with
        one writev (no payload is copied); each payload at most MAX_DATA bytes."""
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        for start in range(0, len(view), MAX_DATA):
            piece = view[start : start + MAX_DATA]
            self._transition(Data(b""), self.role)
            parts += (HEADER.pack(T_DATA, len(piece)), piece)
        return parts

    def feed(self, data: bytes | memoryview) -> None:
        self._reader.feed(data)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into events (for the reader's flow control)."""
        return self._reader.buffered

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def next_event(self) -> Event | None:
        if self.phase is Phase.CLOSED:
            return None
        event = self._reader.next_event()
        if event is not None:
            peer = Role.SERVER if self.role is Role.CLIENT else Role.CLIENT
            self._transition(event, peer)
        return event

    def __iter__(self) -> Iterator[Event]:
        while (event := self.next_event()) is not None:
            yield event

    def _transition(self, event: Event, sender: Role) -> None:
        """Advance the phase for `event` sent by `sender`, or raise WireError."""
        name = type(event).__name__.upper()
        phase = self.phase
        mine = sender is self.role
        if phase is Phase.CLOSED:
            raise WireError(f"{name} after the connection was closed by a protocol error")
        if isinstance(event, Error) and event.code == "protocol":
            if sender is not Role.SERVER:
                raise WireError("only the daemon sends ERROR frames")
            self.phase = Phase.CLOSED
            return
        if isinstance(event, Hello):
            if (self._hello_sent if mine else self._hello_received):
                raise WireError("HELLO sent twice")
            if sender is Role.SERVER and not (self._hello_received if mine else self._hello_sent):
                raise WireError("the daemon's HELLO must answer the client's")
            if mine:
                self._hello_sent = True
            else:
                self._hello_received = True
            return
        client_hello = self._hello_sent if self.role is Role.CLIENT else self._hello_received
        if not client_hello:
            raise WireError(f"{name} before the client's HELLO")
        if sender is Role.CLIENT:
            self._client_event(event, name, phase)
        else:
            self._server_event(event, name, phase)

    def _client_event(self, event: Event, name: str, phase: Phase) -> None:
        if isinstance(event, Request):
            if phase is not Phase.IDLE:
                raise WireError(f"REQUEST while {phase.value}: one request at a time")
            self.op = event.op
            self.phase = Phase.UPLOADING if event.op in UPLOAD_OPS else Phase.AWAITING
        elif isinstance(event, Data | End):
            if phase not in (Phase.UPLOADING, Phase.UPLOAD_REJECTED):
                raise WireError(f"client {name} while {phase.value}")
            if isinstance(event, End):
                if phase is Phase.UPLOAD_REJECTED:
                    self._finish()
                else:
                    self.phase = Phase.AWAITING
        else:
            raise WireError(f"the client does not send {name}")

    def _server_event(self, event: Event, name: str, phase: Phase) -> None:
        if isinstance(event, Error):
            if phase is Phase.UPLOADING:
                self.phase = Phase.UPLOAD_REJECTED
            elif phase in (Phase.AWAITING, Phase.DOWNLOADING):
                self._finish()
            else:
                raise WireError(f"ERROR while {phase.value}")
        elif isinstance(event, Progress):
            if phase not in (Phase.AWAITING, Phase.DOWNLOADING, Phase.UPLOADING):
                raise WireError(f"PROGRESS while {phase.value}")
        elif isinstance(event, Response):
            if phase is not Phase.AWAITING:
                raise WireError(f"RESPONSE while {phase.value}")
            if self.op in DOWNLOAD_OPS:
                self.phase = Phase.DOWNLOADING
            else:
                self._finish()
        elif isinstance(event, Data | End):
            if phase is not Phase.DOWNLOADING:
                raise WireError(f"daemon {name} while {phase.value}")
            if isinstance(event, End):
                self._finish()
        else:
            raise WireError(f"the daemon does not send {name}")

    def _finish(self) -> None:
        self.phase = Phase.IDLE
        self.op = None
