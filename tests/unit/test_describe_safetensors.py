"""safetensors: files written by the safetensors library, hostile headers, the 10 GiB figure."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from gitmld.daemon.describe.base import DescribeError
from gitmld.daemon.describe.readers import BytesReader, FileReader, HeadTailReader
from gitmld.daemon.describe.registry import describe
from gitmld.daemon.describe.safetensors import SafetensorsDescriber

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def raw_file(header: dict, data_size: int = 0) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + b"\0" * data_size


def test_real_file(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int64), "s": np.zeros((), np.float16)}
    safetensors_numpy.save_file(tensors, str(path), metadata={"format": "pt", "note": "a,b=c"})
    with FileReader(path) as r:
        lines = describe(r)
    assert lines == [
        ("format", "safetensors"),
        ("tensors", "3"),
        ("params", "11"),
        ("dtypes", "F16,F32,I64"),
        ("metadata", "format=pt,note=a%2Cb=c"),
        ("tensor", "b I64 4"),
        ("tensor", "s F16 scalar"),
        ("tensor", "w F32 2x3"),
    ]


def test_digests_from_the_store_are_appended():
    data = raw_file({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, 2)
    lines = describe(BytesReader(data), tensor_digests={"a": "0123456789abcdef"})
    assert ("tensor", "a U8 2 0123456789abcdef") in lines


def test_header_order_does_not_change_the_description():
    a = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    b = {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}
    one = raw_file({"a": a, "b": b, "__metadata__": {"x": "1", "y": "2"}}, 8)
    two = raw_file({"__metadata__": {"y": "2", "x": "1"}, "b": b, "a": a}, 8)
    assert describe(BytesReader(one)) == describe(BytesReader(two)) == describe(BytesReader(one))


def test_many_tensors_become_a_summary():
    header = {
        f"model.layers.{i}.w": {"dtype": "BF16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]} for i in range(5)
    }
    lines = dict(describe(BytesReader(raw_file(header, 10)), max_tensor_lines=3))
    assert lines["tensor-groups"] == "model.layers.*:5" and "tensor" not in lines


def test_offsets_that_disagree_are_noted():
    data = raw_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 3]}}, 3)
    assert "disagree" in dict(describe(BytesReader(data)))["note"]


@pytest.mark.parametrize(
    "data, why",
    [
        (struct.pack("<Q", 2**63) + b"{}" + b"\0" * 64, "exceeds the file size"),
        (struct.pack("<Q", 500) + b'{"a":', "exceeds the file size"),
        (struct.pack("<Q", 20) + b"{" + b"\xff" * 19, "not JSON"),
        (struct.pack("<Q", 200_002) + b"[" * 100_001 + b"]" * 100_001, "not JSON"),
        (struct.pack("<Q", 15) + b'{"a":1, "a": 2}', "repeats"),
        (struct.pack("<Q", 13) + b'{"a":{"x":1}}', "lacks a dtype"),
    ],
)
def test_hostile_headers_raise_describe_error(data, why):
    with pytest.raises(DescribeError, match=why):
        SafetensorsDescriber().describe(BytesReader(data), max_tensor_lines=8)


def test_hostile_header_never_fails_describe():
    body = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    nested = struct.pack("<Q", len(body)) + body
    lines = dict(describe(BytesReader(nested)))
    assert lines["format"] == "unknown" and lines["note"].startswith("safetensors: ")
    absurd = dict(describe(BytesReader(struct.pack("<Q", 2**63) + b"{}")))
    assert absurd["format"] == "unknown"  # not even sniffed as safetensors


def test_head_only_is_enough():
    data = raw_file({"a": {"dtype": "F32", "shape": [4096], "data_offsets": [0, 16384]}}, 16384)
    reader = HeadTailReader(data[:8192], b"", len(data))
    assert ("tensor", "a F32 4096") in describe(reader)


def test_ten_gib_file_reads_under_one_mib(tmp_path):
    """320 BF16 4096x4096 tensors = 10 GiB of (sparse) data; only the header is read."""
    header, offset = {}, 0
    for i in range(320):
        size = 4096 * 4096 * 2
        header[f"model.layers.{i // 8}.p{i % 8}.weight"] = {
            "dtype": "BF16",
            "shape": [4096, 4096],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    assert offset == 10 * 2**30
    head = raw_file(header)
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + offset)
    with FileReader(path) as r:
        lines = dict(describe(r))
        assert r.size > 10 * 2**30
        assert r.bytes_read < 2**20, r.bytes_read
    assert lines["tensors"] == "320" and lines["params"] == str(320 * 4096 * 4096)
    print(f"safetensors 10 GiB: read {r.bytes_read} bytes")
