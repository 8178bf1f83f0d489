"""Parse a safetensors header from the first bytes of a stream, bounded and without raising.

A safetensors file is ``u64le N`` + ``N`` bytes of JSON + the data region. The JSON maps tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
region, which starts at ``8 + N``) plus an optional ``"__metadata__"`` map of strings.

The chunker uses the layout to cut at every tensor boundary, so it must never trust a header
that lies: anything invalid (absurd N, bad UTF-8 or JSON, unknown dtype, a size that does not
match the shape, overlapping ranges) makes :func:`parse_layout` return ``None`` and the file is
chunked as plain bytes. Gaps between tensors are tolerated (the chunker cuts them as opaque
bytes); the safetensors library itself never writes any.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass

# MAX_HEADER_LEN is also the largest header buffered before chunking starts: the safetensors
# library refuses headers over 100 MB (``MAX_HEADER_SIZE``); real ones are tens to hundreds of KiB.
from gitmld.proto.safetensors_header import MAX_HEADER_LEN, no_duplicate_keys

#: Size in bits of one element of each known dtype (sub-byte dtypes are packed).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


@dataclass(frozen=True, slots=True)
class TensorSpan:
    """One tensor's place in the data region (``begin``/``end`` relative to ``data_start``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.begin

    @property
    def item_size(self) -> int:
        """Bytes per element, 1 for sub-byte dtypes: the alignment of cuts inside the tensor."""
        return max(1, DTYPE_BITS[self.dtype] // 8)


@dataclass(frozen=True, slots=True)
class SafetensorsLayout:
    """A validated header: tensors sorted by data offset, non-overlapping."""

    header_len: int  # N, the JSON length
    tensors: tuple[TensorSpan, ...]
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        """File offset of the data region."""
        return 8 + self.header_len

    @property
    def data_end(self) -> int:
        """File offset just past the last tensor byte."""
        return self.data_start + (self.tensors[-1].end if self.tensors else 0)


def header_length(prefix: bytes | bytearray | memoryview) -> int | None:
    """``N`` from the first 8 bytes, or ``None`` when it cannot be a safetensors header.

    With a 9th byte the check is sharper: the JSON must start with ``{``. This lets the
    chunker give up early instead of buffering up to 100 MB of a file that is not safetensors.
    """
    if len(prefix) < 8:
        return None
    (n,) = struct.unpack_from("<Q", prefix)
    if n < 2 or n > MAX_HEADER_LEN:
        return None
    if len(prefix) > 8 and prefix[8] != ord("{"):
        return None
    return int(n)


def parse_layout(head: bytes | bytearray | memoryview) -> SafetensorsLayout | None:
    """Validate the header held in ``head`` (at least ``8 + N`` bytes); ``None`` if invalid."""
    n = header_length(head)
    if n is None or len(head) < 8 + n:
        return None
    try:
        doc = json.loads(bytes(head[8 : 8 + n]).decode("utf-8"), object_pairs_hook=no_duplicate_keys)
        return _validate(n, doc)
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and our own rejections.
        return None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _validate(n: int, doc: object) -> SafetensorsLayout:
    if not isinstance(doc, dict):
        raise ValueError("header is not a JSON object")
    metadata = doc.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("__metadata__ is not a map of strings")
    spans = []
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {name!r}: bad entry")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise ValueError(f"tensor {name!r}: unknown dtype")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise ValueError(f"tensor {name!r}: bad shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise ValueError(f"tensor {name!r}: bad data_offsets")
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
        bits = numel * DTYPE_BITS[dtype]
        if begin > end or bits % 8 or bits // 8 != end - begin:
            raise ValueError(f"tensor {name!r}: size does not match shape")
        spans.append(TensorSpan(name, dtype, tuple(shape), begin, end))
    spans.sort(key=lambda s: (s.begin, s.end))
    for prev, cur in itertools.pairwise(spans):
        if cur.begin < prev.end:
            raise ValueError(f"tensors {prev.name!r} and {cur.name!r} overlap")
    return SafetensorsLayout(header_len=n, tensors=tuple(spans), metadata=metadata)
