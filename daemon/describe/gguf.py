"""GGUF (llama.cpp): magic, version, metadata key/values, tensor infos; never tensor data.

Every length is checked against the bytes left in the file before anything is skipped or
read, so a string "of terabytes" is an error, not an allocation. Large arrays (tokenizer
vocabularies) are stepped over element by element without keeping them; that walk reads the
array's bytes, which for a 128k-token vocabulary is a few MiB.
"""

from __future__ import annotations

import struct

from .base import DescribeError, Line, Reader
from .lines import TensorDesc, pairs, plain, tensor_section, tensor_summary
from .readers import Cursor

GGUF_MAGIC = b"GGUF"
MAX_KEY = 65535
MAX_INLINE_STRING = 64 * 1024
MAX_DIMS = 8
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_TYPE_NAMES = {
    0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32",
    7: "BOOL", 8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64",
}  # fmt: skip
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
    18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
    25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
    39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}  # fmt: skip
FILE_TYPES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M",
    13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS",
    21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS", 24: "MOSTLY_IQ1_S",
    25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S", 29: "MOSTLY_IQ2_M",
    30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0", 37: "MOSTLY_TQ2_0",
    38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4", 40: "MOSTLY_Q1_0", 1024: "GUESSED",
}  # fmt: skip
_SHOWN_APART = {"general.architecture", "general.name", "general.file_type"}


class _Gguf:
    """A cursor with the file's byte order and the version's width for counts and lengths."""

    def __init__(self, cursor: Cursor, endian: str, version: int) -> None:
        self.cur, self.e = cursor, endian
        self.count_fmt = "I" if version == 1 else "Q"

    def num(self, fmt: str) -> int | float | bool:
        s = struct.Struct(self.e + fmt)
        value: int | float | bool = s.unpack(self.cur.read(s.size))[0]
        return value

    def count(self, min_each: int, what: str) -> int:
        n = int(self.num(self.count_fmt))
        if n * max(min_each, 1) > self.cur.remaining:
            raise DescribeError(f"GGUF {what} count {n} exceeds what the file can hold")
        return n

    def string(self, limit: int = MAX_INLINE_STRING) -> str:
        n = self.count(1, "string length")
        if n > limit:
            head = self.cur.read(64).decode("utf-8", "replace")
            self.cur.skip(n - 64)
            return f"{head}…<{n} bytes>"
        return self.cur.read(n).decode("utf-8", "replace")

    def value(self, vtype: int, depth: int = 0) -> object:
        if vtype in _SCALARS:
            return self.num(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            if depth > 2:
                raise DescribeError("GGUF arrays nested too deeply")
            etype = int(self.num("I"))
            if etype in _SCALARS:
                size = struct.calcsize(_SCALARS[etype])
                n = self.count(size, "array")
                self.cur.skip(n * size)
            elif etype in (8, 9):
                n = self.count(8 if etype == 8 else 12, "array")
                for _ in range(n):
                    if etype == 8:
                        self.cur.skip(self.count(1, "string length"))
                    else:
                        self.value(9, depth + 1)
            else:
                raise DescribeError(f"GGUF array of unknown type {etype}")
            return f"[{_TYPE_NAMES[etype]};{n}]"
        raise DescribeError(f"GGUF value of unknown type {vtype}")


class GgufDescriber:
    """`format gguf`: version, arch, name, file type, other scalar metadata, tensors by quant type."""

    name = "gguf"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(GGUF_MAGIC)

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        cur = Cursor(reader)
        if cur.read(4) != GGUF_MAGIC:
            raise DescribeError("not GGUF")
        raw = cur.read(4)
        le, be = struct.unpack("<I", raw)[0], struct.unpack(">I", raw)[0]
        endian, version = ("<", le) if le <= 0xFFFF else (">", be)
        if version not in (1, 2, 3):
            raise DescribeError(f"GGUF version {version} is not known")
        g = _Gguf(cur, endian, version)
        n_tensors = g.count(24, "tensor")
        n_kv = g.count(13, "key/value")
        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key = g.string(MAX_KEY)
            meta[key] = g.value(int(g.num("I")))
        tensors = []
        for _ in range(n_tensors):
            name = g.string(MAX_KEY)
            ndim = int(g.num("I"))
            if ndim > MAX_DIMS:
                raise DescribeError(f"GGUF tensor with {ndim} dimensions")
            dims = [int(g.num("Q")) for _ in range(ndim)]
            qtype = int(g.num("I"))
            g.num("Q")  # data offset
            tensors.append(TensorDesc(name, GGML_TYPES.get(qtype, f"TYPE{qtype}"), tuple(reversed(dims))))
        lines: list[Line] = [("format", "gguf"), ("gguf-version", str(version))]
        if isinstance(meta.get("general.architecture"), str):
            lines.append(("arch", str(meta["general.architecture"])))
        if isinstance(meta.get("general.name"), str):
            lines.append(("name", str(meta["general.name"])))
        file_type = meta.get("general.file_type")
        if isinstance(file_type, int) and not isinstance(file_type, bool):
            lines.append(("file-type", FILE_TYPES.get(file_type, str(file_type))))
        rest = {k: plain(v) for k, v in meta.items() if k not in _SHOWN_APART}
        if rest:
            lines.append(("metadata", pairs(rest)))
        lines += tensor_summary(tensors)
        return lines + tensor_section(tensors, max_lines=max_tensor_lines)
