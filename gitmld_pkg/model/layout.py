"""safetensors headers: read one from any byte source, and write one for a merged file.

    file = u64le N | N bytes of JSON | data
    JSON = {"__metadata__": {str: str}?, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}

Offsets in the JSON are relative to the data region (which starts at 8 + N); `TensorEntry`
holds absolute file offsets, which is what ranged reads need. Unlike the chunker's parser
(daemon/store/safetensors_layout.py, which quietly falls back to plain chunking), this one
raises `LayoutError` saying what is wrong, because `gitmld diff` and the merge driver must
refuse a file they do not understand rather than guess.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from gitmld.proto.safetensors_header import MAX_HEADER_LEN, no_duplicate_keys

#: Bytes per element of the dtypes whose elements are whole bytes (safetensors' names).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


class LayoutError(ValueError):
    """The bytes are not a safetensors file this code can work with."""


class Readable(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the tensor's first byte
    length: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.shape) if self.shape else "scalar"


@dataclass(frozen=True, slots=True)
class Layout:
    header_len: int  # 8 + N: where the data region starts
    tensors: tuple[TensorEntry, ...]  # in file (data offset) order
    metadata: dict[str, str] | None

    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}


def read_layout(source: Readable, what: str) -> Layout:
    """The header of `source`, with two small reads (the length, then the JSON)."""
    if source.size < 8:
        raise LayoutError(f"{what} is {source.size} bytes: too short for a safetensors file")
    (n,) = struct.unpack("<Q", source.read(0, 8))
    if n < 2 or n > MAX_HEADER_LEN or 8 + n > source.size:
        raise LayoutError(f"{what} is not a safetensors file (header length {n}, file size {source.size})")
    return parse_header(source.read(8, n), source.size, what)


def parse_header(raw: bytes, size: int, what: str) -> Layout:
    """Validate the JSON header `raw` of a file of `size` bytes."""
    data_start = 8 + len(raw)
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LayoutError(f"{what}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise LayoutError(f"{what}: the safetensors header is not a JSON object")
    metadata = doc.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise LayoutError(f"{what}: __metadata__ is not a map of strings")
    tensors = [_entry(name, info, data_start, size, what) for name, info in doc.items()]
    tensors.sort(key=lambda t: (t.offset, t.length))
    for prev, cur in itertools.pairwise(tensors):
        if cur.offset < prev.offset + prev.length:
            raise LayoutError(f"{what}: tensors {prev.name!r} and {cur.name!r} overlap")
    return Layout(data_start, tuple(tensors), metadata)


def _entry(name: str, info: Any, data_start: int, size: int, what: str) -> TensorEntry:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise LayoutError(f"{what}: tensor {name!r} has no dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise LayoutError(f"{what}: tensor {name!r} has a bad dtype or shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)) \
            or offsets[0] > offsets[1] or data_start + offsets[1] > size:
        raise LayoutError(f"{what}: tensor {name!r} has data_offsets {offsets!r} outside the file")
    entry = TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], offsets[1] - offsets[0])
    itemsize = DTYPE_SIZES.get(dtype)
    if itemsize is not None and entry.numel * itemsize != entry.length:
        raise LayoutError(f"{what}: tensor {name!r} ({dtype} {entry.shape_text}) has {entry.length} bytes,"
                          f" not {entry.numel * itemsize}")
    return entry


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def build_header(tensors: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None) -> bytes:
    """`u64le N` + the JSON header of a file holding `tensors` (name, dtype, shape, length)
    back to back in this order. The JSON is padded with spaces to a multiple of 8 bytes, as
    the safetensors library does, so the data region stays aligned."""
    doc: dict[str, Any] = {}
    if metadata is not None:
        doc["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, length in tensors:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + length]}
        offset += length
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw
