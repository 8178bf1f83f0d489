"""Description text conventions: escaping, shortening, tensor lines, the summary beyond N lines."""

from __future__ import annotations

import pytest
from gitmld.daemon.describe.lines import (
    MAX_TENSOR_LINE_BYTES,
    TensorDesc,
    clean_value,
    finalize,
    group_name,
    pairs,
    shorten,
    tensor_line,
    tensor_section,
    tensor_summary,
)


def test_shorten_keeps_short_text_and_marks_long_text_with_a_hash():
    assert shorten("abc", 10) == "abc"
    long = "model.layers.0." + "x" * 200 + ".weight"
    out = shorten(long, 60)
    assert len(out.encode()) <= 60
    assert out.startswith("model.layers") and out.endswith("weight") and "…" in out
    assert shorten(long.replace("x", "y"), 60) != out  # the hash tells shortened names apart


def test_shorten_never_splits_a_multibyte_character():
    out = shorten("é" * 100, 41)
    out.encode("utf-8")  # would raise on a split surrogate; also check the size
    assert len(out.encode()) <= 41 and "é" in out


@pytest.mark.parametrize("name", ["a b", "tab\tname", "new\nline", "p%ct", "x" * 500, "ü" * 300])
def test_tensor_lines_are_valid_and_under_100_bytes(name):
    value = tensor_line(TensorDesc(name, "BF16", (4096, 4096)), "0123456789abcdef")
    assert value is not None
    assert len(f"tensor {value}\n".encode()) <= MAX_TENSOR_LINE_BYTES < 100
    parts = value.split(" ")
    assert len(parts) == 4 and parts[1:] == ["BF16", "4096x4096", "0123456789abcdef"]
    assert value.isprintable()


def test_scalar_shape_and_no_digest():
    assert tensor_line(TensorDesc("step", "I64", ()), None) == "step I64 scalar"


def test_summary_and_section_sorted_with_digests():
    ts = [TensorDesc("b", "F32", (2, 3)), TensorDesc("a", "BF16", (4,))]
    assert tensor_summary(ts) == [("tensors", "2"), ("params", "10"), ("dtypes", "BF16,F32")]
    lines = tensor_section(ts, max_lines=10, digests={"a": "00112233aabbccdd", "b": "NOTHEX"})
    assert lines == [("tensor", "a BF16 4 00112233aabbccdd"), ("tensor", "b F32 2x3")]


def test_beyond_max_lines_a_summary_replaces_tensor_lines():
    ts = [TensorDesc(f"model.layers.{i}.w", "BF16", (8, 8)) for i in range(40)]
    ts.append(TensorDesc("lm_head.weight", "F32", (8,)))
    lines = dict(tensor_section(ts, max_lines=10))
    assert "tensor" not in lines
    assert lines["tensors-by-dtype"] == "BF16:40,F32:1"
    assert lines["tensor-groups"] == "lm_head.*:1,model.layers.*:40"
    changed = [*ts[:-1], TensorDesc("lm_head.weight", "F32", (9,))]
    assert dict(tensor_section(changed, max_lines=10))["tensors-digest"] != lines["tensors-digest"]


def test_group_name():
    assert group_name("model.layers.7.mlp.weight") == "model.layers.*"
    assert group_name("encoder.conv.weight") == "encoder.conv.*"
    assert group_name("bias") == "bias"


def test_pairs_escape_separators_and_cap_length():
    assert pairs({"b": "x,y", "a": "k=v"}) == "a=k=v,b=x%2Cy"
    big = pairs({f"k{i:04d}": "v" * 50 for i in range(200)}, limit=300)
    assert len(big.encode()) <= 300 and big.endswith(tuple(f"+{n}" for n in range(1, 201)))


def test_clean_value_and_finalize_enforce_pointer_rules():
    assert clean_value("  a\nb  ") == "a%0Ab"
    assert clean_value("") == "-"
    out = finalize([("tensors", "1"), ("format", "x"), ("Bad Key", "v"), ("tensors", "2"), ("size", "9")])
    assert out == [("format", "x"), ("tensors", "1")]
    assert finalize([("tensor", "bad\nvalue")]) == [("format", "unknown")]
