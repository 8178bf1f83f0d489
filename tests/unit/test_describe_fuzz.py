"""Mutated and truncated files of every format: describing never raises and stays valid."""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
import zipfile

import numpy as np
import pytest
from gitmld.daemon.describe.readers import BytesReader
from gitmld.daemon.describe.registry import describe
from gitmld.proto.pointer import Pointer


def samples() -> dict[str, bytes]:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "__metadata__": {"a": "b"}})
    npy, npz = io.BytesIO(), io.BytesIO()
    np.save(npy, np.zeros((2, 3), np.float32))
    np.savez_compressed(npz, a=np.zeros(3), b=np.ones((2, 2), np.int8))
    checkpoint = io.BytesIO()
    with zipfile.ZipFile(checkpoint, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": np.zeros(2), "b": [1, 2.5, "x"]}, protocol=2))
        z.writestr("archive/version", "3\n")
    name = b"w"
    gguf = (
        b"GGUF"
        + struct.pack("<IQQ", 3, 1, 1)
        + struct.pack("<Q", 3)
        + b"k.v"
        + struct.pack("<IQ", 8, 2)
        + b"hi"
        + struct.pack("<Q", len(name))
        + name
        + struct.pack("<I2QIQ", 2, 4, 4, 0, 0)
        + b"\0" * 64
    )
    weight = b"\x08\x02\x08\x02\x10\x01\x42\x01W"  # TensorProto dims 2, 2, FLOAT, name "W"
    graph = b"\x2a" + bytes([len(weight)]) + weight  # GraphProto.initializer
    onnx = b"\x08\x07\x12\x04test\x3a" + bytes([len(graph)]) + graph + b"\x42\x02\x10\x11"  # opset 17
    return {
        "safetensors": struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16,
        "npy": npy.getvalue(),
        "npz": npz.getvalue(),
        "pytorch-like": checkpoint.getvalue(),
        "pickle": pickle.dumps({"m": np.zeros((2, 2)), "s": {1, 2}, "t": (None, True)}, protocol=4),
        "pickle0": pickle.dumps({"m": [1, 2], "n": "x"}, protocol=0),
        "gguf": gguf,
        "onnx": onnx,
    }


@pytest.mark.parametrize("kind", sorted(samples()))
def test_mutations_never_break_describe(kind):
    original = samples()[kind]
    assert dict(describe(BytesReader(original)))["format"] != "unknown"
    rng = random.Random(kind)
    for _ in range(60):
        data = bytearray(original)
        action = rng.randrange(3)
        if action == 0:
            data = data[: rng.randrange(len(data))]
        elif action == 1:
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            at = rng.randrange(len(data))
            data[at : at + 8] = rng.choice([b"\xff" * 8, struct.pack("<Q", 2**62), struct.pack("<I", 2**31)])
        reader = BytesReader(bytes(data))
        lines = describe(reader)
        assert lines[0][0] == "format"
        Pointer("sha256:" + "0" * 64, len(data), lines)  # raises unless every line is valid
        assert reader.bytes_read < 4 * 2**20
