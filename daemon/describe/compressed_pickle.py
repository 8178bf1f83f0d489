"""Compressed pickles, as `joblib.dump(..., compress=...)` writes them (zlib, gzip, bz2, xz).

The stream is decompressed forwards only, up to MAX_DECOMPRESSED bytes, while the scanner
reads it; joblib's raw arrays inside are decompressed and dropped, never kept.
"""

from __future__ import annotations

from .base import DescribeError, Line, Reader
from .compressed import DecompressingReader, compression_of, decompress_head
from .joblib import is_joblib
from .pickle_hooks import HOOKS
from .pickle_report import scan_lines
from .pickle_scan import looks_like_pickle, scan
from .readers import Cursor

MAX_DECOMPRESSED = 256 * 1024 * 1024


class CompressedPickleDescriber:
    """`joblib.dump(..., compress=...)`: a compressed pickle (joblib or plain)."""

    name = "compressed-pickle"

    def sniff(self, head: bytes, size: int) -> bool:
        kind = compression_of(head)
        return kind is not None and looks_like_pickle(decompress_head(kind, head, 2))

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        kind = compression_of(reader.read(0, 8))
        if kind is None:
            raise DescribeError("compression changed under the describer")
        stream = DecompressingReader(reader, kind, max_output=MAX_DECOMPRESSED)
        result = scan(Cursor(stream), build_hooks=HOOKS)
        if not result.globals and result.root is None:
            raise DescribeError(f"{kind} stream holds no readable pickle ({result.stopped})")
        fmt = "joblib" if is_joblib(result) else "pickle"
        return [("format", fmt), ("compression", kind), *scan_lines(result, max_tensor_lines=max_tensor_lines)]
