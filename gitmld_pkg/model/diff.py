"""`gitmld diff [REV [REV]] -- PATH`: what changed inside a safetensors model, per tensor.

Sides: no REV compares HEAD with the worktree file, one REV compares REV with the worktree,
two compare REV1 with REV2. A side from a commit is its pointer; its bytes are read through
the daemon by ranged reads. The worktree file is read directly (it is on local disk; a
worktree that holds a pointer, not content, is read through the daemon like a commit).

What is read: each side's header (two small reads), then only the tensors whose digests
differ. Pointers carry a digest per tensor (`tensor name dtype shape digest`); the worktree
file's tensors are hashed locally where the other side has a digest to compare with. A
tensor without a digest on either side (a pointer that lists a summary instead of tensor
lines) is compared by reading both copies.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitmld.client.daemon_client import DaemonClient
from gitmld.client.errors import CommandError
from gitmld.client.gitconfig import load_remote_config, run_git
from gitmld.client.progress import human_size
from gitmld.model import numeric
from gitmld.model.layout import Layout, LayoutError, TensorEntry, read_layout
from gitmld.model.sources import FileSource, Source, StoredSource, digest, prefetched, rechunk
from gitmld.proto.pointer import MAX_POINTER_SIZE, Pointer, PointerError, is_lfs_pointer, looks_like_pointer


@dataclass
class Side:
    """One version of the file: where its bytes are, and the digests its pointer gives."""

    label: str  # "HEAD", "worktree", a rev
    source: Source | None  # None: the file does not exist in this version
    pointer: Pointer | None = None
    digests: dict[str, str] = field(default_factory=dict)
    layout: Layout | None = None

    @property
    def local(self) -> bool:
        return isinstance(self.source, FileSource)

    def digest_of(self, entry: TensorEntry, hex_digits: int) -> str | None:
        """The pointer's digest, or for a local file the digest computed from its bytes."""
        known = self.digests.get(entry.name)
        if known is not None:
            return known
        if self.local and self.source is not None:
            return digest(self.source.stream(entry.offset, entry.length), hex_digits)
        return None


@dataclass
class TensorChange:
    name: str
    status: str  # added | removed | changed | dtype | shape
    old: TensorEntry | None
    new: TensorEntry | None
    stats: numeric.ChangeStats | None = None  # for "changed" with a numeric dtype

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        for key, entry in (("old", self.old), ("new", self.new)):
            if entry is not None:
                out[key] = {"dtype": entry.dtype, "shape": list(entry.shape), "bytes": entry.length}
        if self.stats is not None:
            out.update(l2=_num(self.stats.l2), relative=_num(self.stats.relative),
                       max_abs=_num(self.stats.max_abs), changed_elements=self.stats.changed,
                       elements=self.stats.elements)
        return out


