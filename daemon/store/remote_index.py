"""Index segments in the bucket (`index/<32 hex>`): chunk id -> (pack, offset, lengths).

    segment = seal_blob(keys, b"index", version:u8 pack_count:u32 section*pack_count)
    section = pack_id[16] count:u32 entry*count          (entry: pack.ENTRY, 48 bytes)

A segment is a batch of pack trailers. It is uploaded only after every pack it names is
durable, so any chunk found in an index can be referenced by a new manifest without asking
the bucket.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterator, Mapping

from gitmld.daemon.store import codec
from gitmld.daemon.store.errors import CorruptObject, UnsupportedFormat
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.pack import ENTRY, ID_LEN

INDEX_VERSION = 1
KIND = b"index"
PREFIX = "index/"
_HEAD = struct.Struct("<BI")
_SECTION = struct.Struct("<16sI")


def new_name() -> str:
    """A fresh segment name; random, so concurrent writers never collide."""
    return PREFIX + secrets.token_hex(ID_LEN)


def encode(keys: RepoKeys, packs: Mapping[bytes, bytes]) -> bytes:
    """packs: pack id -> its entry table (pack.encode_entries output)."""
    parts = [_HEAD.pack(INDEX_VERSION, len(packs))]
    for pack_id, table in packs.items():
        parts.append(_SECTION.pack(pack_id, len(table) // ENTRY.size))
        parts.append(table)
    return codec.seal_blob(keys, KIND, b"".join(parts))


def plain_size(packs: int, table_bytes: int) -> int:
    """Plaintext size of a segment of `packs` sections holding `table_bytes` of entry tables."""
    return _HEAD.size + packs * _SECTION.size + table_bytes if packs else 0


def decode(keys: RepoKeys, name: str, blob: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(pack id, entry table) per section; CorruptObject / UnsupportedFormat naming `name`."""
    try:
        plain = codec.open_blob(keys, KIND, blob)
    except codec.UnsupportedVersion as exc:
        raise UnsupportedFormat(f"index segment {name}: {exc}; upgrade gitmld", object=name) from exc
    except codec.CorruptBlob as exc:
        raise CorruptObject(f"index segment {name} does not verify: {exc}", object=name) from exc
    return _sections(name, memoryview(plain))


def _sections(name: str, view: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    if len(view) < _HEAD.size:
        raise CorruptObject(f"index segment {name} is too short", object=name)
    version, count = _HEAD.unpack_from(view)
    if version > INDEX_VERSION:
        raise UnsupportedFormat(
            f"index segment {name} has version {version}, newer than this gitmld reads; upgrade gitmld",
            object=name)
    pos = _HEAD.size
    for _ in range(count):
        if pos + _SECTION.size > len(view):
            raise CorruptObject(f"index segment {name} is truncated", object=name)
        pack_id, n = _SECTION.unpack_from(view, pos)
        pos += _SECTION.size
        end = pos + n * ENTRY.size
        if end > len(view):
            raise CorruptObject(f"index segment {name} is truncated", object=name)
        yield pack_id, view[pos:end]
        pos = end
    if pos != len(view):
        raise CorruptObject(f"index segment {name} has {len(view) - pos} trailing bytes", object=name)
