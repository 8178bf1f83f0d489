"""Git's long-running filter process protocol (version 2), server side, sans-IO.

Reference: git's Documentation/gitattributes.txt, "Long Running Filter Process". Git writes a
whole request (headers, content, flush) before it reads the answer, so the machine pauses
(`next_event()` returns None) after each request until the application has answered with one
of the `respond_*` methods; those return the bytes to write. Every protocol violation is a
`FilterProtocolError`.

    conn = FilterServer()
    conn.feed(stdin_bytes)
    for event in conn: ...            # Welcome -> send_welcome(), CapabilitiesOffered -> ...
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping

from gitmld.proto import pktline
from gitmld.proto.pktline import Record

SUPPORTED_CAPABILITIES = ("clean", "smudge", "delay")
CONTENT_COMMANDS = frozenset({"clean", "smudge"})
LIST_AVAILABLE_BLOBS = "list_available_blobs"
MAX_HEADERS = 64  # git sends a handful; a bound keeps a confused peer from growing memory


class FilterProtocolError(Exception):
    """Any violation of the filter protocol (wraps malformed pkt-lines too)."""


class Welcome(Record):
    """Git said hello and offered these protocol versions; answer with `send_welcome()`."""

    __slots__ = ("versions",)
    versions: tuple[int, ...]

    def __init__(self, versions: tuple[int, ...]) -> None:
        super().__init__(versions)


class CapabilitiesOffered(Record):
    """Git's capabilities; answer with `send_capabilities()`."""

    __slots__ = ("capabilities",)
    capabilities: frozenset[str]

    def __init__(self, capabilities: frozenset[str]) -> None:
        super().__init__(capabilities)


