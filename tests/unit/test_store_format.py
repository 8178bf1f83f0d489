"""The bucket formats of docs/FORMAT.md: packs, index segments, manifests, and their checks."""

from __future__ import annotations

import os
import struct

import pytest
from gitmld.daemon.store import codec, pack, remote_index
from gitmld.daemon.store.errors import CorruptObject, InvalidRequest, UnsupportedFormat
from gitmld.daemon.store.keys import RepoKeys
from gitmld.daemon.store.manifest import (
    RECORD,
    ManifestBuilder,
    decode_plain,
    oid_bytes,
    open_sealed,
    remote_name,
)

KEYS = RepoKeys.generate()
PACK_ID = bytes(range(16))


def build_pack(chunks: list[bytes]) -> tuple[bytes, list[pack.PackEntry]]:
    body = bytearray()
    entries = []
    for plain in chunks:
        cid = codec.chunk_id(KEYS, plain)
        blob = codec.encode_chunk(KEYS, cid, plain)
        entries.append(pack.PackEntry(cid, len(body), len(blob), len(plain)))
        body += blob
    return bytes(body) + pack.build_tail(KEYS, PACK_ID, pack.encode_entries(entries)), entries


def test_pack_describes_itself() -> None:
    chunks = [os.urandom(1000), b"a" * 5000, b""]
    data, entries = build_pack(chunks)
    assert data.endswith(pack.MAGIC)
    parsed = pack.parse_pack(KEYS, PACK_ID, data)
    assert parsed == entries
    for e, plain in zip(parsed, chunks, strict=True):
        assert codec.decode_chunk(KEYS, e.cid, data[e.offset : e.offset + e.stored_len]) == plain
    assert pack.object_name(PACK_ID) == "data/00/000102030405060708090a0b0c0d0e0f"


def test_pack_damage_is_reported_with_the_pack_name() -> None:
    data, _ = build_pack([b"x" * 100])
    name = pack.object_name(PACK_ID)
    with pytest.raises(CorruptObject, match="magic") as info:
        pack.parse_pack(KEYS, PACK_ID, data[:-1] + b"X")
    assert info.value.object == name
    damaged = bytearray(data)
    damaged[-pack.FOOTER.size - 3] ^= 1  # inside the sealed trailer
    with pytest.raises(CorruptObject, match="trailer does not verify"):
        pack.parse_pack(KEYS, PACK_ID, bytes(damaged))
    with pytest.raises(CorruptObject, match="renamed"):
        pack.parse_pack(KEYS, bytes(16), data)
    with pytest.raises(CorruptObject, match="too short"):
        pack.parse_pack(KEYS, PACK_ID, b"abc")


def test_pack_from_a_newer_gitmld_is_unsupported() -> None:
    data, _ = build_pack([b"x" * 100])
    trailer_len, _, magic = pack.FOOTER.unpack_from(data, len(data) - pack.FOOTER.size)
    newer = data[: -pack.FOOTER.size] + pack.FOOTER.pack(trailer_len, pack.PACK_VERSION + 1, magic)
    with pytest.raises(UnsupportedFormat, match="upgrade gitmld"):
        pack.parse_pack(KEYS, PACK_ID, newer)


def test_index_segment_round_trip() -> None:
    entries = [pack.PackEntry(os.urandom(32), i * 100, 100, 150) for i in range(5)]
    other = bytes(16)
    blob = remote_index.encode(KEYS, {PACK_ID: pack.encode_entries(entries), other: b""})
    sections = list(remote_index.decode(KEYS, "index/x", blob))
    assert [s[0] for s in sections] == [PACK_ID, other]
    assert list(pack.iter_entries(sections[0][1])) == entries
    assert list(pack.iter_entries(sections[1][1])) == []
    name = remote_index.new_name()
    assert name.startswith("index/") and len(name) == len("index/") + 32


def test_index_segment_damage() -> None:
    with pytest.raises(CorruptObject, match="index/bad"):
        list(remote_index.decode(KEYS, "index/bad", b"\x01" + b"\x00" * 40))
    plain = struct.pack("<BI", remote_index.INDEX_VERSION, 2) + PACK_ID + struct.pack("<I", 0)
    with pytest.raises(CorruptObject, match="truncated"):
        list(remote_index.decode(KEYS, "index/t", codec.seal_blob(KEYS, remote_index.KIND, plain)))
    newer = struct.pack("<BI", remote_index.INDEX_VERSION + 1, 0)
    with pytest.raises(UnsupportedFormat):
        list(remote_index.decode(KEYS, "index/n", codec.seal_blob(KEYS, remote_index.KIND, newer)))
    # a blob sealed as another kind does not open as an index
    with pytest.raises(CorruptObject):
        list(remote_index.decode(KEYS, "index/k", codec.seal_blob(KEYS, b"manifest", newer)))


def make_manifest() -> ManifestBuilder:
    b = ManifestBuilder()
    b.add(os.urandom(32), 10, PACK_ID, 0, 40)
    b.add(os.urandom(32), 20, bytes(16), 0, 50)
    b.add(os.urandom(32), 12, PACK_ID, 40, 44)
    return b


def test_manifest_round_trip() -> None:
    b = make_manifest()
    oid = "sha256:" + "12" * 32
    m = b.build(oid, 42, [{"name": "w", "dtype": "BF16"}], {"format": "pt"})
    assert m.pack_ids == [PACK_ID, bytes(16)]
    back = open_sealed(KEYS, m.seal(KEYS), name="manifests/x")
    assert back == m
    refs = list(back.chunks())
    assert [r.pack_id for r in refs] == [PACK_ID, bytes(16), PACK_ID]
    assert [(r.offset, r.stored_len, r.plain_len) for r in refs] == [(0, 40, 10), (0, 50, 20), (40, 44, 12)]
    assert len(back) == 3


def test_manifest_checks() -> None:
    b = make_manifest()
    oid = "sha256:" + "12" * 32
    wrong_size = b.build(oid, 43, None, None).encode_plain()
    with pytest.raises(CorruptObject, match="add up"):
        decode_plain(wrong_size, name="m")
    good = b.build(oid, 42, None, None).encode_plain()
    with pytest.raises(CorruptObject, match="wrong length"):
        decode_plain(good[:-1], name="m")
    bad_index = bytearray(good)
    struct.pack_into("<I", bad_index, len(good) - RECORD.size + 36, 7)  # pack_index of the last record
    with pytest.raises(CorruptObject, match="out of range"):
        decode_plain(bytes(bad_index), name="m")
    with pytest.raises(UnsupportedFormat):
        decode_plain(bytes([9]) + good[1:], name="m")
    with pytest.raises(CorruptObject):
        decode_plain(b"\x01\xff", name="m")


def test_oids_and_manifest_names() -> None:
    oid = "sha256:" + "ab" * 32
    assert oid_bytes(oid) == bytes.fromhex("ab" * 32)
    for bad in ("sha256:" + "AB" * 32, "sha1:" + "ab" * 20, "ab" * 32, "sha256:" + "ab" * 31):
        with pytest.raises(InvalidRequest):
            oid_bytes(bad)
    name = remote_name(KEYS, oid)
    assert name.startswith("manifests/") and "ab" * 32 not in name
    assert remote_name(RepoKeys.generate(), oid) != name  # keyed: the bucket cannot test a guess
