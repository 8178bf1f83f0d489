"""The text conventions of description lines, shared by every describer (docs/DESCRIBERS.md).

Pointers are read by people in `git diff` and must be byte-identical on every machine, so all
formatting lives here: sorting, escaping, shortening with a hash (deterministic, collision-
resistant), the per-tensor line limit (< 100 bytes) and the summary that replaces per-tensor
lines beyond `max_tensor_lines`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .base import Line

KEY_RE = re.compile(r"[a-z][a-z0-9_.-]*\Z")
DIGEST_RE = re.compile(r"[0-9a-f]{8,64}\Z")
MAX_VALUE_BYTES = 1024  # one summary line (metadata, classes, groups)
MAX_TENSOR_LINE_BYTES = 99  # `tensor <value>\n`: under 100 bytes with its newline
MAX_ITEM_BYTES = 96  # one value inside a k=v list
ELLIPSIS = "…"
REPEATABLE = frozenset({"tensor"})


def short_hash(text: str, n: int = 8) -> str:
    """A short, stable fingerprint of text (blake2b, hex), marking what was shortened."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()[:n]


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _head(text: str, limit: int) -> str:
    """The longest prefix of text whose UTF-8 is at most `limit` bytes (never splits a char)."""
    out, used = [], 0
    for ch in text:
        used += _nbytes(ch)
        if used > limit:
            break
        out.append(ch)
    return "".join(out)


def _tail(text: str, limit: int) -> str:
    return _head(text[::-1], limit)[::-1]


