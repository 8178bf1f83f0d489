"""The program Git runs as `filter.gitmld.process`: pkt-lines on stdin/stdout <-> the daemon.

One process serves a whole Git command, over one daemon connection (opened on first need, so
a checkout without pointers never starts a daemon). Content streams through; the only
buffering is the first MiB of a file, to tell pointers from content (a larger smudge input is
spooled to disk to be passed through). A file that fails gets status=error, never partial
content: Git collects a smudge answer before writing it, and an error in the trailing status
makes it discard what it got.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from gitmld.client.daemon_client import DaemonClient, DaemonError, DaemonUnavailable
from gitmld.proto import filter_protocol as fp
from gitmld.proto.pointer import (
    MAX_POINTER_SIZE,
    VERSION_PREFIX,
    Pointer,
    PointerError,
    UnsupportedPointerVersion,
    is_lfs_pointer,
    looks_like_pointer,
    parse_lfs_pointer,
)
from gitmld.proto.version import __version__

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import IO, Any

    Remote = dict[str, Any]

READ_SIZE = 1 << 20
PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size; git's 64 KiB pipes cost a syscall per pkt-line
WAIT_TIMEOUT = 30.0  # one `wait` round trip; list_available_blobs loops until something is ready
SHORT_WAIT = 0.2  # first `wait` rounds: time for small fetches to complete, or for a large one to move
SHORT_WAITS = 50  # short rounds before falling back to WAIT_TIMEOUT (a fetch that has not moved in 10 s)
WAIT_GRACE = 10.0  # beyond the fetch deadline, how long a `wait` answer may take before the daemon counts as stuck
DEFAULT_FETCH_TIMEOUT = 600.0  # gitmld.fetchTimeout: seconds without progress before delayed files fail
NO_DIRECT_ENV = "GITMLD_NO_DIRECT_SMUDGE"  # set: smudged content comes through this process
SPOOL_MEMORY = 8 << 20  # pass-through smudge content beyond this goes to a temp file


class OutputBroken(Exception):
    """Our stdout may end inside a pkt-line: the filter must exit, so that Git fails the file."""


class FileFailed(Exception):
    """This file cannot be filtered; the message names the cause (the path is added on report)."""

    def __init__(self, message: str, oid: str | None = None) -> None:
        super().__init__(message)
        self.oid = oid


class _Delayed:
    """A smudge answered status=delayed: what it needs, and what the daemon said since."""

    __slots__ = ("announced", "done", "failure", "path", "pointer", "ready", "streaming", "total")

    def __init__(self, path: str, pointer: Pointer) -> None:
        self.path = path
        self.pointer = pointer
        self.ready = False
        self.streaming = False  # handed back before its fetch completed: read as it arrives
        self.failure: str | None = None
        self.announced = False  # listed in a list_available_blobs answer
        self.done = 0  # bytes of its fetch the daemon last reported
        self.total = pointer.size


def _default_connect() -> DaemonClient:
    return DaemonClient.connect(agent=f"gitmld-filter/{__version__}")


def _default_fetch_timeout() -> float:
    from gitmld.client.gitconfig import ConfigError, GitError, load_fetch_timeout

    try:
        return load_fetch_timeout()
    except (ConfigError, GitError) as exc:
        sys.stderr.write(f"gitmld: {exc}; waiting up to {DEFAULT_FETCH_TIMEOUT:g} s without progress instead\n")
        return DEFAULT_FETCH_TIMEOUT


def _default_remote() -> Remote:
    from gitmld.client.gitconfig import load_remote_config  # runs git: only when content needs it
    from gitmld.client.install import ensure_hook

    ensure_hook()  # a fresh clone gets the pre-push hook with its first checkout, as with Git LFS
    return load_remote_config().to_json()


class FilterProcess:
    """Drives `proto.filter_protocol.FilterServer` over two file descriptors."""

    def __init__(
        self,
        in_fd: int = 0,
        out_fd: int = 1,
        *,
        connect: Callable[[], DaemonClient] = _default_connect,
        remote: Callable[[], Remote] = _default_remote,
        fetch_timeout: Callable[[], float] = _default_fetch_timeout,
        stderr: IO[str] | None = None,
        direct: bool | None = None,
    ) -> None:
        self._in = in_fd
        self._out = out_fd
        self._connect = connect
        self._load_remote = remote
        self._stderr = stderr
        self._proto = fp.FilterServer()
        self._client: DaemonClient | None = None
        self._connect_error: DaemonError | None = None
        self._remote: Remote | None = None
        self._remote_error: str | None = None
        self._delayed: dict[str, _Delayed] = {}
        self._load_fetch_timeout = fetch_timeout
        self._fetch_timeout: float | None = None  # read from git config on the first delay
        self._last_progress = 0.0  # monotonic: the last delay, or the last time a pending fetch moved
        self._direct = direct  # the daemon writes smudged content into our stdout (None: find out)

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Serve git until it closes our stdin; 0 on a clean end."""
        for fd in (self._in, self._out):
            widen_pipe(fd)
        try:
            while (event := self._next()) is not None:
                if isinstance(event, fp.Welcome):
                    self._write(self._proto.send_welcome())
                elif isinstance(event, fp.CapabilitiesOffered):
                    self._write(self._proto.send_capabilities())
                elif isinstance(event, fp.Command):
                    self._command(event)
                else:
                    raise fp.FilterProtocolError(f"unexpected {event!r} outside a request")
        finally:
            if self._client is not None:
                self._client.close()
        return 0

    def _command(self, cmd: fp.Command) -> None:
        if cmd.name == "clean":
            self._clean(cmd.pathname)
        elif cmd.name == "smudge":
            self._smudge(cmd.pathname, cmd.can_delay and "delay" in self._proto.capabilities)
        else:
            self._list_available_blobs()

    # -- clean ---------------------------------------------------------------------------
    def _clean(self, path: str) -> None:
        content = self._content()
        head = bytearray()
        ended = not _fill(content, head, len(VERSION_PREFIX))
        if ended and not head:  # empty files stay empty, as with Git LFS
            self._write(self._proto.respond_success(b""))
            return
        if looks_like_pointer(head):
            ended = not _fill(content, head, MAX_POINTER_SIZE + 1)
            if ended and self._is_pointer(path, bytes(head)):
                self._write(self._proto.respond_success(bytes(head)))  # idempotent clean
                return
        chunks = _chain(bytes(head), content)
        try:
            answer = self._daemon().put(self._get_remote(), path, chunks)
            text = answer.get("pointer")
            if not isinstance(text, str):
                raise FileFailed(f"the daemon's put answer has no pointer: {answer!r}")
            try:
                pointer = Pointer.parse(text)
            except PointerError as exc:
                raise FileFailed(f"the daemon returned an invalid pointer ({exc})") from None
        except (DaemonError, FileFailed) as exc:
            for _ in chunks:  # git must be allowed to finish writing before we answer
                pass
            self._report("clean", path, exc)
            self._write(self._proto.respond_error())
            return
        self._write(self._proto.respond_success(pointer.to_bytes()))

    def _is_pointer(self, path: str, data: bytes) -> bool:
        """Whether clean input is already a pointer to keep as is."""
        try:
            Pointer.parse(data)
        except UnsupportedPointerVersion as exc:
            self._warn(f"gitmld: {path}: {exc}; keeping the pointer as it is")
            return True
        except PointerError as exc:
            self._warn(f"gitmld: {path}: looks like a gitmld pointer but is not one ({exc}); storing it as content")
            return False
        return True

    # -- smudge --------------------------------------------------------------------------
    def _smudge(self, path: str, can_delay: bool) -> None:
        data, spool = self._collect(self._content())
        try:
            if spool is not None:
                self._pass_through_file(spool)
                return
            if not data:
                delayed = self._delayed.pop(path, None)
                if delayed is None:
                    self._write(self._proto.respond_success(b""))
                elif delayed.failure is not None:
                    raise FileFailed(delayed.failure, delayed.pointer.oid)
                elif delayed.streaming:
                    self._stream_delayed(delayed)
                else:
                    self._send_object(path, delayed.pointer)
                return
            pointer = self._pointer_or_none(data)
            if pointer is None:  # content committed before it was tracked: as Git LFS does
                self._write(self._proto.respond_success(data))
            elif can_delay and not self._in_host_cache(pointer):
                self._daemon().request("fetch", remote=self._get_remote(), oids=[pointer.oid], path=path)
                self._delayed[path] = _Delayed(path, pointer)
                self._last_progress = time.monotonic()  # a fresh fetch is not stalled yet
                if self._fetch_timeout is None:
                    self._fetch_timeout = self._load_fetch_timeout()
                self._write(self._proto.respond_delayed())
            else:
                self._send_object(path, pointer)
        except (DaemonError, FileFailed) as exc:
            self._report("smudge", path, exc)
            self._write(self._proto.respond_error())
        finally:
            if spool is not None:
                spool.close()

    def _pointer_or_none(self, data: bytes) -> Pointer | None:
        if is_lfs_pointer(data):
            try:
                oid = parse_lfs_pointer(data).oid
            except PointerError:
                oid = None
            raise FileFailed(
                "this is a Git LFS pointer, not a gitmld one; fetch it with `git lfs pull`, or migrate "
                "the file to gitmld (`git lfs migrate export`, then `gitmld track`)",
                oid,
            )
        if not looks_like_pointer(data):
            return None
        try:
            return Pointer.parse(data)
        except UnsupportedPointerVersion as exc:
            raise FileFailed(str(exc)) from None
        except PointerError as exc:
            raise FileFailed(f"not a valid gitmld pointer: {exc}") from None

    def _in_host_cache(self, pointer: Pointer) -> bool:
        answer = self._daemon().request("has", remote=self._get_remote(), oid=pointer.oid, local=True)
        return bool(answer.get("present"))

    def _stream_delayed(self, d: _Delayed) -> None:
        """Smudge a file whose fetch is still running: no bytes for gitmld.fetchTimeout seconds
        fail it as a stalled fetch would."""
        limit = self._fetch_timeout or 0.0

        def stalled(exc: Exception) -> FileFailed:
            return FileFailed(
                f"no progress for {_seconds(limit)} s while streaming it (gitmld.fetchTimeout is {limit:g} s): the"
                f" remote or the daemon is stuck ({exc}); see `gitmld status`, then check the file out again"
                f" (`git checkout -- '{d.path}'`)", d.pointer.oid)

        client = self._daemon()
        client.set_timeout(limit or None)
        try:
            self._send_object(d.path, d.pointer, stalled if limit else None)
        except DaemonUnavailable as exc:
            if not limit:
                raise
            raise stalled(exc) from None
        finally:
            if client.connected:
                client.set_timeout(None)

    def _send_object(self, path: str, pointer: Pointer,
                     stalled: Callable[[Exception], FileFailed] | None = None) -> None:
        """Stream the object. The daemon verifies every chunk and, before its END, the whole
        file's SHA-256 against the oid (an ERROR otherwise); here the length is checked.
        stalled: what a lost connection means (a timeout while streaming a running fetch)."""
        if self._direct_smudge():
            self._send_object_direct(path, pointer, stalled)
            return
        stream = self._daemon().get(self._get_remote(), pointer.oid, pointer.size, path)
        self._write(self._proto.start_success())
        size = 0
        try:
            for piece in stream:
                size += len(piece)
                self._write(self._proto.send_content(piece))
            if size != pointer.size:
                raise FileFailed(f"content from the daemon does not match the pointer ({size} bytes)", pointer.oid)
        except (DaemonError, FileFailed) as exc:
            if stalled is not None and isinstance(exc, DaemonUnavailable):
                exc = stalled(exc)
            self._report("smudge", path, exc, pointer.oid)
            self._write(self._proto.finish_content(ok=False))
            return
        self._write(self._proto.finish_content())

    def _send_object_direct(self, path: str, pointer: Pointer,
                            stalled: Callable[[Exception], FileFailed] | None) -> None:
        """The daemon writes the content packets into our stdout itself (daemon/pipe_sink.py);
        the status lines around them stay ours. It stops after whole packets on an error, so
        status=error can follow; if it dies instead, Git may hold half a packet, and only our
        exit (Git then fails the file: the filter is required) ends that cleanly."""
        remote = self._get_remote()
        client = self._daemon()
        self._write(self._proto.start_success())
        try:
            written = client.get_into_pipe(remote, pointer.oid, pointer.size, path, self._out)
            if written != pointer.size:
                raise FileFailed(f"content from the daemon does not match the pointer ({written} bytes)", pointer.oid)
        except DaemonUnavailable as exc:
            failure: Exception = stalled(exc) if stalled is not None else exc
            self._report("smudge", path, failure, pointer.oid)
            raise OutputBroken(f"gitmld filter-process: stopping, the daemon left '{path}' half written") from exc
        except (DaemonError, FileFailed) as exc:
            self._report("smudge", path, exc, pointer.oid)
            self._write(self._proto.finish_content(ok=False))
            return
        self._write(self._proto.finish_content())

    def _direct_smudge(self) -> bool:
        """Whether the daemon may write smudged content into our stdout: a pipe (as when Git
        runs us), the daemon agrees (it can open the pipe), and GITMLD_NO_DIRECT_SMUDGE is unset."""
        if self._direct is None:
            self._direct = False
            if not os.environ.get(NO_DIRECT_ENV):
                try:
                    if stat.S_ISFIFO(os.fstat(self._out).st_mode):
                        self._daemon().check_pipe(self._out)
                        self._direct = True
                except (OSError, DaemonError):
                    pass
        return self._direct

    def _pass_through_file(self, spool: IO[bytes]) -> None:
        spool.seek(0)
        self._write(self._proto.start_success())
        while piece := spool.read(READ_SIZE):
            self._write(self._proto.send_content(piece))
        self._write(self._proto.finish_content())

    # -- delay ---------------------------------------------------------------------------
    def _list_available_blobs(self) -> None:
        """Answer the delayed paths that are ready or failed, waiting until there is one.

        A path whose fetch cannot finish is announced too: git then asks for it again and
        gets status=error with the reason, so it reports the file instead of waiting forever
        (after gitmld.fetchTimeout seconds in which no pending fetch moved)."""
        waiting = {p: d for p, d in self._delayed.items() if not d.announced}
        done: list[str] = []
        try:
            polls = 0
            while waiting and not (done := [p for p, d in waiting.items() if d.ready or d.failure]):
                if polls and (head := self._stream_head(waiting.values())) is not None:
                    done = [head.path]
                    break
                # short rounds until a fetch moves (then its file streams), long ones after that
                self._wait_round(waiting.values(), SHORT_WAIT if polls < SHORT_WAITS else None)
                polls += 1
        except (DaemonError, FileFailed) as exc:
            idle = time.monotonic() - self._last_progress
            limit = self._fetch_timeout or 0.0
            cause = (f"no progress for {_seconds(idle)} s (gitmld.fetchTimeout is {limit:g} s); the gitmld daemon"
                     f" did not answer: {exc}" if limit and idle >= limit
                     else f"waiting for the download failed: {exc}")
            for d in waiting.values():
                if not d.ready and d.failure is None:
                    d.failure = cause
            done = list(waiting)  # git asks for each again and gets the error
        for path in done:
            waiting[path].announced = True
        self._write(self._proto.respond_available_blobs(done))

    def _stream_head(self, waiting: Iterable[_Delayed]) -> _Delayed | None:
        """When no delayed file is complete, hand git the one whose fetch is furthest along (a
        large file): its smudge then streams the bytes as the fetch brings them (the daemon
        shares the chunks in flight), so Git writes it while the fetches of all the delayed
        files go on, instead of waiting for a whole file first. None while nothing has moved."""
        pending = [d for d in waiting if not d.ready and d.failure is None]
        head = max(pending, key=lambda d: d.done / max(d.total, 1), default=None)
        if head is None or head.done <= 0:
            return None
        head.ready = head.streaming = True
        return head

    def _wait_round(self, waiting: Iterable[_Delayed], timeout: float | None = None) -> None:
        """One `wait`; afterwards either something finished, or the deadline was checked."""
        pending = [d for d in waiting if not d.ready and d.failure is None]
        oids = sorted({d.pointer.oid for d in pending})
        limit = self._fetch_timeout or 0.0
        timeout = timeout or WAIT_TIMEOUT
        if limit:
            remaining = self._last_progress + limit - time.monotonic()
            if remaining <= 0:
                self._stalled(pending, limit)
                return
            timeout = min(timeout, remaining)
        client = self._daemon()
        # A daemon that does not answer at all (stuck) fails the files once the deadline is past.
        client.set_timeout(timeout + WAIT_GRACE if limit else None)
        try:
            answer = client.request("wait", remote=self._get_remote(), oids=oids, timeout=round(timeout, 3))
        finally:
            client.set_timeout(None)
        ready, failed = answer.get("ready", []), answer.get("failed", {})
        progress = answer.get("progress", {})
        if not isinstance(ready, list) or not isinstance(failed, dict) or not isinstance(progress, dict):
            raise FileFailed(f"malformed wait answer from the daemon: {answer!r}")
        ready_set = set(ready)
        moved = bool(ready_set or failed)
        for d in pending:
            oid = d.pointer.oid
            if oid in failed:
                d.failure = str(failed[oid])
            elif oid in ready_set:
                d.ready = True
            else:
                p = progress.get(oid)
                done = p.get("done") if isinstance(p, dict) else None
                if isinstance(done, int) and done > d.done:  # the daemon's bytes, not our clock
                    d.done = done
                    moved = True
                total = p.get("total") if isinstance(p, dict) else None
                if isinstance(total, int) and total > 0:
                    d.total = total
        if moved:
            self._last_progress = time.monotonic()
        elif limit and time.monotonic() - self._last_progress >= limit:
            self._stalled([d for d in pending if not d.ready and d.failure is None], limit)

    def _stalled(self, pending: Iterable[_Delayed], limit: float) -> None:
        idle = time.monotonic() - self._last_progress
        for d in pending:
            d.failure = (
                f"no progress for {_seconds(idle)} s ({d.done} of {d.total} bytes fetched; gitmld.fetchTimeout is"
                f" {limit:g} s): the remote or the daemon is stuck; see `gitmld status`, then check the file"
                f" out again (`git checkout -- '{d.path}'`)"
            )

    # -- plumbing ------------------------------------------------------------------------
    def _daemon(self) -> DaemonClient:
        """The one connection; reconnect once if it broke, but do not retry a failed start."""
        if self._client is not None and self._client.connected:
            return self._client
        if self._connect_error is not None:
            raise self._connect_error
        try:
            self._client = self._connect()
        except DaemonError as exc:
            self._connect_error = exc
            raise
        return self._client

    def _get_remote(self) -> Remote:
        if self._remote is None:
            if self._remote_error is None:
                try:
                    self._remote = self._load_remote()
                except Exception as exc:  # git config problems: every file fails with the reason
                    self._remote_error = f"cannot read the gitmld remote configuration: {exc}"
            if self._remote is None:
                raise FileFailed(self._remote_error or "no remote configuration")
        return self._remote

    def _next(self) -> fp.Event | None:
        """The next event from git, reading stdin as needed; None when git is done."""
        while (event := self._proto.next_event()) is None:
            if self._proto.state is fp.State.CLOSED:
                return None
            self._read()
        return event

    def _read(self) -> None:
        data = os.read(self._in, READ_SIZE)
        if data:
            self._proto.feed(data)
        else:
            self._proto.feed_eof()

    def _content(self) -> Iterator[bytes]:
        """The content of the current request, in pieces as large as one read delivers."""
        pieces: list[bytes] = []
        while True:
            event = self._proto.next_event()
            if isinstance(event, fp.ContentChunk):
                pieces.append(event.data)
                continue
            if pieces:
                yield b"".join(pieces)
                pieces = []
            if isinstance(event, fp.ContentEnd):
                return
            self._read()

    def _collect(self, content: Iterator[bytes]) -> tuple[bytes, IO[bytes] | None]:
        """Small content in memory; anything larger than a pointer can be, spooled to disk."""
        buf = bytearray()
        if _fill(content, buf, MAX_POINTER_SIZE + 1):
            import tempfile

            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - caller closes
            spool.write(buf)
            for piece in content:
                spool.write(piece)
            return b"", spool
        return bytes(buf), None

    def _write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._out, view)
            view = view[written:]

    def _report(self, op: str, path: str, exc: Exception, oid: str | None = None) -> None:
        oid = getattr(exc, "oid", None) or getattr(exc, "object", None) or oid
        cause = str(exc)
        where = f" (object {oid})" if oid and oid not in cause else ""
        self._warn(f"gitmld: {op} of '{path}' failed{where}: {cause}")

    def _warn(self, message: str) -> None:
        stream = self._stderr or sys.stderr
        stream.write(message + "\n")
        stream.flush()


def widen_pipe(fd: int) -> None:
    """Grow a pipe's buffer so that a gigabyte crosses it in 1 MiB reads and writes rather
    than 64 KiB ones (half the filter's system time). Not a pipe, or not allowed: no change."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (OSError, ValueError):
        pass


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _fill(content: Iterator[bytes], buf: bytearray, size: int) -> bool:
    """Read pieces into buf until it holds `size` bytes (True) or the content ends (False)."""
    while len(buf) < size:
        piece = next(content, None)
        if piece is None:
            return False
        buf += piece
    return True


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def main(argv: list[str] | None = None) -> int:
    """Entry point for `filter.gitmld.process`."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        sys.stderr.write(
            "usage: python -m gitmld.client.filter_process\n"
            "Git runs this as filter.gitmld.process (set up by `gitmld install`); it speaks pkt-lines "
            "on stdin/stdout.\n"
        )
        return 2
    try:
        return FilterProcess().run()
    except fp.FilterProtocolError as exc:
        sys.stderr.write(f"gitmld filter-process: protocol error talking to git: {exc}\n")
        return 1
    except OutputBroken as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except BrokenPipeError:
        return 1  # git went away; nothing to tell it
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
