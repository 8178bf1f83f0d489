"""NumPy .npy (magic, version, a Python-literal header) and .npz (a zip of .npy members).

Only headers are read: for each .npz member its local zip header and the first bytes of the
member (inflated up to 64 KiB at most when compressed). The header is parsed with
`ast.literal_eval`, as numpy does, which evaluates literals only, never code; object arrays
(pickles) are reported by dtype and never loaded.
"""

from __future__ import annotations

import ast
import struct

from .base import Decline, DescribeError, Line, Reader
from .dtype_names import numpy_dtype_name
from .lines import TensorDesc, shape_text, tensor_section, tensor_summary
from .zipdir import ZIP_MAGIC, open_member, read_directory

NPY_MAGIC = b"\x93NUMPY"
MAX_HEADER = 64 * 1024


def read_npy_header(reader: Reader) -> tuple[str, TensorDesc, bool]:
    """(version, array description named '', fortran_order) from the start of a .npy."""
    pre = reader.read(0, 12)
    if len(pre) < 10 or not pre.startswith(NPY_MAGIC):
        raise DescribeError("not a .npy header")
    major, minor = pre[6], pre[7]
    if major == 1:
        (n,), start = struct.unpack_from("<H", pre, 8), 10
    elif major in (2, 3) and len(pre) >= 12:
        (n,), start = struct.unpack_from("<I", pre, 8), 12
    else:
        raise DescribeError(f".npy version {major}.{minor} is not known")
    if n > MAX_HEADER:
        raise DescribeError(f".npy header of {n} bytes exceeds {MAX_HEADER}")
    raw = reader.read(start, n)
    if len(raw) != n:
        raise DescribeError("truncated .npy header")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin-1"))
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, UnicodeDecodeError):
        raise DescribeError(".npy header is not a Python literal") from None
    if not isinstance(header, dict):
        raise DescribeError(".npy header is not a dict")
    descr, shape, fortran = header.get("descr"), header.get("shape"), header.get("fortran_order")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape
    ):
        raise DescribeError(".npy header has a bad shape")
    dtype = numpy_dtype_name(descr) if isinstance(descr, str) else "STRUCT"
    return f"{major}.{minor}", TensorDesc("", dtype, shape), fortran is True


class NpyDescriber:
    """`format npy`: dtype, shape, element count."""

    name = "npy"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(NPY_MAGIC)

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        version, array, fortran = read_npy_header(reader)
        lines: list[Line] = [
            ("format", "npy"),
            ("npy-version", version),
            ("dtype", array.dtype),
            ("shape", shape_text(array.shape)),
            ("elements", str(array.numel)),
        ]
        return lines + ([("fortran-order", "true")] if fortran else [])


class NpzDescriber:
    """`format npz`: one `tensor` line per member array (name without `.npy`)."""

    name = "npz"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(ZIP_MAGIC) or head.startswith(b"PK\x05\x06")

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        entries = [e for e in read_directory(reader) if not e.name.endswith("/")]
        if not entries or not all(e.name.endswith(".npy") for e in entries):
            raise Decline("not every zip member is a .npy")
        arrays = []
        for entry in entries:
            _, array, _ = read_npy_header(open_member(reader, entry, max_inflate=MAX_HEADER + 16))
            arrays.append(TensorDesc(entry.name[: -len(".npy")], array.dtype, array.shape))
        compressed = any(e.method != 0 for e in entries)
        lines: list[Line] = [("format", "npz")]
        if compressed:
            lines.append(("compression", "deflate"))
        lines += tensor_summary(arrays, count_key="arrays", total_key="elements")
        return lines + tensor_section(arrays, max_lines=max_tensor_lines)
