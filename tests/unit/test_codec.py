"""Chunk and blob codec: round trips, codec choice, and every way a blob can lie."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import blake3
import numpy as np
import pytest
from gitmld.daemon.store import codec
from gitmld.daemon.store.codec import CorruptBlob, CorruptChunk, UnsupportedVersion
from gitmld.daemon.store.keys import RepoKeys
from hypothesis import given, settings
from hypothesis import strategies as st

KEYS = RepoKeys.generate()
OTHER = RepoKeys.generate()


def bf16(n: int, seed: int = 0, sigma: float = 0.02) -> bytes:
    """bf16 bit patterns of Normal(0, sigma) values, like real weights."""
    u = (np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * np.float32(sigma)).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()


def roundtrip(plain: bytes, hint: str = "", level: int = 3) -> bytes:
    cid = codec.chunk_id(KEYS, plain)
    blob = codec.encode_chunk(KEYS, cid, plain, hint, level)
    assert codec.decode_chunk(KEYS, cid, blob) == plain
    return blob


SAMPLES = {
    "empty": b"",
    "one": b"x",
    "zeros": bytes(70_000),
    "text": b"the quick brown fox " * 3000,
    "random": random.Random(0).randbytes(65_536),
    "bf16": bf16(40_000),
}


@pytest.mark.parametrize("hint", ["", "bf16", "f16", "f32"])
@pytest.mark.parametrize("name", list(SAMPLES))
def test_roundtrip(name: str, hint: str) -> None:
    roundtrip(SAMPLES[name], hint)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from(["", "bf16", "f16", "f32"]), st.sampled_from([1, 3]))
def test_roundtrip_any_bytes(plain: bytes, hint: str, level: int) -> None:
    roundtrip(plain, hint, level)


def test_f32_and_odd_lengths() -> None:
    f32 = np.random.default_rng(1).standard_normal(20_000).astype("<f4").tobytes()
    assert len(roundtrip(f32, "f32")) < len(f32)  # the exponent plane pays
    roundtrip(bf16(1001)[:-1] + b"z", "bf16")  # odd length: not grouped, still exact
    roundtrip(f32[:-2], "f32")


def test_codec_choice() -> None:
    overhead = 1 + 12 + 16 + 5
    assert len(roundtrip(SAMPLES["random"])) == len(SAMPLES["random"]) + overhead  # stored raw
    assert len(roundtrip(SAMPLES["random"], "bf16")) == len(SAMPLES["random"]) + overhead  # no plane pays
    assert len(roundtrip(SAMPLES["zeros"])) < 200
    weights = bf16(200_000)
    plain = len(roundtrip(weights, "")) / len(weights)
    grouped = len(roundtrip(weights, "bf16")) / len(weights)
    assert grouped < 0.70 < plain  # byte grouping is what gets bf16 under 0.70


def test_chunk_id_is_keyed() -> None:
    data = b"some chunk"
    cid = codec.chunk_id(KEYS, data)
    assert cid == blake3.blake3(data, key=KEYS.id_key).digest() and len(cid) == 32
    assert cid != codec.chunk_id(OTHER, data)
    assert cid != blake3.blake3(data).digest()


def test_encryption_is_randomised() -> None:
    plain = SAMPLES["text"]
    cid = codec.chunk_id(KEYS, plain)
    a, b = (codec.encode_chunk(KEYS, cid, plain) for _ in range(2))
    assert a != b
    assert codec.decode_chunk(KEYS, cid, a) == codec.decode_chunk(KEYS, cid, b) == plain
    assert b"quick brown" not in a


def flips(blob: bytes) -> list[bytes]:
    out = []
    for i in range(len(blob)):
        for bit in range(8):
            b = bytearray(blob)
            b[i] ^= 1 << bit
            out.append(bytes(b))
    return out


def test_every_bit_flip_is_detected() -> None:
    plain = b"tiny chunk payload"
    cid = codec.chunk_id(KEYS, plain)
    blob = codec.encode_chunk(KEYS, cid, plain)
    for bad in flips(blob):
        with pytest.raises(CorruptChunk) as e:
            codec.decode_chunk(KEYS, cid, bad)
        assert cid.hex()[:16] in str(e.value)


@pytest.mark.parametrize("hint", ["", "bf16"])
def test_bit_flips_in_large_blobs(hint: str) -> None:
    plain = bf16(30_000, seed=3)
    cid = codec.chunk_id(KEYS, plain)
    blob = codec.encode_chunk(KEYS, cid, plain, hint)
    rng = random.Random(4)
    for _ in range(200):
        bad = bytearray(blob)
        bad[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        with pytest.raises(CorruptChunk):
            codec.decode_chunk(KEYS, cid, bytes(bad))


def test_truncation_and_extension_are_detected() -> None:
    plain = SAMPLES["text"][:300]
    cid = codec.chunk_id(KEYS, plain)
    blob = codec.encode_chunk(KEYS, cid, plain)
    for n in range(len(blob)):
        with pytest.raises(CorruptChunk):
            codec.decode_chunk(KEYS, cid, blob[:n])
    with pytest.raises(CorruptChunk):
        codec.decode_chunk(KEYS, cid, blob + b"\0")


def test_swapped_blobs_and_wrong_keys_are_detected() -> None:
    a, b = b"chunk A" * 100, b"chunk B" * 100
    ca, cb = codec.chunk_id(KEYS, a), codec.chunk_id(KEYS, b)
    ba, bb = codec.encode_chunk(KEYS, ca, a), codec.encode_chunk(KEYS, cb, b)
    with pytest.raises(CorruptChunk, match="authentication failed"):
        codec.decode_chunk(KEYS, ca, bb)
    with pytest.raises(CorruptChunk, match=cb.hex()[:16]):
        codec.decode_chunk(KEYS, cb, ba)
    with pytest.raises(CorruptChunk):
        codec.decode_chunk(OTHER, ca, ba)


def test_content_must_match_its_id() -> None:
    a, b = b"chunk A" * 100, b"chunk B" * 100
    wrong = codec.encode_chunk(KEYS, codec.chunk_id(KEYS, a), b)  # a buggy writer
    with pytest.raises(CorruptChunk, match="does not match its id"):
        codec.decode_chunk(KEYS, codec.chunk_id(KEYS, a), wrong)


def test_unknown_version_asks_for_a_newer_gitmld() -> None:
    plain = b"payload"
    cid = codec.chunk_id(KEYS, plain)
    blob = codec.encode_chunk(KEYS, cid, plain)
    future = bytes([2]) + random.Random(1).randbytes(len(blob) - 1)
    with pytest.raises(UnsupportedVersion, match="newer gitmld"):
        codec.decode_chunk(KEYS, cid, future)
    with pytest.raises(CorruptChunk, match="version byte damaged"):
        codec.decode_chunk(KEYS, cid, bytes([2]) + blob[1:])


def test_errors_never_contain_keys() -> None:
    plain = b"x" * 100
    cid = codec.chunk_id(KEYS, plain)
    blob = codec.encode_chunk(KEYS, cid, plain)
    for bad in [blob[:5], bytes([9]) + blob[1:], blob[:-1] + bytes([blob[-1] ^ 1])]:
        with pytest.raises(codec.CodecError) as e:
            codec.decode_chunk(KEYS, cid, bad)
        for key in (KEYS.data_key, KEYS.id_key, KEYS.name_key):
            assert key.hex() not in str(e.value) and key.hex()[:16] not in repr(e.value)


def test_threads_share_nothing_mutable() -> None:
    chunks = [bf16(8192, seed=i) for i in range(32)] + [SAMPLES["text"], SAMPLES["random"]]

    def work(plain: bytes) -> bool:
        cid = codec.chunk_id(KEYS, plain)
        blobs = [codec.encode_chunk(KEYS, cid, plain, h) for h in ("", "bf16")]
        return all(codec.decode_chunk(KEYS, cid, b) == plain for b in blobs)

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(work, chunks * 3))


# -- sealed blobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("plain", [b"", b"{}", b'{"chunks": []}' * 5000, random.Random(2).randbytes(3000)])
def test_blob_roundtrip(plain: bytes) -> None:
    blob = codec.seal_blob(KEYS, b"manifest", plain)
    assert codec.open_blob(KEYS, b"manifest", blob) == plain
    if len(plain) > 10_000:
        assert len(blob) < len(plain) // 10


def test_blob_kind_is_bound() -> None:
    blob = codec.seal_blob(KEYS, b"manifest", b"data")
    with pytest.raises(CorruptBlob, match="index"):
        codec.open_blob(KEYS, b"index", blob)
    with pytest.raises(CorruptBlob):
        codec.open_blob(OTHER, b"manifest", blob)


def test_a_chunk_is_not_a_blob_and_back() -> None:
    plain = b"x" * 100
    cid = codec.chunk_id(KEYS, plain)
    with pytest.raises(CorruptBlob):
        codec.open_blob(KEYS, cid, codec.encode_chunk(KEYS, cid, plain))
    with pytest.raises(CorruptChunk):
        codec.decode_chunk(KEYS, cid, codec.seal_blob(KEYS, cid, plain))


def test_blob_corruption() -> None:
    blob = codec.seal_blob(KEYS, b"index", b"segment bytes")
    for bad in flips(blob):
        with pytest.raises(CorruptBlob):
            codec.open_blob(KEYS, b"index", bad)
    for n in range(len(blob)):
        with pytest.raises(CorruptBlob):
            codec.open_blob(KEYS, b"index", blob[:n])
    with pytest.raises(UnsupportedVersion):
        codec.open_blob(KEYS, b"index", bytes([7]) + random.Random(3).randbytes(len(blob) - 1))
