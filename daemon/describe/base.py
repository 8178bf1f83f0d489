"""The describer plug-in contract: how a describer sees a file and what it may raise.

A describer never gets a path or a whole file. It gets a `Reader` with random access and a
byte counter, so that describing a 10 GiB checkpoint costs the few headers it needs, and a
malformed file can only make it raise `DescribeError` (the registry then falls back to the
generic description plus a `note`; describing never fails a `git add`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

Line = tuple[str, str]
"""One description line: (key, value), as written to the pointer file as `key value`."""


class DescribeError(Exception):
    """The file is truncated, malformed, hostile or too large to describe within the limits.

    The message is short and safe to put in a pointer `note` line: it names what is wrong,
    never file content beyond a few bytes.
    """


class Decline(Exception):
    """Raised by `describe` when the sniff was optimistic and the file is not this format.

    The registry then tries the next describer, as if `sniff` had answered False (a zip that
    holds no `data.pkl` is not a PyTorch checkpoint, but may be an .npz).
    """


@runtime_checkable
class Reader(Protocol):
    """Random access to one file's bytes; implementations count the bytes they return."""

    @property
    def size(self) -> int:
        """Total file size in bytes."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; shorter only at the end of the file."""
        ...


@runtime_checkable
class Describer(Protocol):
    """A format: a cheap content sniff on the first bytes, then a bounded description."""

    name: str

    def sniff(self, head: bytes, size: int) -> bool:
        """Does the file start like this format? `head` is the first bytes (up to 8 KiB)."""
        ...

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        """Description lines, `format <name>` first; raise DescribeError or Decline."""
        ...


class DigestDescriber(Describer, Protocol):
    """A describer that can show per-tensor content digests (set `uses_tensor_digests = True`).

    The store computes digests while streaming the file in (it reads every byte anyway); the
    registry passes them as `tensor_digests` {tensor name: 16 hex} only to such describers.
    """

    uses_tensor_digests: bool

    def describe(
        self,
        reader: Reader,
        *,
        max_tensor_lines: int,
        tensor_digests: Mapping[str, str] | None = None,
    ) -> list[Line]: ...
