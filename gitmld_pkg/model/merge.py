"""The safetensors merge driver: a three-way merge per tensor, assembled by the daemon.

Git hands a merge driver the three blobs (%O base, %A ours, %B theirs), which for a gitmld
file are pointers. Each side's tensors are identified by (dtype, shape, digest): digests come
from the pointers' tensor lines, offsets from each object's safetensors header (a ranged
read). `plan_merge` (pure) decides per tensor; the merged file — a new header, then each
tensor's bytes — is stored with the daemon's `compose` op: tensors taken from a side are
copied inside the daemon by ranged reads (and dedup to the chunks they already have), only
the header and averaged tensors cross the socket. The merged pointer is written into %A.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gitmld.client.daemon_client import DaemonClient
from gitmld.client.errors import CommandError
from gitmld.client.gitconfig import load_remote_config, repo_top, run_git
from gitmld.model import numeric
from gitmld.model.layout import Layout, LayoutError, TensorEntry, build_header, read_layout
from gitmld.model.sources import StoredSource, digest, prefetched, rechunk
from gitmld.proto.compose import CopyPart, InlinePart, Part, coalesce, parts_to_json, total_size
from gitmld.proto.pointer import MAX_POINTER_SIZE, Pointer, PointerError, looks_like_pointer
from gitmld.proto.wire import MAX_FRAME

STRATEGIES = ("conflict", "ours", "theirs", "average")
CONFIG_KEY = "gitmld.mergeStrategy"


# -- planning (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorKey:
    """What a tensor is, for the three-way comparison: equal keys mean equal tensors."""

    dtype: str
    shape: tuple[int, ...]
    digest: str


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    take: str  # "ours" | "theirs" | "average"


@dataclass(frozen=True, slots=True)
class Conflict:
    name: str
    reason: str


@dataclass
class MergePlan:
    steps: list[Step] = field(default_factory=list)  # the merged file's tensors, in order
    conflicts: list[Conflict] = field(default_factory=list)  # unresolved
    resolved: list[Conflict] = field(default_factory=list)  # conflicts the strategy resolved

    def count(self, take: str) -> int:
        return sum(1 for s in self.steps if s.take == take)


def plan_merge(base: Mapping[str, TensorKey], ours: Mapping[str, TensorKey], theirs: Mapping[str, TensorKey],
               strategy: str = "conflict") -> MergePlan:
    """Per tensor name: the same on both sides, or changed (added, removed) on one side only,
    takes that side; changed on both sides to different results is a conflict unless the
    strategy resolves it. `ours` and `theirs` are in file order; the merged file keeps ours'
    order, then theirs' additions in theirs' order."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown merge strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    plan = MergePlan()
    names = list(ours) + [n for n in theirs if n not in ours]
    for name in names:
        b, o, t = base.get(name), ours.get(name), theirs.get(name)
        if o == t or t == b:
            take = "ours" if o is not None else None
        elif o == b:
            take = "theirs" if t is not None else None
        else:
            conflict = Conflict(name, _reason(b, o, t))
            take, why = _resolve(o, t, strategy)
            if why is not None:
                plan.conflicts.append(Conflict(name, f"{conflict.reason}; {why}" if strategy != "conflict"
                                               else conflict.reason))
                continue
            plan.resolved.append(Conflict(name, f"{conflict.reason}: took {take or 'the deletion'} ({strategy})"))
        if take is not None:
            plan.steps.append(Step(name, take))
    return plan


def _reason(b: TensorKey | None, o: TensorKey | None, t: TensorKey | None) -> str:
    if o is None:
        return "deleted in ours, changed in theirs"
    if t is None:
        return "changed in ours, deleted in theirs"
    what = "added in both" if b is None else "changed in both"
    if o.dtype != t.dtype or o.shape != t.shape:
        shape = lambda k: "x".join(map(str, k.shape)) or "scalar"  # noqa: E731
        return f"{what}, to {o.dtype} {shape(o)} in ours and {t.dtype} {shape(t)} in theirs"
    return f"{what}, with different values"


