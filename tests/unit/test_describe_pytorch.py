"""PyTorch checkpoints written by torch itself (torch.save, legacy format, TorchScript).

The torch-free bounds tests (10 GiB file, zip bomb) are in test_describe_pytorch_bounds.py.
"""

from __future__ import annotations

import io
import pickle

import pytest
from gitmld.daemon.describe.readers import BytesReader, HeadTailReader
from gitmld.daemon.describe.registry import describe

torch = pytest.importorskip("torch")


def saved(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def lines_of(data: bytes, **kw) -> dict[str, str]:
    return dict(describe(BytesReader(data), **kw))


def tensor_lines(data: bytes) -> list[str]:
    return [v for k, v in describe(BytesReader(data)) if k == "tensor"]


def test_state_dict_dtypes_and_shapes():
    sd = {
        "layer.weight": torch.zeros(4, 3, dtype=torch.bfloat16),
        "layer.bias": torch.zeros(4),
        "step": torch.tensor(3),
        "f8": torch.zeros(2, dtype=torch.float8_e4m3fn),  # saved through _rebuild_tensor_v3
    }
    data = saved(sd)
    lines = lines_of(data)
    assert lines["format"] == "pytorch" and lines["tensors"] == "4" and lines["params"] == "19"
    assert "torch._utils._rebuild_tensor_v2" in lines["classes"] and "unsafe" not in lines
    assert tensor_lines(data) == ["f8 F8_E4M3 2", "layer.bias F32 4", "layer.weight BF16 4x3", "step I64 scalar"]


def test_whole_module_names_match_its_state_dict():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    whole, sd = saved(model), saved(model.state_dict())
    lines = lines_of(whole)
    assert lines["object"] == "torch.nn.modules.container.Sequential"
    assert "torch.nn.modules.linear.Linear" in lines["classes"]
    assert (
        tensor_lines(whole)
        == tensor_lines(sd)
        == ["0.bias F32 4", "0.weight F32 4x3", "2.bias F32 2", "2.weight F32 2x4"]
    )


def test_training_checkpoint_shows_plain_values_and_nested_names():
    model = torch.nn.Linear(2, 2)
    data = saved({"model": model.state_dict(), "epoch": 7, "lr": 0.25})
    lines = lines_of(data)
    assert lines["values"] == "epoch=7,lr=0.25"
    assert tensor_lines(data) == ["model.bias F32 2", "model.weight F32 2x2"]


def test_legacy_format_and_torchscript():
    legacy = lines_of(saved({"w": torch.zeros(2, 2, dtype=torch.float16)}, _use_new_zipfile_serialization=False))
    assert legacy["format"] == "pytorch" and legacy["serialization"] == "legacy" and legacy["dtypes"] == "F16"
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), buf)
    script = lines_of(buf.getvalue())
    assert script["format"] == "torchscript" and script["params"] == "4"


def test_same_content_same_description_and_dict_order_free():
    a = {"x": torch.zeros(1), "y": torch.zeros(2, dtype=torch.int32)}
    b = {"y": torch.zeros(2, dtype=torch.int32), "x": torch.zeros(1)}
    assert describe(BytesReader(saved(a))) == describe(BytesReader(saved(b))) == describe(BytesReader(saved(a)))


def test_head_and_tail_are_enough_for_a_checkpoint():
    data = saved({"w": torch.zeros(64, 64)})  # 16 KiB of storage between data.pkl and the directory
    reader = HeadTailReader(data[:8192], data[-4096:], len(data))
    assert ("tensor", "w F32 64x64") in describe(reader)


def test_never_unpickles(tmp_path, monkeypatch):
    """Even a checkpoint with a malicious REDUCE is only read, never loaded."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    data = saved({"w": torch.zeros(1), "evil": Evil()})
    for name in ("load", "loads", "Unpickler"):  # any attempt to unpickle would crash
        monkeypatch.setattr(pickle, name, None)
    monkeypatch.setattr(torch, "load", None)
    lines = lines_of(data)
    assert not marker.exists()
    assert "posix.system" in lines["unsafe"] and lines["tensors"] == "1"
