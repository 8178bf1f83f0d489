"""Tensor bytes as numbers: decoding safetensors dtypes, change statistics, averaging.

Everything works block by block on raw little-endian bytes, so a 2 GB embedding never has
to be in memory at once. bf16 is the high half of a float32: widening is a shift, narrowing
rounds to nearest, ties to even (as torch and the hardware do), NaN stays NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: safetensors dtype -> numpy dtype of the raw little-endian values (BF16 is read as <u2).
NUMPY_DTYPES: dict[str, str] = {
    "BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8",
    "I8": "i1", "U8": "u1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4",
    "I64": "<i8", "U64": "<u8", "BOOL": "u1",
}
FLOAT_DTYPES = frozenset({"BF16", "F16", "F32", "F64"})
BLOCK_ELEMENTS = 1 << 20  # elements per block: at most 8 MiB raw, 8 MiB as float64


def numeric(dtype: str) -> bool:
    """Whether change statistics can be computed for this dtype."""
    return dtype in NUMPY_DTYPES


def block_bytes(dtype: str) -> int:
    return BLOCK_ELEMENTS * np.dtype(NUMPY_DTYPES[dtype]).itemsize


def bf16_to_f32(raw: bytes) -> np.ndarray:
    return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest, ties to even."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    u = f.view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():  # keep NaN a (quiet) NaN: rounding could carry it into infinity
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def to_float64(raw: bytes, dtype: str) -> np.ndarray:
    """The values as float64 (exact for every float dtype; integers beyond 2**53 round)."""
    if dtype == "BF16":
        return bf16_to_f32(raw).astype(np.float64)
    return np.frombuffer(raw, NUMPY_DTYPES[dtype]).astype(np.float64)


@dataclass(slots=True)
class ChangeStats:
    """Accumulates ||b - a||, ||a|| and max |b - a| over aligned blocks of two tensors."""

    sq_diff: float = 0.0
    sq_old: float = 0.0
    max_abs: float = 0.0
    changed: int = 0  # elements whose value differs
    elements: int = 0

    def update(self, old_raw: bytes, new_raw: bytes, dtype: str) -> None:
        a = to_float64(old_raw, dtype)
        b = to_float64(new_raw, dtype)
        d = b - a
        self.sq_diff += float(np.dot(d, d))
        self.sq_old += float(np.dot(a, a))
        if d.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
        self.changed += int(np.count_nonzero(d))
        self.elements += int(d.size)

    @property
    def l2(self) -> float:
        return math.sqrt(self.sq_diff)

    @property
    def relative(self) -> float:
        """||b - a|| / ||a||; infinite when a is all zeros and b is not."""
        if self.sq_old > 0:
            return math.sqrt(self.sq_diff) / math.sqrt(self.sq_old)
        return 0.0 if self.sq_diff == 0 else math.inf


def averageable(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def average(ours: bytes, theirs: bytes, dtype: str) -> bytes:
    """The element-wise mean of two blocks, in the tensors' dtype.

    BF16, F16 and F32 are averaged in float32 ((a + b) / 2: exact for two bf16 or f16
    values, one rounding for f32) and rounded back to nearest even; F64 in float64, since
    float32 would throw away most of its precision. Integer tensors are not averaged."""
    if dtype == "BF16":
        a, b = bf16_to_f32(ours), bf16_to_f32(theirs)
    elif dtype == "F16":
        a = np.frombuffer(ours, "<f2").astype(np.float32)
        b = np.frombuffer(theirs, "<f2").astype(np.float32)
    elif dtype == "F32":
        a, b = np.frombuffer(ours, "<f4"), np.frombuffer(theirs, "<f4")
    elif dtype == "F64":
        a, b = np.frombuffer(ours, "<f8"), np.frombuffer(theirs, "<f8")
    else:
        raise ValueError(f"{dtype} tensors cannot be averaged (only BF16, F16, F32 and F64)")
    with np.errstate(over="ignore", invalid="ignore"):
        mean = (a + b) * a.dtype.type(0.5)
        overflow = np.isinf(mean) & np.isfinite(a) & np.isfinite(b)
        if overflow.any():  # a + b overflowed although the mean is finite
            mean[overflow] = a[overflow] * a.dtype.type(0.5) + b[overflow] * a.dtype.type(0.5)
    if dtype == "BF16":
        return f32_to_bf16(mean).astype("<u2").tobytes()
    if dtype == "F16":
        return mean.astype("<f2").tobytes()
    return mean.astype(a.dtype.newbyteorder("<")).tobytes()
