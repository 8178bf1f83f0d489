"""gitmld diff's comparison, on in-memory sides: digests decide what is read, figures match numpy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import blake3
import numpy as np
import pytest
from gitmld.client.cli import split_diff_args
from gitmld.client.errors import CommandError
from gitmld.model.diff import DiffReport, Side, diff_sides, render
from gitmld.model.layout import build_header, read_layout
from gitmld.model.sources import prefetched, rechunk

from tests.modelgen import write_checkpoint


class BytesSource:
    """A stored object stand-in: counts what is read, like StoredSource."""

    def __init__(self, data: bytes, label: str) -> None:
        self.data, self.size, self.label, self.bytes_read = data, len(data), label, 0

    def stream(self, offset: int, length: int) -> Iterator[bytes]:
        for i in range(offset, offset + length, 1000):
            piece = self.data[i : min(i + 1000, offset + length)]
            self.bytes_read += len(piece)
            yield piece

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(self.stream(offset, length))

    def close(self) -> None:
        pass


def side(data: bytes, label: str, *, digests: bool) -> Side:
    source = BytesSource(data, label)
    d = {}
    if digests:  # what the pointer's tensor lines carry (the chunker's digest)
        d = {t.name: blake3.blake3(data[t.offset : t.offset + t.length]).hexdigest(length=8)
             for t in read_layout(source, label).tensors}
        source.bytes_read = 0
    return Side(label, source, None, d)


def bf16_values(data: bytes, name: str) -> np.ndarray:
    layout = read_layout(BytesSource(data, "x"), "x").by_name()
    t = layout[name]
    raw = np.frombuffer(data[t.offset : t.offset + t.length], "<u2").astype(np.uint32) << 16
    return raw.view(np.float32).astype(np.float64)


def checkpoints(tmp_path: Path) -> tuple[bytes, bytes]:
    old = write_checkpoint(tmp_path / "a.safetensors", layers=3, hidden=128, seed=4).read_bytes()
    new = write_checkpoint(tmp_path / "b.safetensors", layers=3, hidden=128, seed=4, changed_layers=(1,),
                           extra_tensor=True).read_bytes()
    return old, new


def check_figures(report: DiffReport, old: bytes, new: bytes) -> None:
    changed = {c.name: c for c in report.changes if c.status == "changed"}
    assert sorted(changed) == sorted(n for n in json.loads(old[8 : 8 + int.from_bytes(old[:8], "little")])
                                     if ".layers.1." in n)
    for name, c in changed.items():
        a, b = bf16_values(old, name), bf16_values(new, name)
        assert c.stats is not None
        assert np.isclose(c.stats.l2, np.linalg.norm(b - a), rtol=1e-12)
        assert np.isclose(c.stats.relative, np.linalg.norm(b - a) / np.linalg.norm(a), rtol=1e-12)
        assert c.stats.max_abs == np.max(np.abs(b - a))
        assert c.stats.changed == np.count_nonzero(b - a) and c.stats.elements == a.size


def test_digests_decide_and_only_changed_tensors_are_read(tmp_path: Path) -> None:
    old, new = checkpoints(tmp_path)
    a, b = side(old, "v1", digests=True), side(new, "v2", digests=True)
    report = diff_sides(a, b, "m.safetensors")
    assert [(c.status, c.name) for c in report.changes if c.status != "changed"] == [("added", "score.weight")]
    assert report.unchanged == 17 - 5  # embed + 3 layers x 5 + norm
    check_figures(report, old, new)
    changed_bytes = sum(c.old.length for c in report.changes if c.status == "changed" and c.old)
    headers = sum(8 + int.from_bytes(d[:8], "little") for d in (old, new))
    assert report.bytes_read["daemon"] == 2 * changed_bytes + headers  # nothing else
    text = render(report)
    assert "5 changed, 1 added, 0 removed, 12 unchanged" in text
    assert "score.weight" in text and "model.layers.1.self_attn.q_proj.weight" in text


def test_without_digests_both_copies_are_read_and_equal_ones_count_as_unchanged(tmp_path: Path) -> None:
    old, new = checkpoints(tmp_path)
    report = diff_sides(side(old, "v1", digests=False), side(new, "v2", digests=False), "m.safetensors")
    assert report.unchanged == 12 and len(report.changes) == 6
    check_figures(report, old, new)
    # every byte of both files except the added tensor (nothing to compare it with)
    assert report.bytes_read["daemon"] == len(old) + len(new) - 8 * 128 * 2


def test_dtype_shape_and_metadata_changes_and_removals(tmp_path: Path) -> None:
    def file(tensors: list[tuple[str, str, tuple[int, ...], bytes]], meta: dict[str, str]) -> bytes:
        header = build_header([(n, d, s, len(b)) for n, d, s, b in tensors], meta)
        return header + b"".join(b for *_, b in tensors)

    f32 = np.arange(6, dtype="<f4").tobytes()
    old = file([("w", "F32", (2, 3), f32), ("v", "F32", (6,), f32), ("gone", "I64", (1,), b"\1" * 8),
                ("i", "I32", (2,), np.array([1, 5], "<i4").tobytes())], {"step": "1"})
    new = file([("w", "F32", (3, 2), f32), ("v", "F64", (6,), np.arange(6, dtype="<f8").tobytes()),
                ("i", "I32", (2,), np.array([1, 9], "<i4").tobytes())], {"step": "2"})
    report = diff_sides(side(old, "a", digests=True), side(new, "b", digests=True), "m.safetensors")
    got = {c.name: c for c in report.changes}
    assert {n: c.status for n, c in got.items()} == {"w": "shape", "v": "dtype", "gone": "removed", "i": "changed"}
    stats = got["i"].stats
    assert stats is not None and stats.l2 == 4.0 and stats.max_abs == 4.0 and stats.changed == 1
    assert report.metadata == ({"step": "1"}, {"step": "2"})
    out = report.to_json()
    assert out["metadata"] == {"old": {"step": "1"}, "new": {"step": "2"}}
    text = render(report)
    assert "2x3->3x2" in text and "F32->F64" in text


def test_diff_arguments_split_like_git() -> None:
    assert split_diff_args(["--", "m.st"]) == ([], "m.st")
    assert split_diff_args(["HEAD~1", "HEAD", "--", "m.st"]) == (["HEAD~1", "HEAD"], "m.st")
    assert split_diff_args(["v1", "m.st"]) == (["v1"], "m.st")  # without --, the last one is the path
    for bad, message in ((["a", "b", "c", "--", "m"], "at most two revisions"), (["--"], "exactly one PATH"),
                         (["--", "a", "b"], "exactly one PATH"), (["--stat", "--", "m"], "options go before")):
        with pytest.raises(CommandError, match=message):
            split_diff_args(bad)


def test_prefetched_blocks_keep_order_raise_errors_and_stop_early() -> None:
    assert list(prefetched(rechunk([b"abc", b"defg", b"h"], 3))) == [b"abc", b"def", b"gh"]

    def failing() -> Iterator[bytes]:
        yield b"1"
        raise OSError("daemon went away")

    got: list[bytes] = []
    with pytest.raises(OSError, match="daemon went away"):
        for block in prefetched(failing()):
            got.append(block)
    assert got == [b"1"]
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        i = 0
        while True:
            produced.append(i)
            yield bytes([i % 256])
            i += 1

    it = prefetched(endless(), depth=2)
    assert next(it) == b"\x00"
    it.close()  # returns only once the reader thread has stopped
    assert len(produced) <= 5  # it read at most a few blocks ahead