def _resolve(o: TensorKey | None, t: TensorKey | None, strategy: str) -> tuple[str | None, str | None]:
    """(what to take, None) when the strategy resolves a conflict, else (None, why not)."""
    if strategy == "ours":
        return ("ours" if o is not None else None), None
    if strategy == "theirs":
        return ("theirs" if t is not None else None), None
    if strategy == "average":
        if o is None or t is None:
            return None, "average needs the tensor on both sides"
        if o.dtype != t.dtype or o.shape != t.shape:
            return None, "average needs the same dtype and shape on both sides"
        if not numeric.averageable(o.dtype):
            return None, f"average applies to floating-point tensors, not {o.dtype}"
        return "average", None
    return None, "no merge strategy is set"


# -- the driver -------------------------------------------------------------------------------


@dataclass
class Version:
    """One of the three versions: its pointer, object and header."""

    label: str  # "base", "ours", "theirs"
    pointer: Pointer
    source: StoredSource
    layout: Layout | None = None
    keys: dict[str, TensorKey] = field(default_factory=dict)  # in file order

    def entry(self, name: str) -> TensorEntry:
        assert self.layout is not None
        return self.layout.by_name()[name]


def configured_strategy(top: Path | None) -> str:
    """gitmld.mergeStrategy from git config, else from the committed .gitmldconfig."""
    proc = run_git(["config", "--get", CONFIG_KEY], ok_codes=(0, 1))
    value = proc.stdout.decode(errors="replace").strip()
    if not value and top is not None and (top / ".gitmldconfig").is_file():
        proc = run_git(["config", "-f", str(top / ".gitmldconfig"), "--get", CONFIG_KEY], ok_codes=(0, 1))
        value = proc.stdout.decode(errors="replace").strip()
    value = value.lower() or "conflict"
    if value not in STRATEGIES:
        raise CommandError(f"{CONFIG_KEY} is {value!r}; use one of {', '.join(STRATEGIES)}")
    return value


def read_pointer(path: Path, label: str, *, may_be_empty: bool) -> Pointer | None:
    with open(path, "rb") as f:
        data = f.read(MAX_POINTER_SIZE + 1)
    if not data and may_be_empty:
        return None  # no common ancestor (added on both branches)
    if not looks_like_pointer(data):
        raise CommandError(f"{label} is not a gitmld pointer (the file was committed before it was tracked?)")
    try:
        return Pointer.parse(data)
    except PointerError as e:
        raise CommandError(f"{label} is a damaged gitmld pointer: {e}") from None


def table(version: Version, path: str) -> dict[str, TensorKey]:
    """name -> TensorKey in file order; a tensor without a digest on its pointer line (a
    pointer with a summary instead) is hashed by reading it through the daemon."""
    try:
        version.layout = read_layout(version.source, f"{version.label} version of {path}")
    except LayoutError as e:
        raise CommandError(str(e)) from None
    digests = {t.name: t.digest for t in version.pointer.tensors if t.digest is not None}
    keys: dict[str, TensorKey] = {}
    for t in version.layout.tensors:
        d = digests.get(t.name)
        if d is None:
            d = digest(version.source.stream(t.offset, t.length))
        keys[t.name] = TensorKey(t.dtype, t.shape, d[:16])
    version.keys = keys
    return keys


def assemble(plan: MergePlan, ours: Version, theirs: Version) -> tuple[list[Part], Iterator[bytes]]:
    """The compose parts of the merged file and the generator of its inline bytes (the new
    header, then each averaged tensor, computed block by block)."""
    assert ours.layout is not None
    chosen = [(s, (theirs if s.take == "theirs" else ours).entry(s.name)) for s in plan.steps]
    header = build_header([(s.name, e.dtype, e.shape, e.length) for s, e in chosen], ours.layout.metadata)
    parts: list[Part] = [InlinePart(len(header))]
    for s, e in chosen:
        if s.take == "average":
            parts.append(InlinePart(e.length))
        else:
            parts.append(CopyPart((theirs if s.take == "theirs" else ours).pointer.oid, e.offset, e.length))

    def inline() -> Iterator[bytes]:
        yield header
        for s, e in chosen:
            if s.take != "average":
                continue
            t = theirs.entry(s.name)
            size = numeric.block_bytes(e.dtype)
            a = prefetched(rechunk(ours.source.stream(e.offset, e.length), size))
            b = prefetched(rechunk(theirs.source.stream(t.offset, t.length), size))
            for x, y in zip(a, b, strict=True):
                yield numeric.average(x, y, e.dtype)

    return coalesce(parts), inline()


