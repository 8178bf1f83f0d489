"""A `file:///abs/path` remote: a local or mounted directory with the semantics of S3.

Objects appear whole or not at all (temp file + fsync + rename + fsync of the directory), so
a reader or a crash never exposes a partial object; leftover temp files are invisible to
`list`. Every disk call runs in a worker thread so the daemon's loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from gitmld.daemon.remote.base import Progress, RemoteError, RemoteNotFound, RemoteStats, RemoteUnavailable

TMP_PREFIX = ".gitmld-tmp-"  # reserved: names with a component starting with it are refused
_COPY_BUFFER = 1 << 20
_PROGRESS_STEP = 8 << 20  # put_file reports progress every this many bytes


def path_from_url(url: str) -> Path:
    """The directory of a `file:///abs/path` URL (percent-decoded); RemoteError if malformed."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise RemoteError(url, None, "not a file:///absolute/path URL", hint="write it as file:///absolute/path")
    return Path(unquote(parts.path))


class DirectoryRemote:
    """Objects are files under `root`; an object name's "/" separate directories."""

    def __init__(self, url: str) -> None:
        self.root = path_from_url(url)
        self.url = url
        self.stats = RemoteStats()

    # -- names --------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) or "\0" in p for p in parts):
            raise RemoteError(
                self.url, name, "invalid object name",
                hint="names are relative, '/'-separated, without empty, '.' or '..' parts",
            )
        return self.root.joinpath(*parts)

    def _not_found(self, name: str) -> RemoteNotFound:
        return RemoteNotFound(self.url, name, f"no such file {self._path(name)}")

    # -- writes -------------------------------------------------------------------------

    async def prepare_new_repository(self) -> None:
        """Create the root (and its missing parents): the embedded default lives under a
        fresh $XDG_DATA_HOME. Only a new repository does this."""
        await asyncio.to_thread(_makedirs_durable, self.root)

    def _require_root(self) -> None:
        """Ordinary writes never create the root: a share that is not mounted must fail (the
        uploads stay queued) rather than fill the empty mountpoint on the local disk."""
        if not self.root.is_dir():
            raise RemoteUnavailable(self.url, None, f"directory {self.root} does not exist",
                                    hint="mount it or fix gitmld.url")

    async def put_bytes(self, name: str, data: bytes) -> None:
        target = self._path(name)
        await asyncio.to_thread(self._write_atomic, target, lambda f: f.write(data))
        self.stats.puts += 1
        self.stats.put_bytes += len(data)

    async def put_file(self, name: str, path: Path, *, progress: Progress | None = None) -> None:
        """Copy in a worker thread; progress(n) is called from that thread every few MiB."""
        target = self._path(name)

        def copy(dst: BinaryIO) -> int:
            with open(path, "rb") as src:
                if progress is None:
                    shutil.copyfileobj(src, dst, _COPY_BUFFER)
                    return src.tell()
                unreported = 0
                while block := src.read(_COPY_BUFFER):
                    dst.write(block)
                    unreported += len(block)
                    if unreported >= _PROGRESS_STEP:
                        progress(unreported)
                        unreported = 0
                progress(unreported)
                return src.tell()

        size = await asyncio.to_thread(self._write_atomic, target, copy)
        self.stats.puts += 1
        self.stats.put_bytes += size

    def _write_atomic(self, target: Path, fill: Callable[[BinaryIO], int]) -> int:
        """Make missing directories below the root, then write via a temp file, fsync, rename
        over, fsync the directory."""
        self._require_root()
        _makedirs_durable(target.parent)
        return _write_replace(target, fill)

    async def delete(self, name: str) -> None:
        """Idempotent, like S3: deleting a missing object is not an error."""
        target = self._path(name)
        await asyncio.to_thread(_unlink_durable, target)

    # -- reads --------------------------------------------------------------------------

    async def get_bytes(self, name: str) -> bytes:
        target = self._path(name)
        try:
            data = await asyncio.to_thread(target.read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found(name) from None
        self.stats.gets += 1
        self.stats.get_bytes += len(data)
        return data

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """At most `length` bytes from `offset`; fewer only at the end of the object."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset} length={length}")
        target = self._path(name)
        try:
            data = await asyncio.to_thread(_read_range, target, offset, length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found(name) from None
        self.stats.gets += 1
        self.stats.get_bytes += len(data)
        return data

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._path(name).is_file)

    async def probe(self, name: str) -> bool:
        """Whether name exists; RemoteUnavailable when the directory itself is gone (unmounted)."""
        target = self._path(name)

        def look() -> bool:
            if not self.root.is_dir():
                raise RemoteUnavailable(self.url, None, f"directory {self.root} does not exist",
                                        hint="mount it or fix gitmld.url")
            return target.is_file()

        return await asyncio.to_thread(look)

    async def list(self, prefix: str) -> list[str]:
        """Names starting with `prefix` (a string prefix, as on S3), sorted."""
        self.stats.lists += 1
        return await asyncio.to_thread(_list_prefix, self.root, prefix)

    async def close(self) -> None:
        return None


def _write_replace(target: Path, fill: Callable[[BinaryIO], int]) -> int:
    """Write via a temp file in the target's directory, fsync, rename over, fsync the directory."""
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as f:
            result = fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return result


def _makedirs_durable(directory: Path) -> None:
    """Create missing parents and fsync each new entry's parent, so they survive a crash."""
    missing: list[Path] = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        d = d.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue  # a concurrent put created it
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_durable(target: Path) -> None:
    try:
        target.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return
    _fsync_dir(target.parent)


def _read_range(target: Path, offset: int, length: int) -> bytes:
    with open(target, "rb") as f:
        fd = f.fileno()
        want = max(0, min(length, os.fstat(fd).st_size - offset))  # never allocate past the end
        parts: list[bytes] = []
        while want > 0:
            part = os.pread(fd, want, offset)
            if not part:
                break  # truncated under us: return what there is
            parts.append(part)
            offset += len(part)
            want -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _list_prefix(root: Path, prefix: str) -> list[str]:
    # Walk only the deepest directory the prefix pins down; filter by string prefix after.
    head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    start = root.joinpath(*[p for p in head.split("/") if p]) if head else root
    if any(p in (".", "..") for p in head.split("/")):
        return []
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
        rel = Path(dirpath).relative_to(root).as_posix()
        base = "" if rel == "." else rel + "/"
        names.extend(
            base + fn for fn in filenames if not fn.startswith(TMP_PREFIX) and (base + fn).startswith(prefix)
        )
    # S3 lists in UTF-8 byte order.
    names.sort(key=lambda n: n.encode("utf-8", "surrogateescape"))
    return names
