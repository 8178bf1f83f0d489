"""safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor data.

Only the header is read (its length is checked against the file size and a cap before any
byte of it is read); tensor data is never touched.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping

from gitmld.proto.safetensors_header import MAX_HEADER_LEN, no_duplicate_keys

from .base import DescribeError, Line, Reader
from .lines import TensorDesc, pairs, tensor_section, tensor_summary

DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64,
    "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


def _tensor(name: str, entry: object, data_size: int) -> tuple[TensorDesc, bool]:
    """One header entry -> (its description, whether its offsets agree with dtype and shape)."""
    if not isinstance(entry, dict):
        raise DescribeError(f"safetensors entry {name[:64]!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list):
        raise DescribeError(f"safetensors entry {name[:64]!r} lacks a dtype or shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape):
        raise DescribeError(f"safetensors entry {name[:64]!r} has a bad shape")
    t = TensorDesc(name, dtype, tuple(shape))
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        return t, False
    bits = DTYPE_BITS.get(dtype)
    return t, bits is None or offsets[1] - offsets[0] == math.ceil(math.prod(t.shape) * bits / 8)


class SafetensorsDescriber:
    """Tensors (name, dtype, shape, optional content digest), parameter count, `__metadata__`."""

    name = "safetensors"
    uses_tensor_digests = True

    def sniff(self, head: bytes, size: int) -> bool:
        if len(head) < 10:
            return False
        (n,) = struct.unpack_from("<Q", head)
        return 2 <= n <= size - 8 and head[8:9] == b"{"

    def describe(
        self,
        reader: Reader,
        *,
        max_tensor_lines: int,
        tensor_digests: Mapping[str, str] | None = None,
    ) -> list[Line]:
        first = reader.read(0, 8)
        if len(first) < 8:
            raise DescribeError("truncated safetensors header length")
        (n,) = struct.unpack("<Q", first)
        if n > reader.size - 8:
            raise DescribeError(f"safetensors header length {n} exceeds the file size {reader.size}")
        if n > MAX_HEADER_LEN:
            raise DescribeError(f"safetensors header length {n} exceeds {MAX_HEADER_LEN}")
        raw = reader.read(8, n)
        if len(raw) != n:
            raise DescribeError("truncated safetensors header")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
        except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, or a key given twice
            raise DescribeError(f"safetensors header is not JSON ({str(exc)[:100]})") from None
        if not isinstance(header, dict):
            raise DescribeError("safetensors header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise DescribeError("safetensors __metadata__ is not a string-to-string map")
        data_size = reader.size - 8 - n
        tensors, bad = [], 0
        for name, entry in header.items():
            t, ok = _tensor(name, entry, data_size)
            tensors.append(t)
            bad += not ok
        lines: list[Line] = [("format", "safetensors"), *tensor_summary(tensors)]
        if metadata:
            lines.append(("metadata", pairs(metadata)))
        if bad:
            lines.append(("note", f"{bad} tensors have data_offsets that disagree with dtype, shape or size"))
        lines += tensor_section(tensors, max_lines=max_tensor_lines, digests=tensor_digests)
        return lines
