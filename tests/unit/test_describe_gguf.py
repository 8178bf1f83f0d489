"""GGUF files written by the gguf package, and hostile lengths and counts."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gitmld.daemon.describe.base import DescribeError
from gitmld.daemon.describe.gguf import GgufDescriber
from gitmld.daemon.describe.readers import BytesReader, FileReader
from gitmld.daemon.describe.registry import describe


def test_file_written_by_gguf(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_file_type(1)
    w.add_token_list([f"tok{i}" for i in range(2000)])
    w.add_tensor("token_embd.weight", np.zeros((2000, 8), np.float16))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with FileReader(path) as r:
        lines = describe(r)
    d = dict(lines)
    assert d["format"] == "gguf" and d["gguf-version"] == "3" and d["arch"] == "llama" and d["name"] == "tiny"
    assert d["file-type"] == "MOSTLY_F16" and "llama.context_length=128" in d["metadata"]
    assert "tokenizer.ggml.tokens=[STRING;2000]" in d["metadata"]
    assert d["dtypes"] == "F16,F32" and d["params"] == str(2000 * 8 + 64)
    assert [v for k, v in lines if k == "tensor"] == ["blk.0.attn_q.weight F32 8x8", "token_embd.weight F16 2000x8"]


def header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def kv_string(key: bytes, length: int) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, length)


def quant_file(qtype: int) -> bytes:
    name = b"w"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I2QIQ", 2, 256, 32, qtype, 0)
    return header(1, 0) + info + b"\0" * 64


def test_quant_types_and_numpy_order():
    lines = dict(describe(BytesReader(quant_file(12))))
    assert lines["dtypes"] == "Q4_K"
    assert ("tensor", "w Q4_K 32x256") in describe(BytesReader(quant_file(12)))


@pytest.mark.parametrize(
    "data, why",
    [
        (header(0, 1) + kv_string(b"general.name", 2**40), "string length count"),
        (header(2**40, 0) + b"\0" * 64, "tensor count"),
        (header(0, 2**60) + b"\0" * 64, "key/value count"),
        (b"GGUF" + struct.pack("<I", 99) + b"\0" * 16, "version 99"),
        (header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**50), "array count"),
        (header(0, 1)[:-3], "wanted"),
    ],
)
def test_hostile_gguf(data, why):
    with pytest.raises(DescribeError, match=why):
        GgufDescriber().describe(BytesReader(data), max_tensor_lines=8)
    reader = BytesReader(data)
    assert dict(describe(reader))["note"].startswith("gguf: ")
    assert reader.bytes_read < 2**20
