"""The merge driver's pure parts: per-tensor three-way planning, averaging (bf16 rounding),
and the merged header."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from gitmld.model import numeric
from gitmld.model.layout import LayoutError, build_header, parse_header
from gitmld.model.merge import STRATEGIES, Conflict, Step, TensorKey, plan_merge
from safetensors.torch import load


def k(digest: str, dtype: str = "BF16", shape: tuple[int, ...] = (4, 4)) -> TensorKey:
    return TensorKey(dtype, shape, digest)


BASE = {"a": k("a0"), "b": k("b0"), "c": k("c0"), "d": k("d0")}


def test_one_sided_changes_take_that_side_and_order_follows_ours_then_theirs_additions() -> None:
    ours = {"b": k("b1"), "a": k("a0"), "c": k("c0"), "new_ours": k("n1")}  # b changed, d deleted, added one
    theirs = {"a": k("a2"), "b": k("b0"), "c": k("c0"), "d": k("d0"), "new_theirs": k("t2"), "z": k("z2")}
    plan = plan_merge(BASE, ours, theirs)
    assert plan.conflicts == [] and plan.resolved == []
    assert plan.steps == [Step("b", "ours"), Step("a", "theirs"), Step("c", "ours"), Step("new_ours", "ours"),
                          Step("new_theirs", "theirs"), Step("z", "theirs")]  # d: deleted in ours only


def test_deleted_on_theirs_only_is_deleted_and_same_change_on_both_is_no_conflict() -> None:
    ours = {"a": k("a1"), "b": k("b0"), "c": k("c0"), "d": k("d0")}
    theirs = {"a": k("a1"), "c": k("c0"), "d": k("d0")}  # same change to a; b deleted
    plan = plan_merge(BASE, ours, theirs)
    assert plan.conflicts == []
    assert [s.name for s in plan.steps] == ["a", "c", "d"]
    both_deleted = plan_merge(BASE, {"a": k("a0")}, {"a": k("a0")})
    assert both_deleted.steps == [Step("a", "ours")]


def test_changes_on_both_sides_conflict_naming_each_tensor_and_why() -> None:
    ours = {"a": k("a1"), "b": k("b1"), "c": k("c1", shape=(2, 8)), "x": k("x1")}
    theirs = {"a": k("a2"), "c": k("c2"), "d": k("d2"), "x": k("x2")}
    plan = plan_merge(BASE, ours, theirs)
    assert plan.conflicts == [
        Conflict("a", "changed in both, with different values"),
        Conflict("b", "changed in ours, deleted in theirs"),
        Conflict("c", "changed in both, to BF16 2x8 in ours and BF16 4x4 in theirs"),
        Conflict("x", "added in both, with different values"),
        Conflict("d", "deleted in ours, changed in theirs"),
    ]
    assert [s.name for s in plan.steps] == []  # conflicts are not in the plan


def test_strategies_resolve_conflicts_as_far_as_they_can() -> None:
    ours = {"a": k("a1"), "b": k("b1"), "i": k("i1", dtype="I64")}
    theirs = {"a": k("a2"), "d": k("d2"), "i": k("i2", dtype="I64")}
    base = {**BASE, "i": k("i0", dtype="I64")}
    by_ours = plan_merge(base, ours, theirs, "ours")
    assert by_ours.conflicts == [] and by_ours.steps == [Step("a", "ours"), Step("b", "ours"), Step("i", "ours")]
    assert len(by_ours.resolved) == 4  # a, b, i, and d (deleted in ours: the deletion is taken)
    by_theirs = plan_merge(base, ours, theirs, "theirs")
    assert by_theirs.conflicts == []
    assert by_theirs.steps == [Step("a", "theirs"), Step("i", "theirs"), Step("d", "theirs")]
    averaged = plan_merge(base, ours, theirs, "average")
    assert averaged.steps == [Step("a", "average")]
    assert {c.name: c.reason for c in averaged.conflicts} == {
        "b": "changed in ours, deleted in theirs; average needs the tensor on both sides",
        "i": "changed in both, with different values; average applies to floating-point tensors, not I64",
        "d": "deleted in ours, changed in theirs; average needs the tensor on both sides",
    }
    with pytest.raises(ValueError, match="unknown merge strategy 'mean'"):
        plan_merge(base, ours, theirs, "mean")
    assert STRATEGIES == ("conflict", "ours", "theirs", "average")


def test_no_base_means_both_added_identical_tensors_agree() -> None:
    plan = plan_merge({}, {"a": k("a"), "b": k("b1")}, {"a": k("a"), "b": k("b2")})
    assert plan.steps == [Step("a", "ours")]
    assert plan.conflicts == [Conflict("b", "added in both, with different values")]


def bf16(values: np.ndarray) -> bytes:
    return torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def test_bf16_average_is_the_float32_mean_rounded_to_nearest_even() -> None:
    rng = np.random.default_rng(7)
    a = bf16(rng.normal(0, 0.02, 10_000))
    b = bf16(rng.normal(0, 0.02, 10_000))
    got = torch.frombuffer(bytearray(numeric.average(a, b, "BF16")), dtype=torch.bfloat16)
    ta = torch.frombuffer(bytearray(a), dtype=torch.bfloat16)
    tb = torch.frombuffer(bytearray(b), dtype=torch.bfloat16)
    assert torch.equal(got, ((ta.float() + tb.float()) / 2).to(torch.bfloat16))
    assert not torch.equal(got, ta)


def test_bf16_rounding_ties_to_even_and_keeps_nan_and_inf() -> None:
    # 1 + 2**-8 lies halfway between bf16 1.0 and 1.0078125: ties to even (1.0);
    # 1 + 3 * 2**-8 lies halfway between 1.0078125 and 1.015625: ties to even (1.015625).
    one, up = 0x3F80, 0x3F81
    halves = np.array([1 + 2**-8, 1 + 3 * 2**-8, np.inf, -np.inf, np.nan, 3.3e38], dtype=np.float32)
    bits = numeric.f32_to_bf16(halves)
    assert bits[0] == one and bits[1] == up + 1
    assert bits[2] == 0x7F80 and bits[3] == 0xFF80
    assert np.isnan(numeric.bf16_to_f32(bits[4:5].tobytes()))[0]
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, 50_000).astype(np.float32)
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(numeric.f32_to_bf16(x), expected)
    # averaging two huge values of the same sign must not overflow to infinity
    big = bf16(np.array([3.0e38, -3.0e38]))
    mean = numeric.bf16_to_f32(numeric.average(big, big, "BF16"))
    assert np.all(np.isfinite(mean)) and mean[0] > 2.9e38


@pytest.mark.parametrize("dtype", ["F16", "F32", "F64"])
def test_other_float_averages(dtype: str) -> None:
    np_dtype = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype]
    a = np.array([1.0, 2.0, -3.0, 0.1], dtype=np_dtype)
    b = np.array([3.0, 2.0, 3.0, 0.2], dtype=np_dtype)
    got = np.frombuffer(numeric.average(a.tobytes(), b.tobytes(), dtype), np_dtype)
    work = np.float64 if dtype == "F64" else np.float32
    assert np.array_equal(got, ((a.astype(work) + b.astype(work)) / 2).astype(np_dtype))
    with pytest.raises(ValueError, match="I32 tensors cannot be averaged"):
        numeric.average(b"\0" * 4, b"\0" * 4, "I32")


def test_merged_header_is_a_valid_safetensors_file_with_aligned_data() -> None:
    tensors = [("w", "BF16", (2, 3), 12), ("scalar", "F32", (), 4), ("i", "I64", (1,), 8)]
    header = build_header(tensors, {"format": "pt"})
    assert (len(header) - 8) % 8 == 0
    data = bytes(range(12)) + struct.pack("<f", 1.5) + struct.pack("<q", -7)
    loaded = load(header + data)
    assert set(loaded) == {"w", "scalar", "i"}
    assert loaded["w"].shape == (2, 3) and loaded["w"].view(torch.int16).flatten()[0].item() == 0x0100
    assert loaded["scalar"].item() == 1.5 and loaded["i"].tolist() == [-7]
    layout = parse_header(header[8:], len(header) + len(data), "merged")
    assert [(t.name, t.offset, t.length) for t in layout.tensors] == [
        ("w", len(header), 12), ("scalar", len(header) + 12, 4), ("i", len(header) + 16, 8)]
    assert layout.metadata == {"format": "pt"}


@pytest.mark.parametrize(("doc", "message"), [
    ({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 5]}}, "has 5 bytes, not 4"),
    ({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 400]}}, "outside the file"),
    ({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
      "v": {"dtype": "BF16", "shape": [2], "data_offsets": [2, 6]}}, "overlap"),
    ({"w": {"shape": [2]}}, "no dtype, shape and data_offsets"),
    ({"__metadata__": {"a": 1}}, "not a map of strings"),
])
def test_bad_headers_are_refused_with_a_reason(doc: dict[str, object], message: str) -> None:
    raw = json.dumps(doc).encode()
    with pytest.raises(LayoutError, match=message):
        parse_header(raw, 8 + len(raw) + 16, "x")
