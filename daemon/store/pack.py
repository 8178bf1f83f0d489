"""Pack objects: encoded chunk blobs followed by a sealed trailer that lists them.

    pack    = blob* trailer footer
    trailer = seal_blob(keys, b"packidx", version:u8 pack_id[16] count:u32 entry*count)
    entry   = chunk_id[32] offset:u64 stored_len:u32 plain_len:u32        (48 bytes, LE)
    footer  = trailer_len:u32 pack_version:u8 0[3] magic "GMLDPACK"      (16 bytes, LE)

The trailer makes a pack describe itself, so the index can be rebuilt from packs alone.
The same entry layout is used by index segments (remote_index.py) and the host cache.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from gitmld.daemon.store import codec
from gitmld.daemon.store.errors import CorruptObject, UnsupportedFormat
from gitmld.daemon.store.keys import RepoKeys

PACK_VERSION = 1
TRAILER_VERSION = 1
MAGIC = b"GMLDPACK"
ID_LEN = 16  # pack ids: 16 random bytes, 32 hex characters
ENTRY = struct.Struct("<32sQII")
FOOTER = struct.Struct("<IB3x8s")
_TRAILER_HEAD = struct.Struct("<B16sI")
TRAILER_KIND = b"packidx"


class PackEntry(NamedTuple):
    """Where one encoded chunk lies inside its pack."""

    cid: bytes
    offset: int
    stored_len: int
    plain_len: int


def object_name(pack_id: bytes) -> str:
    """The pack's name in the bucket: data/<first 2 hex>/<32 hex> (fans out listings)."""
    h = pack_id.hex()
    return f"data/{h[:2]}/{h}"


def encode_entries(entries: Iterable[PackEntry]) -> bytes:
    return b"".join(ENTRY.pack(*e) for e in entries)


def iter_entries(buf: bytes | memoryview) -> Iterator[PackEntry]:
    if len(buf) % ENTRY.size:
        raise ValueError(f"entry table of {len(buf)} bytes is not a multiple of {ENTRY.size}")
    for fields in ENTRY.iter_unpack(buf):
        yield PackEntry(*fields)


def build_tail(keys: RepoKeys, pack_id: bytes, entries: bytes) -> bytes:
    """Sealed trailer + footer to append after the blobs; `entries` is encode_entries output."""
    count = len(entries) // ENTRY.size
    plain = _TRAILER_HEAD.pack(TRAILER_VERSION, pack_id, count) + entries
    trailer = codec.seal_blob(keys, TRAILER_KIND, plain)
    return trailer + FOOTER.pack(len(trailer), PACK_VERSION, MAGIC)


def parse_pack(keys: RepoKeys, pack_id: bytes, data: bytes) -> list[PackEntry]:
    """The entries of a whole pack object, verified (trailer AEAD, own id, bounds)."""
    name = object_name(pack_id)
    if len(data) < FOOTER.size:
        raise CorruptObject(f"pack {name}: {len(data)} bytes is too short for a footer", object=name)
    trailer_len, version, magic = FOOTER.unpack_from(data, len(data) - FOOTER.size)
    if magic != MAGIC:
        raise CorruptObject(f"pack {name}: bad footer magic {magic!r}", object=name)
    if version > PACK_VERSION:
        raise UnsupportedFormat(
            f"pack {name} has format version {version}, newer than this gitmld reads ({PACK_VERSION});"
            " upgrade gitmld", object=name)
    body_end = len(data) - FOOTER.size - trailer_len
    if body_end < 0:
        raise CorruptObject(f"pack {name}: trailer length {trailer_len} exceeds the object", object=name)
    try:
        plain = codec.open_blob(keys, TRAILER_KIND, data[body_end : len(data) - FOOTER.size])
    except codec.UnsupportedVersion as exc:
        raise UnsupportedFormat(f"pack {name}: {exc}; upgrade gitmld", object=name) from exc
    except codec.CorruptBlob as exc:
        raise CorruptObject(f"pack {name}: trailer does not verify: {exc}", object=name) from exc
    return _parse_trailer(name, pack_id, plain, body_end)


def _parse_trailer(name: str, pack_id: bytes, plain: bytes, body_end: int) -> list[PackEntry]:
    if len(plain) < _TRAILER_HEAD.size:
        raise CorruptObject(f"pack {name}: trailer too short", object=name)
    version, own_id, count = _TRAILER_HEAD.unpack_from(plain)
    if version > TRAILER_VERSION:
        raise UnsupportedFormat(
            f"pack {name}: trailer version {version} is newer than this gitmld reads; upgrade gitmld",
            object=name)
    if own_id != pack_id:
        raise CorruptObject(f"pack {name}: trailer names pack {own_id.hex()} (object renamed?)", object=name)
    table = memoryview(plain)[_TRAILER_HEAD.size :]
    if len(table) != count * ENTRY.size:
        raise CorruptObject(f"pack {name}: trailer says {count} entries, holds {len(table)} bytes", object=name)
    entries = list(iter_entries(table))
    for e in entries:
        if e.offset + e.stored_len > body_end:
            raise CorruptObject(f"pack {name}: entry {e.cid.hex()} points past the blobs", object=name)
    return entries
