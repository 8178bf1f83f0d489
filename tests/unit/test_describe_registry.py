"""Choosing a describer by content, plug-ins via entry points, fallbacks, budgets, determinism."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest
from gitmld.daemon.describe import registry
from gitmld.daemon.describe.base import Decline, DescribeError
from gitmld.daemon.describe.generic import HDF5_MAGIC
from gitmld.daemon.describe.readers import BytesReader, FileReader
from gitmld.daemon.describe.registry import describe, describers


@pytest.fixture(autouse=True)
def fresh_plugins():
    registry.plugin_describers.cache_clear()
    yield
    registry.plugin_describers.cache_clear()


def fmt(data: bytes) -> str:
    return dict(describe(BytesReader(data)))["format"]


def zip_of(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def tar_of() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def test_generic_sniffs():
    assert fmt(HDF5_MAGIC + b"\0" * 100) == "hdf5"
    assert fmt(b"\0" * 512 + HDF5_MAGIC + b"\0" * 100) == "hdf5"  # after a user block
    assert fmt(zip_of(**{"a.txt": b"hi"})) == "zip"
    assert fmt(gzip.compress(b"plain text, not a pickle")) == "gzip"
    assert fmt(tar_of()) == "tar"
    assert fmt(json.dumps({"a": 1}).encode()) == "json"
    assert fmt("héllo wörld\n".encode()) == "text"
    assert fmt(bytes(range(256))) == "unknown"
    assert fmt(b"") == "empty"


def test_content_not_name_decides(tmp_path):
    path = tmp_path / "model.safetensors"  # a misleading name
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.write_bytes(path.with_suffix(".npy").read_bytes())
    with FileReader(path) as r:
        assert dict(describe(r))["format"] == "npy"


def test_zip_formats_decline_to_the_next():
    npz = io.BytesIO()
    np.savez(npz, a=np.zeros(2))
    assert fmt(npz.getvalue()) == "npz"
    broken = dict(describe(BytesReader(zip_of(**{"a.npy": b"not numpy"}))))
    assert broken["format"] == "zip" and broken["note"].startswith("npz: ")  # failed -> generic + note


def test_order_is_fixed_and_generic_is_last():
    names = [d.name for d in describers()]
    assert names[:8] == ["safetensors", "gguf", "npy", "pytorch", "npz", "compressed-pickle", "pickle", "onnx"]
    assert names[-1] == "generic"


class Toy:
    name = "toy"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(b"TOY!")

    def describe(self, reader, *, max_tensor_lines: int):
        if reader.read(4, 1) == b"x":
            raise DescribeError("toy header broken")
        if reader.read(4, 1) == b"z":
            raise Decline("not mine after all")
        if reader.read(4, 1) == b"!":
            raise ZeroDivisionError
        return [("toy-version", "1"), ("format", "toy"), ("BAD KEY", "dropped"), ("toy-version", "2")]


class FakeEntryPoint:
    def __init__(self, name: str, target: object) -> None:
        self.name, self.value, self.target = name, f"fake:{name}", target

    def load(self) -> object:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_plugins_from_entry_points(monkeypatch):
    eps = [FakeEntryPoint("broken", ImportError("nope")), FakeEntryPoint("toy", Toy), FakeEntryPoint("junk", 42)]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    assert [d.name for d in describers()][-2:] == ["toy", "generic"]
    assert describe(BytesReader(b"TOY!ok")) == [("format", "toy"), ("toy-version", "1")]
    assert describe(BytesReader(b"TOY!x")) == [("format", "text"), ("note", "toy: toy header broken")]
    assert describe(BytesReader(b"TOY!z")) == [("format", "text")]
    assert describe(BytesReader(b"TOY!!")) == [("format", "text"), ("note", "toy: internal error (ZeroDivisionError)")]


def test_a_real_installed_plugin_is_found(tmp_path, monkeypatch):
    """What a third-party package's `[project.entry-points."gitmld.describers"]` produces."""
    (tmp_path / "toy_fmt.py").write_text(
        textwrap.dedent(
            """
            class ToyDescriber:
                name = "toyfmt"
                def sniff(self, head, size):
                    return head.startswith(b"TOYFMT")
                def describe(self, reader, *, max_tensor_lines):
                    return [("format", "toyfmt"), ("size-seen", str(reader.size))]
            """
        )
    )
    dist = tmp_path / "toy_fmt-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-fmt\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[gitmld.describers]\ntoyfmt = toy_fmt:ToyDescriber\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert describe(BytesReader(b"TOYFMT...")) == [("format", "toyfmt"), ("size-seen", "9")]


def test_read_budget_turns_into_a_note():
    header = json.dumps({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "pad": "x" * 20000})
    data = len(header).to_bytes(8, "little") + header.encode() + b"\0"
    lines = dict(describe(BytesReader(data), read_budget=10_000))
    assert lines["format"] == "unknown"
    assert "more than 10000 bytes" in lines["note"]


def test_same_bytes_same_text_in_another_process(tmp_path):
    """No dependence on hash seeds, dict order or the process: run it twice elsewhere."""
    np.savez(tmp_path / "a.npz", z=np.zeros((2, 3)), a=np.ones(4, np.int8))
    code = "import sys; from gitmld.daemon.describe.registry import describe_path; print(describe_path(sys.argv[1]))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "a.npz")],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1 and "a I8 4" in outs.pop()


def test_max_tensor_lines_zero_gives_only_the_summary():
    npz = io.BytesIO()
    np.savez(npz, a=np.zeros(2), b=np.zeros(3))
    lines = describe(BytesReader(npz.getvalue()), max_tensor_lines=0)
    assert not [k for k, _ in lines if k == "tensor"] and dict(lines)["tensor-groups"] == "a:1,b:1"


def test_every_description_makes_a_valid_pointer():
    """Whatever the file, the lines pass proto.pointer's strict rules and round-trip."""
    pointer = pytest.importorskip("gitmld.proto.pointer")
    odd = {"sp ace": "F32", "per%cent": "F32", "new\nline": "F32", "x" * 300: "F32", "é" * 90: "F32"}
    header = {
        name: {"dtype": dt, "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i, (name, dt) in enumerate(odd.items())
    }
    header["__metadata__"] = {"k\tey": "v,a=l\u2028ue", "": ""}
    body = json.dumps(header).encode()
    samples = [
        len(body).to_bytes(8, "little") + body + b"\0" * 20,
        b"\x80\x04" + bytes(range(256)),
        bytes(range(256)),
        b"",
        gzip.compress(b"x"),
        zip_of(**{"a.npy": b"broken"}),
    ]
    digests = {"sp ace": "0123456789abcdef"}
    for data in samples:
        lines = describe(BytesReader(data), tensor_digests=digests)
        p = pointer.Pointer("sha256:" + "0" * 64, len(data), lines)
        assert pointer.Pointer.parse(p.to_text()) == p
        assert all(len(f"{k} {v}\n".encode()) < 100 for k, v in lines if k == "tensor")
    names = [t.name for t in pointer.Pointer("sha256:" + "0" * 64, 1, describe(BytesReader(samples[0]))).tensors]
    assert "sp ace" in names and "per%cent" in names and "new\nline" in names
