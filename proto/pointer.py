"""The gitmld pointer file: what Git stores in place of a large file (docs/POINTER.md).

    version gitmld/1
    oid sha256:<64 lowercase hex>
    size <decimal>
    <key> <value>           description lines from describers, order preserved

Serialising is deterministic (same object, same bytes) so that clean is stable and Git sees
no spurious changes; parsing is strict so that a damaged pointer fails loudly instead of
being checked out as a file. Git LFS pointers are recognised so callers can say so.
"""

from __future__ import annotations

import re

from gitmld.proto.pktline import Record

VERSION = "gitmld/1"
VERSION_LINE = f"version {VERSION}"
VERSION_PREFIX = b"version gitmld/"
MAX_POINTER_SIZE = 1 << 20  # anything larger is content, not a pointer
LFS_VERSION = "https://git-lfs.github.com/spec/v1"
LFS_PREFIX = b"version https://git-lfs.github.com/spec/"

REPEATABLE_KEYS = frozenset({"tensor"})
RESERVED_KEYS = frozenset({"version", "oid", "size"})

_KEY = re.compile(r"[a-z][a-z0-9_.-]*\Z")
_OID = re.compile(r"sha256:[0-9a-f]{64}\Z")
_SIZE = re.compile(r"(0|[1-9][0-9]*)\Z")
_VERSION_WORD = re.compile(r"gitmld/([0-9]+)\Z")
_DTYPE = re.compile(r"[A-Za-z0-9_]+\Z")
_SHAPE = re.compile(r"(scalar|[0-9]+(x[0-9]+)*)\Z")
_DIGEST = re.compile(r"[0-9a-f]{8,64}\Z")
_PERCENT_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


class PointerError(ValueError):
    """Not a valid gitmld pointer; the message says what is wrong and where."""


class UnsupportedPointerVersion(PointerError):
    """A gitmld pointer of a version this gitmld cannot read (written by a newer gitmld)."""

    def __init__(self, version: str) -> None:
        super().__init__(
            f"line 1: pointer format {version!r} is not supported by this gitmld "
            f"(it reads {VERSION}); a newer gitmld is needed"
        )
        self.version = version


class Tensor(Record):
    """One `tensor` description line: `tensor <name> <dtype> <shape> [<digest>]`.

    The digest is absent when the describer could not hash the tensor's bytes (formats read
    from their header only).
    """

    __slots__ = ("name", "dtype", "shape", "digest")  # noqa: RUF023 - field order
    name: str
    dtype: str
    shape: tuple[int, ...]
    digest: str | None

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], digest: str | None = None) -> None:
        super().__init__(name, dtype, tuple(shape), digest)

    def to_value(self) -> str:
        shape = "x".join(str(d) for d in self.shape) if self.shape else "scalar"
        value = f"{_escape_name(self.name)} {self.dtype} {shape}"
        if self.digest is not None:
            value += f" {self.digest}"
        _check_tensor(value)
        return value

    @classmethod
    def parse(cls, value: str) -> Tensor:
        parts = _check_tensor(value)
        shape = () if parts[2] == "scalar" else tuple(int(d) for d in parts[2].split("x"))
        return cls(_unescape_name(parts[0]), parts[1], shape, parts[3] if len(parts) == 4 else None)


def _escape_name(name: str) -> str:
    """Percent-encode '%', spaces and non-printable characters (as UTF-8 bytes, %XX):
    the fields of a tensor line stay space-separated and the line stays printable."""
    if not name:
        raise PointerError("tensor name is empty")
    out = []
    for ch in name:
        if ch == "%" or ch == " " or not ch.isprintable():
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def _unescape_run(match: re.Match[str]) -> str:
    try:
        return bytes.fromhex(match.group().replace("%", "")).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return match.group()  # not something _escape_name wrote: keep it as text


def _unescape_name(name: str) -> str:
    return _PERCENT_RUN.sub(_unescape_run, name)


