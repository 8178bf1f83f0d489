"""safetensors header parsing: real files from the safetensors library, and every kind of lie."""

from __future__ import annotations

import json
import struct

import numpy as np
from gitmld.daemon.store.safetensors_layout import MAX_HEADER_LEN, header_length, parse_layout
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import TensorSpec, serialize


def st_bytes(tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file written by the library; values are (safetensors dtype name, array)."""
    specs = {
        name: TensorSpec(dtype=dtype, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes)
        for name, (dtype, a) in tensors.items()
    }
    return serialize(specs, metadata)


def raw_header(doc: object, *, pad: bytes = b"") -> bytes:
    body = json.dumps(doc).encode() + pad
    return struct.pack("<Q", len(body)) + body


def test_parses_library_written_file() -> None:
    w = np.arange(12, dtype=np.uint16).reshape(3, 4)
    b = np.ones(5, dtype=np.float32)
    data = st_bytes({"w": ("bfloat16", w), "b": ("float32", b)}, {"format": "pt"})
    layout = parse_layout(data)
    assert layout is not None
    assert layout.metadata == {"format": "pt"}
    assert {(t.name, t.dtype, t.shape, t.length) for t in layout.tensors} == {
        ("w", "BF16", (3, 4), 24),
        ("b", "F32", (5,), 20),
    }
    begins = [t.begin for t in layout.tensors]
    assert begins == sorted(begins) and begins[0] == 0
    assert layout.data_end == len(data)
    for t in layout.tensors:  # the bytes at the parsed offsets are the tensor's bytes
        blob = data[layout.data_start + t.begin : layout.data_start + t.end]
        assert blob == (w.tobytes() if t.name == "w" else b.tobytes())


def test_header_length_bounds() -> None:
    assert header_length(b"\x02\0\0\0\0\0\0\0{") == 2
    assert header_length(b"\x02\0\0\0\0\0\0") is None  # fewer than 8 bytes
    assert header_length(struct.pack("<Q", MAX_HEADER_LEN + 1) + b"{") is None
    assert header_length(struct.pack("<Q", MAX_HEADER_LEN) + b"{") == MAX_HEADER_LEN
    assert header_length(struct.pack("<Q", 1) + b"{") is None
    assert header_length(struct.pack("<Q", 10) + b"[") is None  # JSON must be an object
    assert header_length(b"\xff" * 9) is None


def test_empty_header_and_padding() -> None:
    layout = parse_layout(raw_header({}, pad=b"    "))
    assert layout is not None and layout.tensors == () and layout.metadata is None


def test_short_head_is_not_parsed() -> None:
    data = raw_header({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}})
    assert parse_layout(data[:-1]) is None
    assert parse_layout(data) is not None


GOOD = {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}


def test_rejections() -> None:
    bad_docs: list[object] = [
        [1, 2],  # not an object
        {"a": {"dtype": "F17", "shape": [2], "data_offsets": [0, 4]}},  # unknown dtype
        {"a": {"dtype": "F16", "shape": [3], "data_offsets": [0, 4]}},  # size != shape
        {"a": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}},  # begin > end
        {"a": {"dtype": "F16", "shape": [-2], "data_offsets": [0, 4]}},  # negative dim
        {"a": {"dtype": "F16", "shape": [2.0], "data_offsets": [0, 4]}},  # float dim
        {"a": {"dtype": "F16", "shape": [True, 2], "data_offsets": [0, 4]}},  # bool dim
        {"a": {"dtype": "F16", "shape": [2], "data_offsets": [0]}},  # one offset
        {"a": {"dtype": "F16", "shape": [2], "data_offsets": [-4, 0]}},
        {"a": {"dtype": "F16", "shape": [2]}},  # missing offsets
        {"a": {**GOOD, "extra": 1}},
        {"a": GOOD, "b": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}},  # overlap
        {"a": GOOD, "__metadata__": {"k": 1}},  # metadata values must be strings
        {"a": GOOD, "__metadata__": ["x"]},
        {"a": [1]},
        {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}},  # 12 bits: not whole bytes
    ]
    for doc in bad_docs:
        assert parse_layout(raw_header(doc)) is None, doc
    assert parse_layout(raw_header({"a": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}})) is not None


def test_rejects_bad_bytes() -> None:
    for body in [b"{not json}", b'{"a": 1', b'{"\xff": 1}', b"{" * 100_000 + b"}" * 100_000]:
        assert parse_layout(struct.pack("<Q", len(body)) + body) is None
    dup = b'{"a": %s, "a": %s}' % (json.dumps(GOOD).encode(), json.dumps(GOOD).encode())
    assert parse_layout(struct.pack("<Q", len(dup)) + dup) is None


def test_gaps_and_zero_length_tensors_are_allowed() -> None:
    doc = {
        "z": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [10, 14]},
    }
    layout = parse_layout(raw_header(doc))
    assert layout is not None
    assert [t.name for t in layout.tensors] == ["z", "a", "b"]
    assert layout.data_end == layout.data_start + 14


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_never_raises_on_random_bytes(data: bytes) -> None:
    assert parse_layout(data) is None or data[8:9] == b"{"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]), json_values, max_size=3))
def test_never_raises_on_random_json(doc: dict[str, object]) -> None:
    layout = parse_layout(raw_header(doc))
    if layout is not None:  # whatever passes is consistent
        for t in layout.tensors:
            assert 0 <= t.begin <= t.end
