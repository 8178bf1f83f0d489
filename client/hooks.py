"""Find the gitmld pointers a push or a tree references, and make their objects durable.

`git push` is the moment data must be durable in the remote (DESIGN.md, principle 7): the
pre-push hook lists the blobs of the commits being pushed, keeps the gitmld pointers among
them and asks the daemon to `flush` exactly those objects. `gitmld push`, `prefetch`,
`ls-files` and `fsck` enumerate pointers the same way.

Enumeration streams: `git rev-list --objects` (or `ls-tree`) feeds `git cat-file
--batch-check` directly, only blobs small enough to be pointers go on to `git cat-file
--batch`, and one blob at a time is held in memory.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from gitmld.client.gitconfig import GitError, run_git
from gitmld.proto.pointer import MAX_POINTER_SIZE, Pointer, PointerError, looks_like_pointer

VERSION_LINE = re.compile(rb"version gitmld/[0-9]+")
BATCH_CHECK_FORMAT = "%(objectname) %(objecttype) %(objectsize) %(rest)"


class PushError(Exception):
    """The push must not go ahead; the message lists the objects and says what to do."""


@dataclass(frozen=True)
class RefUpdate:
    """One line of the pre-push hook's stdin: `<local ref> <local sha> <remote ref> <remote sha>`."""

    local_ref: str
    local_sha: str
    remote_ref: str
    remote_sha: str

    @property
    def is_delete(self) -> bool:
        return is_zero(self.local_sha)

    @property
    def is_new(self) -> bool:
        return is_zero(self.remote_sha)


@dataclass(frozen=True)
class PointerBlob:
    """A gitmld pointer found in Git: the blob holding it, one path it appears at, the pointer."""

    blob: str
    path: str
    pointer: Pointer


@dataclass(frozen=True)
class BadPointer:
    """A blob that starts like a gitmld pointer but does not parse (for fsck)."""

    blob: str
    path: str
    error: str


def is_zero(sha: str) -> bool:
    return not sha.strip("0")


def parse_pre_push(lines: Iterable[str]) -> list[RefUpdate]:
    """Parse git's pre-push stdin; a malformed line is a ValueError naming it."""
    updates = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(
                f"pre-push input line {number} is {line.strip()!r}, "
                "expected '<local ref> <local sha> <remote ref> <remote sha>'"
            )
        updates.append(RefUpdate(*parts))
    return updates


def push_revisions(updates: Sequence[RefUpdate], remote: str, *, cwd: str | Path | None = None) -> list[str]:
    """`git rev-list` arguments for the objects a push sends: the new local tips, not what the
    remote already has. A remote tip we do not have locally (someone else pushed it) cannot be
    excluded by sha, so then, and for new refs, what our remote-tracking refs reach is excluded."""
    tips = [u.local_sha for u in updates if not u.is_delete]
    if not tips:
        return []
    known = existing_objects([u.remote_sha for u in updates if not u.is_delete and not u.is_new], cwd=cwd)
    exclude = [u.remote_sha for u in updates if u.remote_sha in known]
    if any(not u.is_delete and u.remote_sha not in known for u in updates):
        exclude.append(f"--remotes={remote}")
    return [*tips, "--not", *exclude] if exclude else tips


def existing_objects(shas: Sequence[str], *, cwd: str | Path | None = None) -> set[str]:
    """Which of these object names exist in the local object database (one git call)."""
    return set(object_info(shas, cwd=cwd))


def object_info(names: Sequence[str], *, cwd: str | Path | None = None) -> dict[str, tuple[str, int]]:
    """(type, size) of each object that exists, from one `git cat-file --batch-check`."""
    if not names:
        return {}
    listing = "".join(f"{n}\n" for n in names).encode()
    proc = run_git(["cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"], cwd=cwd, input=listing)
    info = {}
    for name, line in zip(names, proc.stdout.decode().splitlines(), strict=True):
        fields = line.split()
        if len(fields) == 3 and fields[2].isdigit():
            info[name] = (fields[1], int(fields[2]))
    return info