def _check_tensor(value: str) -> list[str]:
    parts = value.split(" ")
    if len(parts) not in (3, 4) or not all(parts):
        raise PointerError(f"tensor value {value!r} is not '<name> <dtype> <shape> [<digest>]'")
    if not _DTYPE.match(parts[1]):
        raise PointerError(f"tensor dtype {parts[1]!r} is not a word")
    if not _SHAPE.match(parts[2]):
        raise PointerError(f"tensor shape {parts[2]!r} is not like 1536x1536 or 'scalar'")
    if len(parts) == 4 and not _DIGEST.match(parts[3]):
        raise PointerError(f"tensor digest {parts[3]!r} is not 8 to 64 lowercase hex digits")
    return parts


def check_description_line(key: str, value: str) -> None:
    """Raise PointerError unless (key, value) can be written and read back unchanged."""
    if not _KEY.match(key):
        raise PointerError(f"description key {key!r} does not match [a-z][a-z0-9_.-]*")
    if key in RESERVED_KEYS:
        raise PointerError(f"description key {key!r} is reserved")
    if not value:
        raise PointerError(f"description key {key!r} has an empty value")
    if value != value.strip(" ") or not value.isprintable():
        raise PointerError(
            f"value of {key!r} must be one line of printable text without leading or trailing spaces"
        )
    if key == "tensor":
        _check_tensor(value)


