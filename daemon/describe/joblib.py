"""joblib files: a pickle whose numpy arrays are written raw right after their wrapper.

`joblib.dump` pickles each array as a `NumpyArrayWrapper` (shape, dtype, order) and then
writes the array bytes straight into the file, outside the pickle. The hook here tells the
scanner how many bytes to step over (never reading them); object arrays are a nested pickle
instead, scanned like the rest. Compressed joblib files: see compressed_pickle.
"""

from __future__ import annotations

import math

from .dtype_names import numpy_itemsize
from .pickle_scan import Scanner, ScanResult, ScanStop
from .pickle_values import ArrayRef, Global, NpDtype, Obj, SDict, Value, int_shape

WRAPPERS = frozenset({
    Global("joblib.numpy_pickle", "NumpyArrayWrapper"),
    Global("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"),
})  # fmt: skip


def after_wrapper(obj: Obj, scanner: Scanner) -> Value:
    """Step over the raw array that follows a NumpyArrayWrapper; stand in an ArrayRef for it."""
    state = obj.state if isinstance(obj.state, SDict) else SDict()
    shape, dtype = int_shape(state.get("shape")), state.get("dtype")
    if shape is None or not isinstance(dtype, NpDtype):
        raise ScanStop("joblib array wrapper without shape or dtype")
    if dtype.descr.lstrip("<>|=").startswith("O"):
        scanner.nested()  # object arrays are pickled in place; their imports count too
        return ArrayRef("OBJECT", shape)
    itemsize = numpy_itemsize(dtype.descr)
    if itemsize is None:
        raise ScanStop(f"joblib array of dtype {dtype.descr[:20]!r} cannot be sized")
    if isinstance(state.get("numpy_array_alignment_bytes"), int):
        scanner.cursor.skip(scanner.cursor.u8())  # one length byte, then that much padding
    scanner.cursor.skip(math.prod(shape) * itemsize)
    return ArrayRef(dtype.name, shape)


def is_joblib(result: ScanResult) -> bool:
    """Did the pickle use joblib's array wrapper (then it is a joblib file, not plain pickle)?"""
    return bool(WRAPPERS & result.globals)
