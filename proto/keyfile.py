"""The keyfile: the local key-encryption key (KEK) that unwraps a repository's keys.

Shared by `gitmld keygen` (client, standard library only) and the daemon, so both write and
read one format and name a key by one id. Text, mode 0600::

    # comment lines
    gitmld-kek-v1:<64 hex digits: the 32-byte KEK>

The key id is public: the first 16 hex digits of SHA-256("gitmld kek id v1\\0" + KEK). It
names the wrapped-keys object in the bucket and tells keyfiles apart in messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path

from gitmld.proto.paths import default_keyfile

KEY_LEN = 32
KEYFILE_ENV = "GITMLD_KEYFILE"
_KEYFILE_TAG = "gitmld-kek-v1:"
_KEYFILE_MAX = 4096  # a keyfile is ~200 bytes; refuse to read anything much larger
_ID_CONTEXT = b"gitmld kek id v1\0"


class KeyFileError(Exception):
    """The keyfile is missing, unreadable, too open, or malformed; the message says what to do."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def default_keyfile_path() -> Path:
    """``$GITMLD_KEYFILE``, else ``$XDG_CONFIG_HOME/gitmld/keyfile`` (``~/.config`` by default)."""
    return default_keyfile()


def kek_id(kek: bytes) -> str:
    """Short public id of a KEK (16 hex digits; the wrapped keys' object name in the bucket)."""
    return hashlib.sha256(_ID_CONTEXT + kek).hexdigest()[:16]


def create_keyfile(path: Path, *, force: bool = False) -> bytes:
    """Write a new random KEK to ``path`` (mode 0600, parent made 0700); never overwrite unless forced."""
    path = Path(path)
    if not force and (path.exists() or path.is_symlink()):
        raise KeyFileError(
            path,
            f"keyfile {path} already exists; refusing to overwrite it (its key may protect "
            f"existing repositories). Move it away first if you really want a new one.",
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    kek = secrets.token_bytes(KEY_LEN)
    text = (
        "# gitmld key-encryption key. Keep it secret and back it up: without it the\n"
        "# repositories whose keys it wraps cannot be read.\n"
        f"# key id: {kek_id(kek)}\n"
        f"{_KEYFILE_TAG}{kek.hex()}\n"
    )
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            if force:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # atomic and fails if the path appeared meanwhile
        except FileExistsError:
            raise KeyFileError(path, f"keyfile {path} already exists; refusing to overwrite it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return kek

def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def load_kek(path: Path) -> bytes:
    """The KEK in ``path``; :class:`KeyFileError` says what is wrong and what to do."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang us
    except FileNotFoundError:
        raise KeyFileError(
            path,
            f"no keyfile at {path}: run `gitmld keygen` to create one, or copy there the keyfile "
            f"this repository was created with (or set {KEYFILE_ENV} to its path)",
        ) from None
    except OSError as e:
        raise KeyFileError(path, f"cannot open keyfile {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, f"keyfile {path} is not a regular file (a keyfile is what `gitmld keygen` writes)")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                path,
                f"keyfile {path} has mode {mode:04o}, so other users may read it; it must be 0600: "
                f"run `chmod 600 {path}`",
            )
        raw = os.read(fd, _KEYFILE_MAX + 1)
    except OSError as e:
        raise KeyFileError(path, f"cannot read keyfile {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    kek = _parse_keyfile(raw)
    if kek is None:
        raise KeyFileError(
            path,
            f"keyfile {path} is not a gitmld keyfile (expected one line `{_KEYFILE_TAG}<64 hex "
            f"digits>`): restore it from your backup, or run `gitmld keygen` for a new repository",
        )
    return kek

def _parse_keyfile(raw: bytes) -> bytes | None:
    if len(raw) > _KEYFILE_MAX:
        return None
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        return None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if len(keys) != 1 or not keys[0].startswith(_KEYFILE_TAG):
        return None
    digits = keys[0][len(_KEYFILE_TAG) :]
    if len(digits) != 2 * KEY_LEN:
        return None
    try:
        return bytes.fromhex(digits)
    except ValueError:
        return None
