"""StreamChunker: split-independence, tensor alignment, dedup across fine-tunes, safe fallback."""

from __future__ import annotations

import itertools
import random
import struct

import blake3
import numpy as np
import pytest
from gitmld.daemon.store.chunker import DEFAULT_AVG_SIZE, Chunk, StreamChunker
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import TensorSpec, serialize

SMALL = 1024  # avg chunk size for the fast property tests: min 256, max 4096


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (round to nearest even), as gen_model.py does."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def model(seed: int, *, changed: str | None = None, extra: bool = False, n: int = 6) -> bytes:
    """A few-MiB bf16 safetensors file; ``changed`` names a tensor given other values."""
    tensors: dict[str, np.ndarray] = {}
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        tensors[f"layers.{i}.weight"] = to_bf16(rng.standard_normal((256, 1024), dtype=np.float32) * 0.02)
    tensors["norm.weight"] = to_bf16(1 + np.random.default_rng([seed, 99]).standard_normal(1024) * 0.05)
    if changed is not None:
        tensors[changed] = to_bf16(np.random.default_rng(1234).standard_normal(tensors[changed].shape) * 0.02)
    if extra:
        tensors["score.weight"] = to_bf16(np.random.default_rng(7).standard_normal((8, 1024)) * 0.02)
    specs = {
        k: TensorSpec(dtype="bfloat16", shape=list(v.shape), data_ptr=v.ctypes.data, data_len=v.nbytes)
        for k, v in tensors.items()
    }
    return serialize(specs, {"format": "pt"})


def chunk_all(
    data: bytes, pieces: list[int] | None = None, *, avg_size: int = DEFAULT_AVG_SIZE, tensor_aware: bool = True
) -> tuple[list[Chunk], StreamChunker]:
    """Chunk ``data`` fed in pieces of the given sizes, cycled (one piece when none are given)."""
    ch = StreamChunker(avg_size, tensor_aware=tensor_aware)
    out: list[Chunk] = []
    sizes = itertools.cycle(pieces or [len(data) or 1])
    pos = 0
    while pos < len(data):
        size = next(sizes)
        out += ch.feed(data[pos : pos + size])
        pos += size
    out += ch.finish()
    return out, ch


def lengths(chunks: list[Chunk]) -> list[int]:
    return [len(c.data) for c in chunks]


random_bytes = st.builds(
    lambda seed, n: random.Random(seed).randbytes(n), st.integers(0, 2**32), st.integers(0, 150_000)
)
streams = st.lists(random_bytes | st.binary(max_size=20_000), min_size=1, max_size=4).map(b"".join)


@settings(max_examples=60, deadline=None)
@given(
    streams,
    st.lists(st.integers(1, 6000), min_size=1, max_size=10).filter(lambda p: sum(p) >= 512 * len(p)),
    st.booleans(),
)
def test_boundaries_do_not_depend_on_feed_sizes(data: bytes, pieces: list[int], aware: bool) -> None:
    whole, _ = chunk_all(data, avg_size=SMALL, tensor_aware=aware)
    split, _ = chunk_all(data, pieces, avg_size=SMALL, tensor_aware=aware)
    assert b"".join(c.data for c in whole) == data
    assert lengths(split) == lengths(whole)


@pytest.fixture(scope="module")
def small_model() -> bytes:
    return model(0, n=3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 300_000), min_size=1, max_size=10).filter(lambda p: sum(p) >= 8192 * len(p)))
def test_tensor_aware_boundaries_do_not_depend_on_feed_sizes(small_model: bytes, pieces: list[int]) -> None:
    whole, ref = chunk_all(small_model, avg_size=SMALL * 16)
    split, ch = chunk_all(small_model, pieces, avg_size=SMALL * 16)
    assert lengths(split) == lengths(whole)
    assert ch.tensors == ref.tensors and ch.tensors is not None