def rev_list_candidates(revs: Sequence[str], *, cwd: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """(blob, path) of the blobs reachable from `revs` that are small enough to be pointers."""
    if not revs:
        return
    revlist = subprocess.Popen(
        ["git", "rev-list", "--objects", *revs, "--"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    yield from _batch_check(revlist, revlist.stdout, f"git rev-list --objects {' '.join(revs)}", cwd)


def tree_candidates(ref: str, *, cwd: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """(blob, path) of the files in the tree of `ref` that are small enough to be pointers."""
    proc = subprocess.Popen(
        ["git", "ls-tree", "-r", "-z", "--full-tree", "-l", ref], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    complete = False
    try:
        for record in _split_nul(proc.stdout):
            meta, _, path = record.partition(b"\t")
            fields = meta.split()
            if len(fields) != 4 or fields[1] != b"blob" or not fields[3].isdigit():
                continue
            if int(fields[3]) < MAX_POINTER_SIZE:
                yield fields[2].decode(), path.decode(errors="surrogateescape")
        complete = True
    finally:
        proc.stdout.close()
        _finish(proc, f"git ls-tree -r {ref}", complete=complete)


def iter_pointers(candidates: Iterable[tuple[str, str]], *, cwd: str | Path | None = None,
                  bad: Callable[[BadPointer], None] | None = None) -> Iterator[PointerBlob]:
    """Read candidate blobs with one `git cat-file --batch` and yield the gitmld pointers.

    A writer thread feeds blob names while this generator reads contents, so neither pipe can
    fill up and block the other; one blob at a time is in memory. Blobs whose first line is a
    gitmld version line but that do not parse go to `bad` (fsck reports them).
    """
    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    paths: deque[str] = deque()
    failure: list[BaseException] = []
    writer = threading.Thread(target=_feed, args=(candidates, proc.stdin, paths, failure), daemon=True)
    writer.start()
    complete = False
    try:
        while True:
            header = proc.stdout.readline()
            if not header:
                break
            fields = header.split()
            if len(fields) != 3:
                raise GitError(
                    f"`git cat-file --batch` answered {header!r}: object missing or repository damaged; "
                    "run `git fsck`"
                )
            blob, size = fields[0].decode(), int(fields[2])
            data = proc.stdout.read(size + 1)[:size]
            path = paths.popleft()
            if not looks_like_pointer(data):
                continue
            try:
                pointer = Pointer.parse(data)
            except PointerError as e:
                if bad is not None and VERSION_LINE.fullmatch(data.split(b"\n", 1)[0]):
                    bad(BadPointer(blob, path, str(e)))  # a pointer, damaged; not prose about one
                continue
            yield PointerBlob(blob, path, pointer)
        complete = True
    finally:
        proc.stdout.close()
        if not complete:
            _stop(proc)
        writer.join()  # the writer ends: its input is exhausted or its pipe is broken
        _finish(proc, "git cat-file --batch", complete=complete)
    if failure:
        raise failure[0]


def pointers_in_revs(revs: Sequence[str], *, cwd: str | Path | None = None) -> Iterator[PointerBlob]:
    """Every gitmld pointer in the history selected by `git rev-list` arguments."""
    return iter_pointers(rev_list_candidates(revs, cwd=cwd), cwd=cwd)


def pointers_in_tree(ref: str, *, cwd: str | Path | None = None,
                     bad: Callable[[BadPointer], None] | None = None) -> Iterator[PointerBlob]:
    """Every gitmld pointer in the tree of one commit (what a checkout of it needs)."""
    return iter_pointers(tree_candidates(ref, cwd=cwd), cwd=cwd, bad=bad)


def unique_objects(pointers: Iterable[PointerBlob]) -> dict[str, PointerBlob]:
    """One entry per gitmld object (many paths or blobs may share one)."""
    objects: dict[str, PointerBlob] = {}
    for p in pointers:
        objects.setdefault(p.pointer.oid, p)
    return objects


# -- making them durable ------------------------------------------------------------------------


class Daemon(Protocol):
    """What the hook needs of `client.daemon_client.DaemonClient`."""

    def request(self, op: str, **fields: Any) -> dict[str, Any]: ...

    def request_progress(
        self, op: str, on_progress: Callable[[dict[str, Any]], None], **fields: Any
    ) -> dict[str, Any]: ...


def upload(daemon: Daemon, remote: dict[str, Any], objects: dict[str, PointerBlob],
           on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Ask the daemon to make `objects` durable in the remote; PushError lists what is missing."""
    from gitmld.client.daemon_client import DaemonError, DaemonUnavailable

    if not objects:
        return {"uploaded_bytes": 0, "objects": 0}
    try:
        return daemon.request_progress("flush", on_progress, remote=remote, oids=sorted(objects))
    except DaemonUnavailable:
        raise  # no daemon, or it went away: its message says so and what to do
    except DaemonError as e:
        raise PushError(_flush_failure(daemon, remote, objects, e)) from e


def _flush_failure(
    daemon: Daemon, remote: dict[str, Any], objects: dict[str, PointerBlob], error: Exception
) -> str:
    """The daemon's reason, then every object of this push that is not durable in the remote.

    A failed flush confirms none of them, so all are listed; those that are not even in the host
    cache (a local question, no remote round trip) cannot be uploaded from this machine at all.
    """
    from gitmld.client.daemon_client import DaemonError

    where = remote.get("url", "the remote")
    lines = [f"uploading {len(objects)} object(s) to {where} failed: {error}"]
    lost = []
    lines.append(f"gitmld: {len(objects)} object(s) are not durable in {where}:")
    for oid, p in sorted(objects.items(), key=lambda kv: kv[1].path):
        try:
            local = bool(daemon.request("has", remote=remote, oid=oid, local=True).get("present"))
        except DaemonError:
            local = True  # unknown: say nothing worse than the line above
        note = "" if local else " - NOT in the host cache"
        lines.append(f"  {p.path} ({p.pointer.oid}, {p.pointer.size} bytes){note}")
        if not local:
            lost.append(p)
    if lost:
        lines.append(
            "gitmld: re-add the files not in the host cache from a copy that has their content "
            "(`git add --renormalize PATH`), or push from the checkout that created them"
        )
    lines.append(
        "gitmld: the others stay queued in the host cache; fix the cause above (`gitmld status` shows the daemon "
        "and the upload queue), then push again"
    )
    return "\n".join(lines)


# -- helpers ------------------------------------------------------------------------------------


def _batch_check(upstream: subprocess.Popen[bytes], out: IO[bytes] | None, what: str,
                 cwd: str | Path | None) -> Iterator[tuple[str, str]]:
    """Pipe `upstream`'s object list straight into `git cat-file --batch-check`; keep small blobs."""
    check = subprocess.Popen(
        ["git", "cat-file", f"--batch-check={BATCH_CHECK_FORMAT}"], cwd=cwd, stdin=out,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert out is not None and check.stdout is not None
    out.close()  # the child holds it now; upstream gets SIGPIPE if check dies
    complete = False
    try:
        for line in check.stdout:
            fields = line.rstrip(b"\n").split(b" ", 3)
            if len(fields) >= 3 and fields[1] == b"blob" and int(fields[2]) < MAX_POINTER_SIZE:
                path = fields[3] if len(fields) == 4 else b""
                yield fields[0].decode(), path.decode(errors="surrogateescape")
        complete = True
    finally:
        check.stdout.close()
        if not complete:
            _stop(check)
            _stop(upstream)
        _finish(upstream, what, complete=complete)
        _finish(check, "git cat-file --batch-check", complete=complete)


def _feed(candidates: Iterable[tuple[str, str]], stdin: IO[bytes], paths: deque[str],
          failure: list[BaseException]) -> None:
    try:
        for blob, path in candidates:
            paths.append(path)  # before the write: the reader pops it when the answer arrives
            stdin.write(f"{blob}\n".encode())
    except BrokenPipeError:
        pass  # the reader stopped early and closed the pipe
    except BaseException as e:  # handed to the reading thread, raised there
        failure.append(e)
    finally:
        close = getattr(candidates, "close", None)
        if close is not None:
            close()  # stops and reaps the upstream git processes
        with contextlib.suppress(BrokenPipeError):
            stdin.close()


def _split_nul(stream: IO[bytes]) -> Iterator[bytes]:
    rest = b""
    while chunk := stream.read(65536):
        records = (rest + chunk).split(b"\0")
        rest = records.pop()
        yield from records
    if rest:
        yield rest


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """We stopped reading early (an error, or the caller had enough): end the child now."""
    if proc.poll() is None:
        proc.terminate()


def _finish(proc: subprocess.Popen[bytes], what: str, *, complete: bool) -> None:
    """Reap a child. After a complete read its failure is a GitError carrying git's stderr;
    after an early stop its exit status means nothing and another error may be on its way."""
    code = proc.wait()
    err = b""
    if proc.stderr is not None:
        err = proc.stderr.read()
        proc.stderr.close()
    if complete and code != 0:
        raise GitError(f"`{what}` failed: {err.decode(errors='replace').strip() or f'exit status {code}'}")
