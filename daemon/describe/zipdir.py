"""A zip's central directory read from the end of the file, and bounded access to members.

`zipfile` would do, but it reads the central directory in one piece and inflates without an
output bound; this reads only the end records, the directory (capped) and the members asked
for, and never inflates more than the caller allows (zip bombs stay small).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .base import DescribeError, Reader
from .readers import BytesReader, SliceReader, Truncated

ZIP_MAGIC = b"PK\x03\x04"
MAX_ENTRIES = 1_000_000
MAX_DIRECTORY = 64 * 1024 * 1024
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
STORED, DEFLATED = 0, 8


@dataclass(frozen=True, slots=True)
class ZipEntry:
    name: str
    method: int
    flags: int
    compressed_size: int
    size: int
    local_offset: int


def _find_eocd(reader: Reader) -> tuple[int, bytes]:
    for span in (4096, 65536 + _EOCD.size + _EOCD64_LOCATOR.size):
        start = max(0, reader.size - span)
        tail = reader.read(start, reader.size - start)
        at = tail.rfind(b"PK\x05\x06")
        while at >= 0:
            if at + _EOCD.size <= len(tail):
                return start + at, tail
            at = tail.rfind(b"PK\x05\x06", 0, at)
        if start == 0:
            break
    raise DescribeError("zip end-of-central-directory record not found")


def _zip64_fields(extra: bytes, values: list[int]) -> list[int]:
    """Replace the 0xFFFFFFFF fields (usize, csize, offset in that order) from the zip64 extra."""
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, i)
        body = extra[i + 4 : i + 4 + length]
        if tag == 0x0001:
            j = 0
            for k, v in enumerate(values):
                if v == 0xFFFFFFFF and j + 8 <= len(body):
                    values[k] = struct.unpack_from("<Q", body, j)[0]
                    j += 8
            break
        i += 4 + length
    return values


def read_directory(reader: Reader) -> list[ZipEntry]:
    """All entries of the central directory (names decoded as UTF-8 with replacement)."""
    at, _ = _find_eocd(reader)
    eocd = _EOCD.unpack(reader.read(at, _EOCD.size))
    count, cd_size, cd_offset = eocd[4], eocd[5], eocd[6]
    if 0xFFFF in (count,) or 0xFFFFFFFF in (cd_size, cd_offset):
        loc_at = at - _EOCD64_LOCATOR.size
        loc = reader.read(loc_at, _EOCD64_LOCATOR.size) if loc_at >= 0 else b""
        if len(loc) != _EOCD64_LOCATOR.size or loc[:4] != b"PK\x06\x07":
            raise DescribeError("zip64 end-of-central-directory locator missing")
        rec = reader.read(_EOCD64_LOCATOR.unpack(loc)[2], _EOCD64.size)
        if len(rec) != _EOCD64.size or rec[:4] != b"PK\x06\x06":
            raise DescribeError("zip64 end-of-central-directory record missing")
        fields = _EOCD64.unpack(rec)
        count, cd_size, cd_offset = fields[7], fields[8], fields[9]
    if count > MAX_ENTRIES or cd_size > MAX_DIRECTORY:
        raise DescribeError(f"zip directory too large ({count} entries, {cd_size} bytes)")
    if cd_offset + cd_size > reader.size:
        raise Truncated("zip central directory runs past the end of the file")
    raw = reader.read(cd_offset, cd_size)
    entries: list[ZipEntry] = []
    i = 0
    while len(entries) < count:
        if i + _CENTRAL.size > len(raw) or raw[i : i + 4] != b"PK\x01\x02":
            raise DescribeError("zip central directory entry is malformed")
        f = _CENTRAL.unpack_from(raw, i)
        flags, method, csize, usize = f[3], f[4], f[8], f[9]
        name_len, extra_len, comment_len, offset = f[10], f[11], f[12], f[16]
        name_raw = raw[i + _CENTRAL.size : i + _CENTRAL.size + name_len]
        extra = raw[i + _CENTRAL.size + name_len : i + _CENTRAL.size + name_len + extra_len]
        usize, csize, offset = _zip64_fields(extra, [usize, csize, offset])
        entries.append(ZipEntry(name_raw.decode("utf-8", "replace"), method, flags, csize, usize, offset))
        i += _CENTRAL.size + name_len + extra_len + comment_len
    return entries


def data_offset(reader: Reader, entry: ZipEntry) -> int:
    """Where a member's (possibly compressed) bytes start, from its local header."""
    head = reader.read(entry.local_offset, _LOCAL.size)
    if len(head) != _LOCAL.size or head[:4] != ZIP_MAGIC:
        raise DescribeError(f"zip local header of {entry.name[:64]!r} is missing")
    f = _LOCAL.unpack(head)
    start = entry.local_offset + _LOCAL.size + f[9] + f[10]
    if start + entry.compressed_size > reader.size:
        raise Truncated(f"zip member {entry.name[:64]!r} runs past the end of the file")
    return start


def open_member(reader: Reader, entry: ZipEntry, *, max_inflate: int) -> Reader:
    """A reader over one member: a window of the file when stored, else bounded inflation.

    A deflated member is inflated only up to `max_inflate` bytes; past that the returned
    reader simply ends there (callers see a truncated member, not a zip bomb).
    """
    if entry.flags & 1:
        raise DescribeError(f"zip member {entry.name[:64]!r} is encrypted")
    start = data_offset(reader, entry)
    if entry.method == STORED:
        return SliceReader(reader, start, entry.compressed_size)
    if entry.method != DEFLATED:
        raise DescribeError(f"zip member {entry.name[:64]!r} uses compression method {entry.method}")
    return BytesReader(inflate_prefix(reader, start, entry.compressed_size, max_inflate))


def inflate_prefix(reader: Reader, start: int, length: int, limit: int) -> bytes:
    """At most `limit` bytes of raw deflate data at [start, start+length), reading in chunks.

    Input is bounded too (limit + 1 MiB), so a stream of empty blocks cannot read forever.
    """
    d = zlib.decompressobj(-15)
    out = bytearray()
    pos, end = start, start + min(length, limit + (1 << 20))
    step = 4096  # small first: a header needs a few hundred bytes; grows for whole members
    try:
        while pos < end and len(out) < limit and not d.eof:
            chunk = reader.read(pos, min(step, end - pos))
            step = min(step * 2, 1 << 20)
            if not chunk:
                break
            pos += len(chunk)
            out += d.decompress(chunk, limit - len(out))
            while d.unconsumed_tail and len(out) < limit:
                out += d.decompress(d.unconsumed_tail, limit - len(out))
    except zlib.error as exc:
        raise DescribeError(f"bad deflate data: {exc}") from None
    return bytes(out)