def test_chunk_sizes_within_bounds_and_concatenate() -> None:
    data = random.Random(1).randbytes(300_000)
    chunks, ch = chunk_all(data, avg_size=4096, tensor_aware=False)
    assert b"".join(c.data for c in chunks) == data
    sizes = lengths(chunks)
    assert all(4096 // 4 <= s <= ch.max_size for s in sizes[:-1])
    assert all(c.hint == "" for c in chunks)
    assert ch.tensors is None and ch.metadata is None


def test_buffer_stays_bounded() -> None:
    data = random.Random(2).randbytes(2_000_000)
    ch = StreamChunker(4096, tensor_aware=False)
    out = 0
    for i in range(0, len(data), 10_000):
        out += sum(len(c.data) for c in ch.feed(data[i : i + 10_000]))
        assert ch.buffered < ch.max_size + 10_000
        assert out + ch.buffered == min(i + 10_000, len(data))


def test_tensor_aware_cuts_and_digests() -> None:
    data = model(0)
    chunks, ch = chunk_all(data, [100_000] * 5)
    assert ch.tensors is not None and ch.metadata == {"format": "pt"}
    (n,) = struct.unpack("<Q", data[:8])
    boundaries = {0}
    for c in chunks:
        boundaries.add(max(boundaries) + len(c.data))
    assert 8 + n in boundaries  # the header is its own chunk(s)
    for t in ch.tensors:
        body = data[t.offset : t.offset + t.length]
        assert t.offset in boundaries and t.offset + t.length in boundaries
        assert t.digest == blake3.blake3(body).hexdigest()[:16]
        assert t.dtype == "BF16"
    assert chunks[0].hint == "" and {c.hint for c in chunks[1:]} == {"bf16"}
    assert all(len(c.data) % 2 == 0 for c in chunks[1:])  # whole bf16 values only


def test_f32_cuts_hold_whole_values() -> None:
    a = np.random.default_rng(3).standard_normal(200_001).astype(np.float32)
    data = serialize({"x": TensorSpec(dtype="float32", shape=[a.size], data_ptr=a.ctypes.data, data_len=a.nbytes)})
    chunks, ch = chunk_all(data, avg_size=4096)
    assert ch.tensors is not None and [t.dtype for t in ch.tensors] == ["F32"]
    body = [c for c in chunks if c.hint == "f32"]
    assert sum(len(c.data) for c in body) == a.nbytes
    assert all(len(c.data) % 4 == 0 for c in body)


def test_finetuned_tensor_changes_only_its_chunks() -> None:
    base, ft = model(0), model(0, changed="layers.2.weight")
    a, _ = chunk_all(base)
    b, chb = chunk_all(ft)
    old = {c.data for c in a}
    new_bytes = sum(len(c.data) for c in b if c.data not in old)
    assert chb.tensors is not None
    changed = next(t for t in chb.tensors if t.name == "layers.2.weight")
    assert new_bytes == changed.length  # the header is identical, every other tensor shared


def test_grown_header_keeps_every_tensor_chunk() -> None:
    base, grown = model(0), model(0, extra=True)
    assert base[:8] != grown[:8]  # the header length changed: all data offsets shifted
    a, cha = chunk_all(base)
    b, _ = chunk_all(grown)
    new = {c.data for c in b}
    assert cha.tensors is not None
    header_len = cha.tensors[0].offset
    assert all(c.data in new for c in a[1:] if len(c.data))
    assert sum(len(c.data) for c in a if c.data not in new) <= header_len


def test_plain_cdc_would_not_dedup_a_grown_header() -> None:
    """Why tensor alignment matters: without it the shifted file shares fewer chunks."""
    base, grown = model(0), model(0, extra=True)
    aware = {c.data for c in chunk_all(grown)[0]}
    plain = {c.data for c in chunk_all(grown, tensor_aware=False)[0]}
    shared_aware = sum(len(c.data) for c in chunk_all(base)[0] if c.data in aware)
    shared_plain = sum(len(c.data) for c in chunk_all(base, tensor_aware=False)[0] if c.data in plain)
    assert shared_aware > shared_plain


def bad_header(body: bytes, tail: bytes = b"") -> bytes:
    return struct.pack("<Q", len(body)) + body + tail


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("<Q", 1 << 40) + b"{" + bytes(50_000),  # absurd N
        struct.pack("<Q", 200_000) + b"{" + bytes(50_000),  # N beyond the end of the stream
        bad_header(b'{"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]', bytes(50_000)),  # bad JSON
        bad_header(
            b'{"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},'
            b' "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}',
            bytes(50_000),
        ),  # overlapping offsets
        b"",
        b"\x01",
        b"12345678",
        random.Random(5).randbytes(50_000),
    ],
    ids=["absurd-N", "short", "bad-json", "overlap", "empty", "one-byte", "eight-bytes", "random"],
)
def test_malformed_headers_fall_back_to_plain_cdc(data: bytes) -> None:
    chunks, ch = chunk_all(data, [3, 5, 1000], avg_size=SMALL)
    plain, _ = chunk_all(data, avg_size=SMALL, tensor_aware=False)
    assert ch.tensors is None and ch.metadata is None
    assert lengths(chunks) == lengths(plain)
    assert b"".join(c.data for c in chunks) == data
    assert all(c.hint == "" for c in chunks)


def test_truncated_safetensors_keeps_bytes_but_no_tensor_list() -> None:
    data = model(0, n=2)[:-1000]
    chunks, ch = chunk_all(data, [65_536] * 4)
    assert b"".join(c.data for c in chunks) == data
    assert ch.tensors is None


def test_trailing_bytes_after_the_data_are_chunked() -> None:
    data = model(0, n=1) + b"trailer" * 100
    chunks, ch = chunk_all(data)
    assert b"".join(c.data for c in chunks) == data
    assert ch.tensors is not None and chunks[-1].hint == ""


def test_feed_after_finish_is_an_error() -> None:
    ch = StreamChunker()
    ch.finish()
    assert ch.finish() == []
    with pytest.raises(RuntimeError):
        ch.feed(b"x")