def shorten(text: str, limit: int) -> str:
    """text itself if it fits in `limit` UTF-8 bytes, else `head…hash…tail` of that size."""
    if _nbytes(text) <= limit:
        return text
    marker = f"{ELLIPSIS}{short_hash(text)}{ELLIPSIS}"
    room = max(limit - _nbytes(marker), 0)
    return _head(text, room - room // 2) + marker + _tail(text, room // 2)


def escape(text: str, specials: str = "") -> str:
    """Percent-encode '%', `specials` and every non-printable character (as UTF-8 bytes)."""
    out = []
    for ch in text:
        if ch == "%" or ch in specials or not ch.isprintable():
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def clean_value(text: str, limit: int = MAX_VALUE_BYTES) -> str:
    """Any text as a valid value: one printable line, no outer spaces, at most `limit` bytes."""
    value = escape(text).strip(" ")
    return shorten(value, limit) if value else "-"


def word(text: str, limit: int = 24) -> str:
    """A dtype-like token ([A-Za-z0-9_]+): other characters become '_'."""
    token = re.sub(r"[^A-Za-z0-9_]", "_", text)[:limit]
    return token or "UNKNOWN"


def plain(value: object) -> str:
    """A plain Python value as text, the same on every machine (repr of floats is exact)."""
    if value is None or isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return "b:" + value[:32].hex() + (ELLIPSIS if len(value) > 32 else "")
    return type(value).__name__


def joined(items: Iterable[str], limit: int = MAX_VALUE_BYTES) -> str:
    """Unique items, sorted, escaped, comma-joined; past `limit` bytes the rest is `…+N`."""
    pieces = [shorten(escape(item, ",").strip(" ") or "-", MAX_ITEM_BYTES * 2) for item in sorted(set(items))]
    return join_capped(pieces, limit)


def join_capped(pieces: Sequence[str], limit: int = MAX_VALUE_BYTES) -> str:
    """Already-escaped pieces, comma-joined in order; what does not fit becomes `…+N`."""
    out: list[str] = []
    used = 0
    for i, piece in enumerate(pieces):
        more = f"{ELLIPSIS}+{len(pieces) - i}"
        if used + _nbytes(piece) + 1 + _nbytes(more) > limit:
            out.append(more)
            break
        out.append(piece)
        used += _nbytes(piece) + 1
    return ",".join(out) or "-"


def pairs(mapping: Mapping[str, str], limit: int = MAX_VALUE_BYTES) -> str:
    """`k=v,k2=v2`, sorted by key, escaped (',' '=' '%'), long values shortened, capped."""
    items = []
    for key in sorted(mapping):
        k = escape(key, ",= ")
        v = shorten(escape(mapping[key], ","), MAX_ITEM_BYTES)
        items.append(f"{k}={v}".strip(" "))
    return join_capped(items, limit)


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


@dataclass(frozen=True, slots=True)
class TensorDesc:
    """What a description says about one tensor or array: never its data."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def tensor_summary(
    tensors: Sequence[TensorDesc], *, count_key: str = "tensors", total_key: str = "params"
) -> list[Line]:
    """`tensors N`, `params N` (elements), `dtypes A,B`: the lines every tensor format shows."""
    lines: list[Line] = [(count_key, str(len(tensors)))]
    if tensors:
        lines.append((total_key, str(sum(t.numel for t in tensors))))
        lines.append(("dtypes", joined(word(t.dtype) for t in tensors)))
    return lines


def tensor_line(t: TensorDesc, digest: str | None = None) -> str | None:
    """The value of one `tensor` line, or None when even a shortened name cannot fit."""
    dtype = word(t.dtype, 16)
    shape = shape_text(t.shape)
    tail = f" {dtype} {shape}" + (f" {digest}" if digest else "")
    room = MAX_TENSOR_LINE_BYTES - _nbytes("tensor \n") - _nbytes(tail)
    if room < 16:
        return None
    name = escape(t.name, " ") or "-"
    return shorten(name, room) + tail


def group_name(name: str) -> str:
    """`model.layers.*` for `model.layers.7.mlp.weight`; `a.b.*` when no part is a number."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join([*parts[:i], "*"])
    return ".".join([*parts[:-1], "*"]) if len(parts) > 1 else name


def tensor_section(
    tensors: Sequence[TensorDesc],
    *,
    max_lines: int,
    digests: Mapping[str, str] | None = None,
) -> list[Line]:
    """Per-tensor lines sorted by name, or beyond `max_lines` a summary instead.

    The summary is `tensors-by-dtype`, `tensor-groups` (counts per name prefix up to the first
    numeric part) and `tensors-digest`, a hash over every tensor's line so that any change to
    any tensor still changes the pointer.
    """
    ordered = sorted(tensors, key=lambda t: (t.name, t.dtype, t.shape))
    found = digests or {}

    def digest_of(t: TensorDesc) -> str | None:
        d = found.get(t.name)
        return d if d is not None and DIGEST_RE.match(d) else None

    if len(ordered) <= max_lines:
        lines: list[Line] = []
        unlisted = 0
        for t in ordered:
            value = tensor_line(t, digest_of(t))
            if value is None:
                unlisted += 1
            else:
                lines.append(("tensor", value))
        return ([("tensors-unlisted", str(unlisted))] if unlisted else []) + lines
    by_dtype = Counter(word(t.dtype) for t in ordered)
    groups = Counter(group_name(t.name) for t in ordered)
    fingerprint = hashlib.blake2b(digest_size=8)
    for t in ordered:
        d = digest_of(t) or ""
        fingerprint.update(f"{t.name}\0{t.dtype}\0{shape_text(t.shape)}\0{d}\n".encode("utf-8", "surrogatepass"))
    return [
        ("tensors-by-dtype", joined(f"{k}:{v}" for k, v in by_dtype.items())),
        ("tensor-groups", joined(f"{k}:{v}" for k, v in groups.items())),
        ("tensors-digest", fingerprint.hexdigest()),
    ]


def finalize(lines: Iterable[Line]) -> list[Line]:
    """Enforce the pointer's rules on any describer's output (plug-ins included).

    Bad keys are dropped, values are cleaned, a repeated non-`tensor` key keeps its first
    value, and `format` comes first.
    """
    out: list[Line] = []
    seen: set[str] = set()
    for key, value in lines:
        if not isinstance(key, str) or not KEY_RE.match(key) or key in {"version", "oid", "size"}:
            continue
        if key in seen and key not in REPEATABLE:
            continue
        seen.add(key)
        text = value if isinstance(value, str) else str(value)
        limit = MAX_TENSOR_LINE_BYTES - _nbytes("tensor \n") if key == "tensor" else MAX_VALUE_BYTES
        valid = text and text.isprintable() and text == text.strip(" ") and _nbytes(text) <= limit
        if not valid and key == "tensor":
            continue  # a tensor line cannot be repaired without breaking its fields
        out.append((key, text if valid else clean_value(text, limit)))
    formats = [line for line in out if line[0] == "format"]
    rest = [line for line in out if line[0] != "format"]
    return (formats or [("format", "unknown")]) + rest