def _check_description(description: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for key, value in description:
        check_description_line(key, value)
        if key in seen and key not in REPEATABLE_KEYS:
            raise PointerError(f"description key {key!r} appears more than once")
        seen.add(key)


class Pointer(Record):
    """A validated pointer: constructing one that could not be written and read back fails."""

    __slots__ = ("oid", "size", "description")  # noqa: RUF023 - field order
    oid: str  # "sha256:<64 lowercase hex>"
    size: int
    description: list[tuple[str, str]]

    def __init__(self, oid: str, size: int, description: list[tuple[str, str]] | None = None) -> None:
        if not isinstance(oid, str) or not _OID.match(oid):
            raise PointerError(f"oid {oid!r} is not sha256:<64 lowercase hex digits>")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise PointerError(f"size {size!r} is not a non-negative integer")
        desc = list(description or ())
        for item in desc:
            if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise PointerError(f"description item {item!r} is not a (key, value) pair of strings")
        _check_description(desc)
        super().__init__(oid, size, desc)

    def __hash__(self) -> int:
        return hash((self.oid, self.size, tuple(self.description)))

    @property
    def sha256(self) -> str:
        """The bare hex digest."""
        return self.oid[len("sha256:") :]

    @property
    def tensors(self) -> list[Tensor]:
        return [Tensor.parse(v) for k, v in self.description if k == "tensor"]

    def get(self, key: str) -> str | None:
        """The value of a single-valued description key."""
        return next((v for k, v in self.description if k == key), None)

    def to_text(self) -> str:
        lines = [VERSION_LINE, f"oid {self.oid}", f"size {self.size}"]
        lines += [f"{k} {v}" for k, v in self.description]
        return "\n".join(lines) + "\n"

    def to_bytes(self) -> bytes:
        return self.to_text().encode("utf-8")

    @classmethod
    def parse(cls, data: str | bytes) -> Pointer:
        """Strict parse; PointerError says what is wrong and on which line."""
        text = _decode(data)
        if "\r" in text:
            lineno = text[: text.index("\r")].count("\n") + 1
            raise PointerError(f"line {lineno}: carriage return (pointers use LF line endings only)")
        if not text:
            raise PointerError("empty file")
        if not text.endswith("\n"):
            raise PointerError(f"line {text.count(chr(10)) + 1}: missing final newline")
        lines = text[:-1].split("\n")
        _parse_version(lines[0])
        if len(lines) < 3:
            raise PointerError(f"line {len(lines) + 1}: missing {'oid' if len(lines) < 2 else 'size'} line")
        oid = _field(lines[1], 2, "oid")
        if not _OID.match(oid):
            raise PointerError(f"line 2: oid {oid!r} is not sha256:<64 lowercase hex digits>")
        size = _field(lines[2], 3, "size")
        if not _SIZE.match(size):
            raise PointerError(f"line 3: size {size!r} is not a decimal number without leading zeros")
        description: list[tuple[str, str]] = []
        seen: set[str] = set()
        for number, line in enumerate(lines[3:], start=4):
            key, sep, value = line.partition(" ")
            if not sep:
                raise PointerError(f"line {number}: expected '<key> <value>', got {line!r}")
            try:
                check_description_line(key, value)
            except PointerError as exc:
                raise PointerError(f"line {number}: {exc}") from None
            if key in seen and key not in REPEATABLE_KEYS:
                raise PointerError(f"line {number}: key {key!r} appears more than once")
            seen.add(key)
            description.append((key, value))
        return cls(oid, int(size), description)


def _decode(data: str | bytes) -> str:
    if isinstance(data, str):
        if len(data) > MAX_POINTER_SIZE:  # characters <= bytes: a cheap first bound
            raise PointerError(f"{len(data)} characters: larger than {MAX_POINTER_SIZE} bytes, not a pointer")
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_POINTER_SIZE:
        raise PointerError(f"{len(data)} bytes: larger than {MAX_POINTER_SIZE}, not a pointer")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PointerError(f"line {line}: not valid UTF-8") from None


def _parse_version(line: str) -> None:
    if line == VERSION_LINE:
        return
    key, _, value = line.partition(" ")
    if key == "version" and value == LFS_VERSION:
        raise PointerError("line 1: this is a Git LFS pointer, not a gitmld one")
    if key == "version" and _VERSION_WORD.match(value):
        raise UnsupportedPointerVersion(value)
    raise PointerError(f"line 1: expected {VERSION_LINE!r}, got {line[:80]!r}")


def _field(line: str, number: int, key: str) -> str:
    got, sep, value = line.partition(" ")
    if got != key or not sep:
        raise PointerError(f"line {number}: expected '{key} <value>', got {line[:80]!r}")
    return value


def looks_like_pointer(data: bytes | bytearray) -> bool:
    """Cheap test: do these bytes start like a gitmld pointer (any version) and are small enough?

    Needs at least the first 15 bytes; a True answer still needs `Pointer.parse` to confirm.
    """
    return len(data) <= MAX_POINTER_SIZE and bytes(data[: len(VERSION_PREFIX)]) == VERSION_PREFIX


# -- Git LFS pointers: recognised, never produced --------------------------------------------
MAX_LFS_POINTER_SIZE = 1024  # git-lfs's own blob size limit for pointers


class LfsPointer(Record):
    __slots__ = ("oid", "size")
    oid: str  # "sha256:<hex>"
    size: int

    def __init__(self, oid: str, size: int) -> None:
        super().__init__(oid, size)


def is_lfs_pointer(data: bytes | str) -> bool:
    """True for anything that starts like a Git LFS pointer and is small enough to be one."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return len(data) <= MAX_LFS_POINTER_SIZE and bytes(data[: len(LFS_PREFIX)]) == LFS_PREFIX


def parse_lfs_pointer(data: bytes | str) -> LfsPointer:
    """Parse a Git LFS v1 pointer (enough to name its object in messages)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_LFS_POINTER_SIZE:
        raise PointerError(f"{len(raw)} bytes: too large for a Git LFS pointer")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PointerError("Git LFS pointer is not valid UTF-8") from None
    lines = text.split("\n")
    if not lines or lines[0] != f"version {LFS_VERSION}":
        raise PointerError("line 1: not a Git LFS pointer")
    values: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        if key:
            values[key] = value
    oid, size = values.get("oid", ""), values.get("size", "")
    if not re.match(r"sha256:[0-9a-f]{64}\Z", oid):
        raise PointerError(f"Git LFS pointer with bad oid {oid!r}")
    if not _SIZE.match(size):
        raise PointerError(f"Git LFS pointer with bad size {size!r}")
    return LfsPointer(oid, int(size))
