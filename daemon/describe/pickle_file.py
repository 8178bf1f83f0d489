"""Plain pickle files (and uncompressed joblib files, which are pickles with extra bytes).

Shows what loading the file would import and construct, state-dict tensors and numpy arrays
by name, dtype and shape, and an estimator's plain constructor parameters. Nothing in the
file is executed: see pickle_scan.
"""

from __future__ import annotations

from .base import DescribeError, Line, Reader
from .joblib import is_joblib
from .pickle_hooks import HOOKS
from .pickle_report import scan_lines
from .pickle_scan import ScanLimits, looks_like_pickle, scan
from .readers import BytesReader, Cursor

_SNIFF_LIMITS = ScanLimits(max_opcodes=64, max_stack=64, max_marks=16, max_memo=64, max_items=256)


def looks_like_old_pickle(head: bytes) -> bool:
    """Protocol 0/1 pickles have no header: accept when the first opcodes parse cleanly."""
    if head[:1] not in (b"(", b"c", b"}", b"]", b")", b"N", b"I", b"S", b"V", b"F", b"L"):
        return False
    result = scan(Cursor(BytesReader(head[:512])), limits=_SNIFF_LIMITS)
    if result.stopped is None:
        return True
    return result.opcodes >= 4 and result.ran_out


class PickleDescriber:
    """`format pickle` or `format joblib`: imports, top object, versions, tensors/arrays."""

    name = "pickle"

    def sniff(self, head: bytes, size: int) -> bool:
        return looks_like_pickle(head) or looks_like_old_pickle(head)

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        result = scan(Cursor(reader), build_hooks=HOOKS)
        if not result.globals and result.root is None:
            raise DescribeError(f"no readable pickle ({result.stopped})")
        fmt = "joblib" if is_joblib(result) else "pickle"
        return [("format", fmt), *scan_lines(result, max_tensor_lines=max_tensor_lines)]