class Command(Record):
    """A request: `clean`, `smudge` (content follows) or `list_available_blobs` (none)."""

    __slots__ = ("headers", "name")
    name: str
    headers: Mapping[str, str]

    def __init__(self, name: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(dict(headers or {}), name)

    @property
    def pathname(self) -> str:
        return self.headers.get("pathname", "")

    @property
    def can_delay(self) -> bool:
        return self.headers.get("can-delay") == "1"


class ContentChunk(Record):
    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        super().__init__(data)


class ContentEnd(Record):
    """The content of the current clean/smudge request is complete; now answer it."""

    __slots__ = ()


Event = Welcome | CapabilitiesOffered | Command | ContentChunk | ContentEnd


class State(enum.Enum):
    WELCOME = "expect git-filter-client"
    VERSIONS = "expect version lines"
    SEND_WELCOME = "must send welcome"
    CAPABILITIES = "expect capability lines"
    SEND_CAPABILITIES = "must send capabilities"
    IDLE = "expect command"
    HEADERS = "expect headers"
    CONTENT = "expect content"
    RESPONDING = "must respond"
    SENDING_CONTENT = "sending content"
    CLOSED = "closed"


def _text(payload: bytes) -> str:
    """A text packet: strip the single trailing LF; surrogateescape keeps odd path bytes."""
    if payload.endswith(b"\n"):
        payload = payload[:-1]
    return payload.decode("utf-8", "surrogateescape")


def _line(text: str) -> bytes:
    return pktline.encode_data(text.encode("utf-8", "surrogateescape") + b"\n")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise FilterProtocolError(f"expected key=value, got {text!r}")
    return key, value


class FilterServer:
    """The filter's side of one conversation with git."""

    def __init__(self, capabilities: Iterable[str] = SUPPORTED_CAPABILITIES) -> None:
        self._ours = frozenset(capabilities)
        unknown = self._ours - set(SUPPORTED_CAPABILITIES)
        if unknown:
            raise ValueError(f"unsupported capabilities: {sorted(unknown)}")
        self._reader = pktline.PktLineReader()
        self.state = State.WELCOME
        self.capabilities: frozenset[str] = frozenset()  # negotiated
        self.command: Command | None = None  # the request being answered
        self._versions: list[int] = []
        self._offered: set[str] = set()
        self._headers: dict[str, str] = {}

    # -- receiving -----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
        except pktline.PktLineError as exc:
            raise FilterProtocolError(str(exc)) from exc

    def feed_eof(self) -> None:
        """Git closed our stdin. Fine between requests, a violation in the middle of one."""
        try:
            self._reader.feed_eof()
        except pktline.PktLineError as exc:
            raise FilterProtocolError(str(exc)) from exc
        if self.state is State.WELCOME and not self._versions:
            self.state = State.CLOSED  # closed before saying anything: nothing was started
        if self.state not in (State.IDLE, State.CLOSED, State.RESPONDING, State.SENDING_CONTENT):
            raise FilterProtocolError(f"git closed the pipe in state {self.state.name}")
        if self.state is State.IDLE:
            self.state = State.CLOSED

    @property
    def paused(self) -> bool:
        """True when the application must send something before more events can come."""
        return self.state in (
            State.SEND_WELCOME,
            State.SEND_CAPABILITIES,
            State.RESPONDING,
            State.SENDING_CONTENT,
        )

    def next_event(self) -> Event | None:
        """The next event, or None if more bytes are needed or the machine is paused."""
        while not self.paused and self.state is not State.CLOSED:
            try:
                pkt = self._reader.next_event()
            except pktline.PktLineError as exc:
                raise FilterProtocolError(str(exc)) from exc
            if pkt is None:
                return None
            event = self._handle(pkt)
            if event is not None:
                return event
        return None

    def __iter__(self) -> Iterator[Event]:
        while (event := self.next_event()) is not None:
            yield event

    def _handle(self, pkt: pktline.Event) -> Event | None:
        state = self.state
        if isinstance(pkt, pktline.Delim | pktline.ResponseEnd):
            raise FilterProtocolError(f"unexpected {type(pkt).__name__} packet in state {state.name}")
        if state is State.CONTENT:
            if isinstance(pkt, pktline.Flush):
                self.state = State.RESPONDING
                return ContentEnd()
            return ContentChunk(pkt.data) if pkt.data else None
        if state is State.WELCOME:
            if isinstance(pkt, pktline.Flush) or _text(pkt.data) != "git-filter-client":
                raise FilterProtocolError(f"expected git-filter-client, got {pkt!r}")
            self.state = State.VERSIONS
            return None
        if state is State.VERSIONS:
            if isinstance(pkt, pktline.Flush):
                return self._end_versions()
            key, value = _key_value(_text(pkt.data))
            if key != "version" or not value.isdigit():
                raise FilterProtocolError(f"expected version=<n>, got {_text(pkt.data)!r}")
            self._versions.append(int(value))
            return None
        if state is State.CAPABILITIES:
            if isinstance(pkt, pktline.Flush):
                self.state = State.SEND_CAPABILITIES
                return CapabilitiesOffered(frozenset(self._offered))
            key, value = _key_value(_text(pkt.data))
            if key != "capability":
                raise FilterProtocolError(f"expected capability=<name>, got {_text(pkt.data)!r}")
            self._offered.add(value)
            return None
        if state in (State.IDLE, State.HEADERS):
            if isinstance(pkt, pktline.Flush):
                if state is State.IDLE:
                    raise FilterProtocolError("empty request: flush without a command")
                return self._end_headers()
            key, value = _key_value(_text(pkt.data))
            if key in self._headers:
                raise FilterProtocolError(f"header {key!r} repeated")
            if len(self._headers) >= MAX_HEADERS:
                raise FilterProtocolError(f"more than {MAX_HEADERS} headers")
            if state is State.IDLE and key != "command":
                raise FilterProtocolError(f"a request must start with command=, got {key}=")
            self._headers[key] = value
            self.state = State.HEADERS
            return None
        raise FilterProtocolError(f"unexpected packet in state {state.name}")  # pragma: no cover

    def _end_versions(self) -> Welcome:
        if 2 not in self._versions:
            raise FilterProtocolError(f"git offers protocol versions {self._versions}, we speak only 2")
        self.state = State.SEND_WELCOME
        return Welcome(tuple(self._versions))

    def _end_headers(self) -> Command:
        headers, self._headers = self._headers, {}
        name = headers["command"]
        if name in CONTENT_COMMANDS:
            if name not in self.capabilities:
                raise FilterProtocolError(f"command {name!r} was not negotiated")
            if "pathname" not in headers:
                raise FilterProtocolError(f"{name} request without pathname")
            self.state = State.CONTENT
        elif name == LIST_AVAILABLE_BLOBS:
            if "delay" not in self.capabilities:
                raise FilterProtocolError("list_available_blobs without the delay capability")
            self.state = State.RESPONDING
        else:
            raise FilterProtocolError(f"unknown command {name!r}")
        self.command = Command(name, headers)
        return self.command

    # -- sending -------------------------------------------------------------------------
    def _expect(self, *states: State) -> None:
        if self.state not in states:
            raise FilterProtocolError(f"cannot send this in state {self.state.name}")

    def send_welcome(self) -> bytes:
        self._expect(State.SEND_WELCOME)
        self.state = State.CAPABILITIES
        return _line("git-filter-server") + _line("version=2") + pktline.FLUSH_PKT

    def send_capabilities(self) -> bytes:
        """Announce what both sides support, in our canonical order."""
        self._expect(State.SEND_CAPABILITIES)
        self.capabilities = frozenset(c for c in self._ours if c in self._offered)
        self.state = State.IDLE
        lines = [_line(f"capability={c}") for c in SUPPORTED_CAPABILITIES if c in self.capabilities]
        return b"".join(lines) + pktline.FLUSH_PKT

    def _content_command(self) -> Command:
        self._expect(State.RESPONDING)
        assert self.command is not None
        if self.command.name not in CONTENT_COMMANDS:
            raise FilterProtocolError(f"cannot answer {self.command.name} with content")
        return self.command

    def start_success(self) -> bytes:
        """status=success; stream content with `send_content`, then `finish_content`."""
        self._content_command()
        self.state = State.SENDING_CONTENT
        return _line("status=success") + pktline.FLUSH_PKT

    def send_content(self, data: bytes | bytearray | memoryview) -> bytes:
        self._expect(State.SENDING_CONTENT)
        return pktline.encode_stream(data)

    def finish_content(self, ok: bool = True) -> bytes:
        """End the content; ok=False turns the trailing status into error (git drops the file)."""
        self._expect(State.SENDING_CONTENT)
        self._done()
        trailer = pktline.FLUSH_PKT if ok else _line("status=error") + pktline.FLUSH_PKT
        return pktline.FLUSH_PKT + trailer

    def respond_success(self, content: bytes) -> bytes:
        """A complete small answer in one go."""
        return self.start_success() + self.send_content(content) + self.finish_content()

    def respond_error(self) -> bytes:
        """This file failed; git reports it and goes on (or stops if the filter is required)."""
        self._expect(State.RESPONDING)
        self._done()
        return _line("status=error") + pktline.FLUSH_PKT

    def respond_abort(self) -> bytes:
        """This filter gives up on this command for the rest of the run."""
        self._expect(State.RESPONDING)
        self._done()
        return _line("status=abort") + pktline.FLUSH_PKT

    def respond_delayed(self) -> bytes:
        cmd = self._content_command()
        if cmd.name != "smudge" or not cmd.can_delay or "delay" not in self.capabilities:
            raise FilterProtocolError("status=delayed is only allowed for smudge with can-delay=1")
        self._done()
        return _line("status=delayed") + pktline.FLUSH_PKT

    def respond_available_blobs(self, pathnames: Iterable[str]) -> bytes:
        """The delayed paths that are ready now; an empty list tells git we are done."""
        self._expect(State.RESPONDING)
        assert self.command is not None
        if self.command.name != LIST_AVAILABLE_BLOBS:
            raise FilterProtocolError(f"cannot answer {self.command.name} with a blob list")
        self._done()
        lines = b"".join(_line(f"pathname={p}") for p in pathnames)
        return lines + pktline.FLUSH_PKT + _line("status=success") + pktline.FLUSH_PKT

    def _done(self) -> None:
        self.command = None
        self.state = State.IDLE


# -- git's side, for tests and tools that need to talk to a filter ----------------------------
def encode_client_welcome(versions: Iterable[int] = (2,)) -> bytes:
    return _line("git-filter-client") + b"".join(_line(f"version={v}") for v in versions) + pktline.FLUSH_PKT


def encode_client_capabilities(capabilities: Iterable[str] = SUPPORTED_CAPABILITIES) -> bytes:
    return b"".join(_line(f"capability={c}") for c in capabilities) + pktline.FLUSH_PKT


def encode_request(
    name: str, headers: Mapping[str, str] | None = None, content: bytes | None = None
) -> bytes:
    """A git request; `content` None means no content section (list_available_blobs)."""
    out = [_line(f"command={name}")]
    out += [_line(f"{k}={v}") for k, v in (headers or {}).items()]
    out.append(pktline.FLUSH_PKT)
    if content is not None:
        out += [pktline.encode_stream(content), pktline.FLUSH_PKT]
    return b"".join(out)