def merge(base_path: Path, ours_path: Path, theirs_path: Path, path: str, *, strategy: str | None,
          connect: Callable[[], DaemonClient], err: TextIO = sys.stderr) -> int:
    """Run the merge driver; 0 with the merged pointer in ours_path, 1 on a conflict (ours_path
    left as ours' pointer, the conflicting tensors named on `err`)."""
    strategy = strategy or configured_strategy(repo_top())
    base = read_pointer(base_path, f"the base version of {path}", may_be_empty=True)
    ours_p = read_pointer(ours_path, f"our version of {path}", may_be_empty=False)
    theirs_p = read_pointer(theirs_path, f"their version of {path}", may_be_empty=False)
    assert ours_p is not None and theirs_p is not None
    if ours_p.oid == theirs_p.oid or (base is not None and base.oid == theirs_p.oid):
        return 0  # %A already holds the result
    if base is not None and base.oid == ours_p.oid:
        ours_path.write_text(theirs_p.to_text())
        return 0
    formats = {p.get("format") for p in (base, ours_p, theirs_p) if p is not None}
    if formats != {"safetensors"}:
        if strategy == "ours":
            return 0
        if strategy == "theirs":
            ours_path.write_text(theirs_p.to_text())
            return 0
        kinds = ", ".join(sorted(str(f) for f in formats))
        print(f"gitmld: cannot merge {path}: both sides changed it and it is not a safetensors file ({kinds});"
              " gitmld merges safetensors files tensor by tensor. Pick a side with"
              f" `git checkout --ours -- {path}` or `--theirs`, then `git add {path}`", file=err)
        return 1

    remote = load_remote_config().to_json()
    sources: list[StoredSource] = []

    def version(label: str, p: Pointer) -> Version:
        source = StoredSource(connect, remote, p.oid, p.size, path, f"{label}:{path}")
        sources.append(source)
        return Version(label, p, source)

    try:
        ours, theirs = version("ours", ours_p), version("theirs", theirs_p)
        base_keys = table(version("base", base), path) if base is not None else {}
        plan = plan_merge(base_keys, table(ours, path), table(theirs, path), strategy)
        for c in plan.resolved:
            print(f"gitmld: {path}: {c.name}: {c.reason}", file=err)
        if plan.conflicts:
            report_conflicts(plan, path, strategy, err)
            return 1
        parts, inline = assemble(plan, ours, theirs)
        parts_json = parts_to_json(parts)
        if len(json.dumps(parts_json)) > MAX_FRAME - 64 * 1024:  # room for the remote and path
            raise CommandError(f"the merge of {path} needs {len(parts)} pieces, too many for one request;"
                               " merge it by hand")
        client = connect()
        try:
            answer = client.compose(remote, path, parts_json, inline)
        finally:
            client.close()
    finally:
        for s in sources:
            s.close()
    if answer.get("size") != total_size(parts):
        raise CommandError(f"the daemon stored {answer.get('size')} bytes for the merge of {path},"
                           f" not {total_size(parts)}")
    ours_path.write_text(str(answer["pointer"]))
    kept = len(plan.steps) - plan.count("theirs") - plan.count("average")
    print(f"gitmld: merged {path} tensor by tensor: {plan.count('theirs')} from theirs,"
          f" {plan.count('average')} averaged, {kept} from ours", file=err)
    return 0


def report_conflicts(plan: MergePlan, path: str, strategy: str, err: TextIO) -> None:
    n = len(plan.conflicts)
    print(f"gitmld: CONFLICT in {path}: {n} tensor{'s' if n != 1 else ''} changed on both sides:", file=err)
    for c in plan.conflicts[:50]:
        print(f"gitmld:   {c.name}: {c.reason}", file=err)
    if n > 50:
        print(f"gitmld:   ... and {n - 50} more", file=err)
    pick = f"pick a side with `git checkout --ours -- {path}` (or --theirs), then `git add {path}`"
    if strategy == "conflict":
        print("gitmld: set a strategy (git config gitmld.mergeStrategy ours|theirs|average) and merge again,"
              f" or {pick}", file=err)
    else:
        print(f"gitmld: the strategy {strategy!r} cannot resolve them; {pick}", file=err)

