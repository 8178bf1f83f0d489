"""ONNX models written with onnx.helper, read without the onnx package; hostile protobuf."""

from __future__ import annotations

import numpy as np
import pytest
from gitmld.daemon.describe.base import DescribeError
from gitmld.daemon.describe.onnx import OnnxDescriber
from gitmld.daemon.describe.readers import BytesReader
from gitmld.daemon.describe.registry import describe

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def model_bytes(big: int = 256) -> bytes:
    weights = [
        numpy_helper.from_array(np.zeros((4, 3), np.float32), "W"),
        numpy_helper.from_array(np.zeros((4,), np.float16), "B"),
        numpy_helper.from_array(np.zeros((big, big), np.float32), "big"),
    ]
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )  # fmt: skip
    model = helper.make_model(
        graph,
        producer_name="pytorch",
        producer_version="2.1",
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
    )
    helper.set_model_props(model, {"author": "team"})
    return model.SerializeToString()


def test_model_written_by_onnx():
    data = model_bytes()
    reader = BytesReader(data)
    lines = describe(reader)
    d = dict(lines)
    assert d["format"] == "onnx" and d["opset"] == "17" and d["opset-domains"] == "ai.onnx.ml=3"
    assert d["producer"] == "pytorch 2.1" and d["graph"] == "tiny"
    assert d["ops"] == "Gemm:1,Relu:1" and d["nodes"] == "2"
    assert d["inputs"] == "x:F32[batchx3],mask:I64[scalar]" and d["outputs"] == "y:F32[batchx4]"
    assert d["initializers"] == "3" and d["params"] == str(12 + 4 + 256 * 256) and d["metadata"] == "author=team"
    assert [v for k, v in lines if k == "tensor"] == ["B F16 4", "W F32 4x3", "big F32 256x256"]
    assert reader.bytes_read < len(data) // 10  # raw_data was skipped, not read


def test_deterministic():
    assert describe(BytesReader(model_bytes())) == describe(BytesReader(model_bytes()))


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\x08\x07\x12" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x08\x07\x12" + b"\xff" * 9 + b"\x7f", "overflows"),
        (b"\x08\x07\x3a\xff\xff\xff\xff\x0f", "runs past"),
        (b"\x08\x07\x12\x01a\x3b", "wire type 3"),
    ],
)
def test_hostile_protobuf(data, why):
    with pytest.raises(DescribeError, match=why):
        OnnxDescriber().describe(BytesReader(data), max_tensor_lines=8)
    lines = dict(describe(BytesReader(data)))
    assert lines["note"].startswith("onnx: ")


def test_truncated_model_falls_back():
    data = model_bytes()[:-100]
    assert dict(describe(BytesReader(data)))["note"].startswith("onnx: ")
