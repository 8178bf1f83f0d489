"""File manifests (`manifests/<keyed name of the oid>`): the chunk list that rebuilds a file.

    manifest = seal_blob(keys, b"manifest", plain)
    plain    = version:u8 header_len:u32 header[header_len]
               pack_count:u32 pack_id[16]*pack_count
               chunk_count:u32 record*chunk_count
    header   = UTF-8 JSON {"oid": "sha256:<hex>", "size": n, "tensors": [...]|null, "metadata": {...}|null}
    record   = chunk_id[32] plain_len:u32 pack_index:u32 offset:u64 stored_len:u32   (52 bytes, LE)

Every record carries its location (pack, offset, stored length) so a cold reader needs no
index. Records stay packed in one bytes object: a 50 GB file's manifest costs ~40 MB, not
a Python object per chunk.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gitmld.daemon.store import codec
from gitmld.daemon.store.errors import CorruptObject, InvalidRequest, UnsupportedFormat
from gitmld.daemon.store.keys import RepoKeys

MANIFEST_VERSION = 1
KIND = b"manifest"
PREFIX = "manifests/"
RECORD = struct.Struct("<32sIIQI")
_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<BI")
_OID = re.compile(r"sha256:([0-9a-f]{64})")


class ChunkRef(NamedTuple):
    """One chunk of a file, in file order, with where it lies in the bucket."""

    cid: bytes
    plain_len: int
    pack_id: bytes
    offset: int
    stored_len: int


def oid_bytes(oid: str) -> bytes:
    """The 32 raw SHA-256 bytes of "sha256:<64 lowercase hex>"; InvalidRequest otherwise."""
    m = _OID.fullmatch(oid)
    if m is None:
        raise InvalidRequest(f"{oid!r} is not an object id (expected sha256:<64 hex digits>)", object=oid)
    return bytes.fromhex(m.group(1))


def remote_name(keys: RepoKeys, oid: str) -> str:
    """manifests/<keyed hash>: the bucket never sees the file's plaintext hash."""
    return PREFIX + keys.object_name(oid_bytes(oid))


@dataclass(slots=True)
class Manifest:
    oid: str
    size: int
    pack_ids: list[bytes]
    records: bytes  # RECORD.size bytes per chunk
    tensors: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None

    def __len__(self) -> int:
        return len(self.records) // RECORD.size

    def chunks(self) -> Iterator[ChunkRef]:
        packs = self.pack_ids
        for cid, plain_len, pack_index, offset, stored_len in RECORD.iter_unpack(self.records):
            yield ChunkRef(cid, plain_len, packs[pack_index], offset, stored_len)

    def encode_plain(self) -> bytes:
        header = json.dumps(
            {"oid": self.oid, "size": self.size, "tensors": self.tensors, "metadata": self.metadata},
            separators=(",", ":"), sort_keys=True).encode()
        return b"".join((
            _HEAD.pack(MANIFEST_VERSION, len(header)), header,
            _U32.pack(len(self.pack_ids)), *self.pack_ids,
            _U32.pack(len(self)), self.records,
        ))

    def seal(self, keys: RepoKeys) -> bytes:
        return codec.seal_blob(keys, KIND, self.encode_plain())


@dataclass(slots=True)
class ManifestBuilder:
    """Collects chunk records during a put; the pack table is deduplicated as it grows."""

    records: bytearray = field(default_factory=bytearray)
    pack_index: dict[bytes, int] = field(default_factory=dict)

    def add(self, cid: bytes, plain_len: int, pack_id: bytes, offset: int, stored_len: int) -> None:
        idx = self.pack_index.setdefault(pack_id, len(self.pack_index))
        self.records += RECORD.pack(cid, plain_len, idx, offset, stored_len)

    def build(self, oid: str, size: int, tensors: list[dict[str, Any]] | None,
              metadata: dict[str, str] | None) -> Manifest:
        return Manifest(oid, size, list(self.pack_index), bytes(self.records), tensors, metadata)


def decode_plain(plain: bytes, *, name: str) -> Manifest:
    """Parse and check a manifest's plaintext; `name` is used in error messages."""
    view = memoryview(plain)
    try:
        version, hlen = _HEAD.unpack_from(view)
        if version > MANIFEST_VERSION:
            raise UnsupportedFormat(
                f"manifest {name} has version {version}, newer than this gitmld reads; upgrade gitmld",
                object=name)
        pos = _HEAD.size
        header = json.loads(bytes(view[pos : pos + hlen]))
        pos += hlen
        (npacks,) = _U32.unpack_from(view, pos)
        pos += 4
        pack_ids = [bytes(view[pos + 16 * i : pos + 16 * (i + 1)]) for i in range(npacks)]
        pos += 16 * npacks
        (nchunks,) = _U32.unpack_from(view, pos)
        pos += 4
        records = bytes(view[pos:])
        m = Manifest(str(header["oid"]), int(header["size"]), pack_ids, records,
                     header.get("tensors"), header.get("metadata"))
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"manifest {name} is malformed: {exc}", object=name) from exc
    if len(records) != nchunks * RECORD.size or len(pack_ids) != npacks:
        raise CorruptObject(f"manifest {name}: chunk table has the wrong length", object=name)
    total = 0
    for _cid, plain_len, pack_index, _off, _slen in RECORD.iter_unpack(records):
        if pack_index >= npacks:
            raise CorruptObject(f"manifest {name}: pack index {pack_index} out of range", object=name)
        total += plain_len
    if total != m.size:
        raise CorruptObject(f"manifest {name}: chunks add up to {total} bytes, not {m.size}", object=name)
    return m


def open_sealed(keys: RepoKeys, blob: bytes, *, name: str) -> Manifest:
    try:
        plain = codec.open_blob(keys, KIND, blob)
    except codec.UnsupportedVersion as exc:
        raise UnsupportedFormat(f"manifest {name}: {exc}; upgrade gitmld", object=name) from exc
    except codec.CorruptBlob as exc:
        raise CorruptObject(f"manifest {name} does not verify: {exc}", object=name) from exc
    return decode_plain(plain, name=name)
