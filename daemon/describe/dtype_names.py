"""One dtype vocabulary for every format: safetensors' names (F32, BF16, I64, ...).

The same weights saved as .safetensors, .pt or .npy then read the same in a diff, and a
pointer's dtype is always a single word.
"""

from __future__ import annotations

import re

# numpy kind+itemsize -> name (the byte order is handled separately)
_NUMPY = {
    "f2": "F16", "f4": "F32", "f8": "F64", "f16": "F128",
    "i1": "I8", "i2": "I16", "i4": "I32", "i8": "I64",
    "u1": "U8", "u2": "U16", "u4": "U32", "u8": "U64",
    "b1": "BOOL", "c8": "C64", "c16": "C128", "c32": "C256",
}  # fmt: skip
_NUMPY_DESCR = re.compile(r"([<>|=]?)([a-zA-Z])(\d*)(?:\[(\w+)\])?\Z")


def numpy_dtype_name(descr: str) -> str:
    """'<f4' -> 'F32', '>f4' -> 'F32_BE', '|O' -> 'OBJECT', '<U10' -> 'U10_STR', '<M8[ns]' -> 'M8_ns'."""
    m = _NUMPY_DESCR.match(descr)
    if not m:
        return "STRUCT"
    order, kind, size, unit = m.groups()
    suffix = "_BE" if order == ">" else ""
    if kind == "O":
        return "OBJECT"
    name = _NUMPY.get(f"{kind}{size}")
    if name:
        return name + (suffix if size not in ("1", "") else "")
    if kind in "US":
        return f"{kind}{size}_STR"
    if kind == "V":
        return f"V{size}"
    return f"{kind}{size}" + (f"_{unit}" if unit else "") + suffix


def numpy_itemsize(descr: str) -> int | None:
    """Bytes per element of a simple numpy descr ('<U10' is 40), None when not simple."""
    m = _NUMPY_DESCR.match(descr)
    if not m or not m.group(3):
        return None
    kind, size = m.group(2), int(m.group(3))
    return size * 4 if kind == "U" else size


# torch.<X>Storage classes of pickled tensors (the legacy typed storages)
TORCH_STORAGE = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexDoubleStorage": "C128",
    "ComplexFloatStorage": "C64", "QInt8Storage": "QI8", "QInt32Storage": "QI32",
    "QUInt8Storage": "QU8", "QUInt4x2Storage": "QU4X2", "QUInt2x4Storage": "QU2X4",
    "UntypedStorage": "U8",
}  # fmt: skip

# torch.<dtype> globals (as pickled for _rebuild_tensor_v3 and meta tensors)
TORCH_DTYPE = {
    "float64": "F64", "double": "F64", "float32": "F32", "float": "F32", "float16": "F16",
    "half": "F16", "bfloat16": "BF16", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32",
    "int16": "I16", "short": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32",
    "uint64": "U64", "bool": "BOOL", "complex64": "C64", "cfloat": "C64", "complex128": "C128",
    "cdouble": "C128", "complex32": "C32", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
    "float4_e2m1fn_x2": "F4_E2M1_X2",
}  # fmt: skip


def torch_dtype_name(name: str) -> str:
    """A torch dtype attribute name ('bfloat16') as a pointer dtype ('BF16')."""
    return TORCH_DTYPE.get(name, re.sub(r"[^A-Za-z0-9_]", "_", name.upper()) or "UNKNOWN")
