"""NumPy .npy and .npz headers, compressed members, object arrays and hostile headers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from gitmld.daemon.describe.base import DescribeError
from gitmld.daemon.describe.numpy_files import NpyDescriber
from gitmld.daemon.describe.readers import BytesReader, FileReader
from gitmld.daemon.describe.registry import describe

from tests.unit.zip_builders import deflated_zeros, one_deflated_member_zip


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_npy():
    assert describe(BytesReader(npy(np.zeros((3, 4), np.float16)))) == [
        ("format", "npy"),
        ("npy-version", "1.0"),
        ("dtype", "F16"),
        ("shape", "3x4"),
        ("elements", "12"),
    ]
    d = dict(describe(BytesReader(npy(np.asfortranarray(np.zeros((2, 2), ">i4"))))))
    assert d["dtype"] == "I32_BE" and d["fortran-order"] == "true"
    assert dict(describe(BytesReader(npy(np.array(["ab", "c"])))))["dtype"] == "U2_STR"


def test_object_npy_is_described_not_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    d = dict(describe(BytesReader(npy(np.array([Evil()], dtype=object)))))
    assert d["dtype"] == "OBJECT" and d["shape"] == "1"
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz(tmp_path, save):
    path = tmp_path / "a.npz"
    save(path, w=np.zeros((2, 2)), b=np.arange(3, dtype=np.int32), big=np.zeros((512, 512), np.float32))
    with FileReader(path) as r:
        lines = describe(r)
        assert r.bytes_read < 64 * 1024
    d = dict(lines)
    assert d["format"] == "npz" and d["arrays"] == "3" and d["elements"] == str(4 + 3 + 512 * 512)
    assert ("compression" in d) == (save is np.savez_compressed)
    assert [v for k, v in lines if k == "tensor"] == ["b I32 3", "big F32 512x512", "w F64 2x2"]


def test_npz_bomb_member_is_only_inflated_to_its_header():
    full = npy(np.zeros(16, np.uint8))
    header = full[: full.index(b"\n") + 1]
    body = deflated_zeros(header, 64)
    reader = BytesReader(one_deflated_member_zip(b"x.npy", body, 64 * 2**20))
    assert ("tensor", "x U8 16") in describe(reader)
    assert reader.bytes_read < 256 * 1024


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100, "truncated"),
        (b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little"), "exceeds"),
        (b"\x93NUMPY\x01\x00\x10\x00" + b"__import__('os')", "not a Python literal"),
        (b"\x93NUMPY\x01\x00\x20\x00" + b"{'descr':'<f4','shape':(-1,)}   ", "bad shape"),
        (b"\x93NUMPY\x09\x00\x00\x00", "version 9"),
    ],
)
def test_hostile_npy(data, why):
    with pytest.raises(DescribeError, match=why):
        NpyDescriber().describe(BytesReader(data), max_tensor_lines=8)
    assert dict(describe(BytesReader(data)))["note"].startswith("npy: ")
