"""The parts of a `compose` request (docs/ARCHITECTURE.md, "Ops"), sans-IO.

`compose` stores a new file made of pieces of stored files and of bytes the client sends, so
a merge driver can write a merged model without shipping the unchanged tensors through the
client: the daemon copies those by ranged reads of its own store, and the tensor-aware
chunker gives them the chunks they already had, so they dedup instead of being uploaded again.

    parts   = [part, ...]                      in the order of the new file
    part    = {"oid": "sha256:<hex>", "offset": n, "length": n}   bytes copied from a stored file
            | {"inline": n}                    the next n bytes of the client's DATA stream

The client sends the inline parts' bytes, concatenated in order, as DATA* END after the
REQUEST; their total must be exactly the sum of the inline lengths. Standard library only.
"""

from __future__ import annotations

import re

from gitmld.proto.pktline import Record

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the filter ~5 ms
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

_OID = re.compile(r"sha256:[0-9a-f]{64}\Z")


class ComposeError(ValueError):
    """A malformed parts list, or inline DATA that does not match it."""


class CopyPart(Record):
    """`length` bytes of the stored file `oid` from `offset`."""

    __slots__ = ("oid", "offset", "length")  # noqa: RUF023 - field order
    oid: str
    offset: int
    length: int

    def __init__(self, oid: str, offset: int, length: int) -> None:
        super().__init__(oid, offset, length)


class InlinePart(Record):
    """`length` bytes that the client sends in its DATA stream."""

    __slots__ = ("length",)
    length: int

    def __init__(self, length: int) -> None:
        super().__init__(length)


Part = CopyPart | InlinePart


def coalesce(parts: Iterable[Part]) -> list[Part]:
    """Join neighbours that continue each other (a run of unchanged tensors becomes one copy)
    and drop empty parts: the request stays small whatever the tensor count."""
    out: list[Part] = []
    for part in parts:
        if part.length == 0:
            continue
        prev = out[-1] if out else None
        if isinstance(part, CopyPart) and isinstance(prev, CopyPart) and prev.oid == part.oid \
                and prev.offset + prev.length == part.offset:
            out[-1] = CopyPart(prev.oid, prev.offset, prev.length + part.length)
        elif isinstance(part, InlinePart) and isinstance(prev, InlinePart):
            out[-1] = InlinePart(prev.length + part.length)
        else:
            out.append(part)
    return out


def parts_to_json(parts: Sequence[Part]) -> list[dict[str, Any]]:
    return [{"oid": p.oid, "offset": p.offset, "length": p.length} if isinstance(p, CopyPart)
            else {"inline": p.length} for p in parts]


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ComposeError(f"{what} must be a non-negative integer, not {value!r}")
    return value


def parts_from_json(raw: object) -> list[Part]:
    """Validate a request's `parts`; ComposeError says which part is wrong and why."""
    if not isinstance(raw, list):
        raise ComposeError("'parts' must be a list of {\"oid\", \"offset\", \"length\"} or {\"inline\"} objects")
    parts: list[Part] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ComposeError(f"part {i} is not an object")
        if set(item) == {"inline"}:
            parts.append(InlinePart(_count(item["inline"], f"part {i}: 'inline'")))
        elif set(item) == {"oid", "offset", "length"}:
            oid = item["oid"]
            if not isinstance(oid, str) or not _OID.match(oid):
                raise ComposeError(f"part {i}: 'oid' {oid!r} is not sha256:<64 lowercase hex digits>")
            parts.append(CopyPart(oid, _count(item["offset"], f"part {i}: 'offset'"),
                                  _count(item["length"], f"part {i}: 'length'")))
        else:
            raise ComposeError(f"part {i} has the fields {sorted(item)}; a part is either"
                               " {\"oid\", \"offset\", \"length\"} or {\"inline\"}")
    return parts


def total_size(parts: Iterable[Part]) -> int:
    return sum(p.length for p in parts)


class InlineSplitter:
    """Cuts the client's DATA payloads at the inline parts' boundaries.

    `feed(data)` returns (inline part number, bytes) pieces in order; more bytes than the
    parts declare is a ComposeError, and so is `finish()` (END) before they are all there.
    """

    def __init__(self, lengths: Sequence[int]) -> None:
        self._lengths = list(lengths)
        self._index = 0
        self._left = self._lengths[0] if self._lengths else 0
        self._skip_empty()
        self.received = 0

    def _skip_empty(self) -> None:
        while self._index < len(self._lengths) and self._left == 0:
            self._index += 1
            self._left = self._lengths[self._index] if self._index < len(self._lengths) else 0

    @property
    def expected(self) -> int:
        return sum(self._lengths)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        view = memoryview(data)
        while view:
            if self._index >= len(self._lengths):
                raise ComposeError(f"the client sent more inline bytes than its parts declare ({self.expected})")
            take = min(self._left, len(view))
            out.append((self._index, bytes(view[:take])))
            view = view[take:]
            self.received += take
            self._left -= take
            self._skip_empty()
        return out

    def finish(self) -> None:
        if self._index < len(self._lengths):
            raise ComposeError(f"the client ended its data after {self.received} inline bytes; its parts"
                               f" declare {self.expected}")