@dataclass
class DiffReport:
    path: str
    old: Side
    new: Side
    changes: list[TensorChange]
    unchanged: int
    metadata: tuple[dict[str, str] | None, dict[str, str] | None] | None = None  # (old, new) when they differ

    @property
    def bytes_read(self) -> dict[str, int]:
        """Bytes read from each kind of source: `daemon` (ranged reads) and `local` files."""
        out = {"daemon": 0, "local": 0}
        for side in (self.old, self.new):
            if side.source is not None:
                out["local" if side.local else "daemon"] += side.source.bytes_read
        return out

    def to_json(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            return {"rev": s.label, "oid": s.pointer.oid if s.pointer else None,
                    "size": s.source.size if s.source else None,
                    "tensors": len(s.layout.tensors) if s.layout else 0}

        out: dict[str, Any] = {"path": self.path, "old": side(self.old), "new": side(self.new),
                               "changes": [c.to_json() for c in self.changes], "unchanged": self.unchanged,
                               "bytes_read": self.bytes_read}
        if self.metadata is not None:
            out["metadata"] = {"old": self.metadata[0], "new": self.metadata[1]}
        return out


def _num(x: float) -> float | str:
    """JSON has no NaN or infinity: those become strings."""
    return x if math.isfinite(x) else str(x)


# -- the sides --------------------------------------------------------------------------------


class Opener:
    """Opens sides, sharing the remote configuration and closing every source at the end."""

    def __init__(self, connect: Callable[[], DaemonClient]) -> None:
        self._connect = connect
        self._remote: dict[str, Any] | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Opener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _remote_json(self) -> dict[str, Any]:
        if self._remote is None:
            self._remote = load_remote_config().to_json()
        return self._remote

    def stored(self, pointer: Pointer, path: str, label: str) -> Side:
        source = StoredSource(self._connect, self._remote_json(), pointer.oid, pointer.size, path, label)
        self._stack.callback(source.close)
        digests = {t.name: t.digest for t in pointer.tensors if t.digest is not None}
        return Side(label, source, pointer, digests)

    def local(self, file: Any, label: str) -> Side:
        source = FileSource(file, label)
        self._stack.callback(source.close)
        return Side(label, source)

    def from_blob(self, data: bytes, path: str, label: str) -> Side:
        """A blob: a gitmld pointer, or content Git stores itself (committed before tracking)."""
        if looks_like_pointer(data):
            try:
                return self.stored(Pointer.parse(data), path, label)
            except PointerError as e:
                raise CommandError(f"{label}: {path} holds a damaged gitmld pointer: {e}") from None
        if is_lfs_pointer(data):
            raise CommandError(f"{label}: {path} is a Git LFS pointer; gitmld cannot read its content")
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the Opener
        tmp.write(data)
        tmp.flush()
        return self.local(tmp, label)

    def rev(self, rev: str, path: str) -> Side:
        proc = run_git(["cat-file", "blob", f"{rev}:./{path}"], ok_codes=(0, 128))
        if proc.returncode != 0:
            if run_git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], ok_codes=(0, 1)).returncode:
                raise CommandError(f"{rev!r} is not a commit in this repository")
            return Side(rev, None)  # the file does not exist in that commit
        return self.from_blob(proc.stdout, path, rev)

    def worktree(self, path: str) -> Side:
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed with the Opener
        except FileNotFoundError:
            return Side("worktree", None)
        head = os.pread(file.fileno(), MAX_POINTER_SIZE + 1, 0)
        if looks_like_pointer(head) or is_lfs_pointer(head):  # not smudged: read its object
            file.close()
            return self.from_blob(head, path, "worktree")
        return self.local(file, "worktree")


def read_sides(opener: Opener, revs: Sequence[str], path: str) -> tuple[Side, Side]:
    if len(revs) > 2:
        raise CommandError("gitmld diff takes at most two revisions")
    if not revs:
        return opener.rev("HEAD", path), opener.worktree(path)
    if len(revs) == 1:
        return opener.rev(revs[0], path), opener.worktree(path)
    return opener.rev(revs[0], path), opener.rev(revs[1], path)


# -- comparing --------------------------------------------------------------------------------


def load_layout(side: Side, path: str) -> Layout | None:
    if side.source is None:
        return None
    fmt = side.pointer.get("format") if side.pointer else None
    if fmt is not None and fmt != "safetensors":
        raise CommandError(f"{side.label}: {path} is a {fmt} file; gitmld diff compares safetensors files")
    try:
        side.layout = read_layout(side.source, f"{side.label}:{path}")
    except LayoutError as e:
        raise CommandError(f"{e}; gitmld diff compares safetensors files") from None
    return side.layout


def same_bytes(old: Side, new: Side, a: TensorEntry, b: TensorEntry) -> bool | None:
    """True/False when digests decide it, None when the bytes must be read to know."""
    da, db = old.digests.get(a.name), new.digests.get(b.name)
    if da is None and db is not None:
        da = old.digest_of(a, _even(len(db)))
    elif db is None and da is not None:
        db = new.digest_of(b, _even(len(da)))
    if da is None or db is None:
        return None
    n = min(len(da), len(db))
    return da[:n] == db[:n]


def _even(n: int) -> int:
    return n + n % 2


def compare_values(old: Side, new: Side, a: TensorEntry, b: TensorEntry) -> numeric.ChangeStats:
    """Stream both tensors in aligned blocks: statistics for numeric dtypes; for others only
    `changed` (1 when any byte differs)."""
    assert old.source is not None and new.source is not None
    size = numeric.block_bytes(a.dtype) if numeric.numeric(a.dtype) else 8 << 20
    olds = prefetched(rechunk(old.source.stream(a.offset, a.length), size))
    news = prefetched(rechunk(new.source.stream(b.offset, b.length), size))
    stats = numeric.ChangeStats()
    differ = False
    for x, y in zip(olds, news, strict=True):
        if numeric.numeric(a.dtype):
            stats.update(x, y, a.dtype)
        elif x != y:
            differ = True
    if not numeric.numeric(a.dtype):
        stats.changed = int(differ)
    return stats


def diff_sides(old: Side, new: Side, path: str) -> DiffReport:
    la, lb = load_layout(old, path), load_layout(new, path)
    if la is None and lb is None:
        raise CommandError(f"{path} exists in neither {old.label} nor {new.label}")
    ta = la.by_name() if la else {}
    tb = lb.by_name() if lb else {}
    changes: list[TensorChange] = []
    unchanged = 0
    same_object = old.pointer is not None and new.pointer is not None and old.pointer.oid == new.pointer.oid
    for name in sorted(ta.keys() | tb.keys()):
        a, b = ta.get(name), tb.get(name)
        if a is None:
            changes.append(TensorChange(name, "added", None, b))
        elif b is None:
            changes.append(TensorChange(name, "removed", a, None))
        elif a.dtype != b.dtype:
            changes.append(TensorChange(name, "dtype", a, b))
        elif a.shape != b.shape:
            changes.append(TensorChange(name, "shape", a, b))
        elif same_object or same_bytes(old, new, a, b):
            unchanged += 1
        else:
            stats = compare_values(old, new, a, b)
            if stats.changed == 0:
                unchanged += 1  # no digests, and reading showed them equal
            else:
                changes.append(TensorChange(name, "changed", a, b, stats if numeric.numeric(a.dtype) else None))
    meta = None
    ma, mb = (la.metadata if la else None), (lb.metadata if lb else None)
    if la is not None and lb is not None and ma != mb:
        meta = (ma, mb)
    return DiffReport(path, old, new, changes, unchanged, meta)


# -- output -----------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def render(report: DiffReport) -> str:
    """A table: one row per tensor that differs, the tensor's name last (names are long)."""
    rows: list[list[str]] = [["status", "dtype", "shape", "L2(new-old)", "relative", "max|new-old|", "tensor"]]
    for c in report.changes:
        entry = c.new or c.old
        assert entry is not None
        dtype, shape = entry.dtype, entry.shape_text
        if c.status == "dtype" and c.old and c.new:
            dtype = f"{c.old.dtype}->{c.new.dtype}"
        if c.status in ("dtype", "shape") and c.old and c.new and c.old.shape != c.new.shape:
            shape = f"{c.old.shape_text}->{c.new.shape_text}"
        figures = ["", "", ""]
        if c.stats is not None:
            figures = [_fmt(c.stats.l2), _fmt(c.stats.relative), _fmt(c.stats.max_abs)]
        rows.append([c.status, dtype, shape, *figures, c.name])
    lines = [f"gitmld diff {report.old.label} {report.new.label} -- {report.path}"]
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            lines.append("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    if report.metadata is not None:
        lines.append(f"__metadata__: {json.dumps(report.metadata[0], sort_keys=True)}"
                     f" -> {json.dumps(report.metadata[1], sort_keys=True)}")
    counts = {s: sum(1 for c in report.changes if c.status == s) for s in ("changed", "added", "removed")}
    retyped = len(report.changes) - sum(counts.values())
    summary = (f"{counts['changed']} changed, {counts['added']} added, {counts['removed']} removed"
               + (f", {retyped} with a new dtype or shape" if retyped else "") + f", {report.unchanged} unchanged")
    sizes = sum(s.source.size for s in (report.old, report.new) if s.source is not None and not s.local)
    read = report.bytes_read
    summary += f"; read {human_size(read['daemon'])} of {human_size(sizes)} through the daemon"
    if read["local"]:
        summary += f" and {human_size(read['local'])} of local files"
    lines.append(summary)
    return "\n".join(lines) + "\n"


def run(revs: Sequence[str], path: str, *, as_json: bool, connect: Callable[[], DaemonClient]) -> str:
    """The text `gitmld diff` prints."""
    with Opener(connect) as opener:
        old, new = read_sides(opener, revs, path)
        report = diff_sides(old, new, path)
        if as_json:
            return json.dumps(report.to_json(), indent=2) + "\n"
        return render(report)

