"""Symbolic values of the pickle scanner, and what the known callables would have returned.

The scanner never imports or calls anything named in a pickle. A REDUCE of a global becomes
an `Obj` record of the call; only for a short list of well-known functions (torch's tensor
rebuilders, numpy's array reconstruction, OrderedDict) do we compute what the call would
produce in the terms a description needs: a tensor's dtype and shape, a dict.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .dtype_names import TORCH_STORAGE, numpy_dtype_name, torch_dtype_name

Value = Any


@dataclass(frozen=True, slots=True)
class Global:
    """A module attribute the pickle would import (GLOBAL, STACK_GLOBAL, INST)."""

    module: str
    name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False, slots=True)
class Obj:
    """What `cls(*args)` (REDUCE, NEWOBJ, OBJ, INST) would have made, plus BUILD's state."""

    cls: Value
    args: Value = ()
    state: Value = None
    items: list[Value] = field(default_factory=list)
    dict_items: list[tuple[Value, Value]] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class TensorRef:
    dtype: str
    shape: tuple[int, ...]


@dataclass(eq=False, slots=True)
class ArrayRef:
    """A numpy array (pickled inline, or a joblib NumpyArrayWrapper with data after it)."""

    dtype: str = "UNKNOWN"
    shape: tuple[int, ...] = ()


@dataclass(eq=False, slots=True)
class NpDtype:
    descr: str
    order: str = ""

    @property
    def name(self) -> str:
        descr = self.descr
        if self.order in "<>|" and self.order and descr[:1] not in "<>|=":
            descr = self.order + descr
        return numpy_dtype_name(descr)


@dataclass(frozen=True, slots=True)
class PersistentRef:
    """A BINPERSID/PERSID reference: torch's ('storage', <StorageClass>, key, location, numel)."""

    pid: Value


@dataclass(frozen=True, slots=True)
class Blob:
    """A bytes or str argument too large to read: only its length is known."""

    size: int
    kind: str
    offset: int = -1  # where the skipped bytes start in the scanned stream, when known


@dataclass(eq=False, slots=True)
class SList:
    items: list[Value] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class SDict:
    items: list[tuple[Value, Value]] = field(default_factory=list)

    def get(self, key: str) -> Value:
        for k, v in self.items:
            if k == key:
                return v
        return None


@dataclass(eq=False, slots=True)
class SSet:
    items: list[Value] = field(default_factory=list)


def int_shape(value: Value) -> tuple[int, ...] | None:
    """A tuple/list of non-negative ints as a shape, else None."""
    seq = value.items if isinstance(value, SList) else value
    if isinstance(seq, Obj) and isinstance(seq.cls, Global) and seq.cls.name == "Size":
        seq = seq.args[0] if isinstance(seq.args, tuple) and seq.args else None
    if not isinstance(seq, (tuple, list)) or len(seq) > 64:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in seq):
        return None
    return tuple(seq)


def _storage_dtype(storage: Value) -> str:
    if isinstance(storage, PersistentRef) and isinstance(storage.pid, tuple) and len(storage.pid) > 1:
        kind = storage.pid[1]
        if isinstance(kind, Global):
            return TORCH_STORAGE.get(kind.name, kind.name)
    return "UNKNOWN"


def _dtype_arg(value: Value) -> str:
    if isinstance(value, Global):
        return torch_dtype_name(value.name)
    if isinstance(value, NpDtype):
        return value.name
    return "UNKNOWN"


def _tensor(dtype: str, shape: Value) -> TensorRef | None:
    dims = int_shape(shape)
    return None if dims is None else TensorRef(dtype, dims)


def _rebuild_v2(a: tuple[Value, ...]) -> Value:
    return _tensor(_storage_dtype(a[0]), a[2])


def _rebuild_v3(a: tuple[Value, ...]) -> Value:
    return _tensor(_dtype_arg(a[6]), a[2])


def _first_tensor(a: tuple[Value, ...]) -> Value:
    return a[0] if isinstance(a[0], (TensorRef, ArrayRef)) else None


def _from_type_v2(a: tuple[Value, ...]) -> Value:
    inner = a[2] if isinstance(a[2], tuple) else ()
    if isinstance(a[0], Global) and a[0].name == "_rebuild_from_type_v2":
        return None  # real files never nest it; a hostile one could to recurse without end
    out = call(a[0], inner)
    return out if isinstance(out, TensorRef) else None


def _from_numpy(a: tuple[Value, ...]) -> Value:
    return TensorRef(_dtype_arg(a[1]), a[0].shape) if isinstance(a[0], ArrayRef) else None


def _meta_tensor(a: tuple[Value, ...]) -> Value:
    return _tensor(_dtype_arg(a[0]), a[1])


def _wrapper_subclass(a: tuple[Value, ...]) -> Value:
    return _tensor(_dtype_arg(a[1]), a[2])


def _frombuffer(a: tuple[Value, ...]) -> Value:
    shape = int_shape(a[2])
    return ArrayRef(_dtype_arg(a[1]), shape) if shape is not None else None


def _new_dict(a: tuple[Value, ...]) -> Value:
    out = SDict()
    src = a[0] if a else None
    if isinstance(src, SList):
        out.items = [tuple(p) for p in src.items if isinstance(p, tuple) and len(p) == 2]
    elif isinstance(src, SDict):
        out.items = list(src.items)
    return out


_SCALAR_FORMATS = {"f8": "<d", "f4": "<f", "i8": "<q", "i4": "<i", "u8": "<Q", "u4": "<I", "b1": "<?"}


def _numpy_scalar(a: tuple[Value, ...]) -> Value:
    """numpy.float64(1.0) and friends as plain Python values, when the dtype is simple."""
    if isinstance(a[0], NpDtype) and isinstance(a[1], bytes):
        fmt = _SCALAR_FORMATS.get(a[0].descr.lstrip("<|="))
        if fmt and struct.calcsize(fmt) == len(a[1]):
            return struct.unpack(fmt, a[1])[0]
    return None


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_TORCH_UTILS = "torch._utils"

KNOWN_CALLS: dict[tuple[str, str], Callable[[tuple[Value, ...]], Value]] = {
    ("collections", "OrderedDict"): _new_dict,
    ("builtins", "dict"): _new_dict,
    ("__builtin__", "dict"): _new_dict,
    ("collections", "defaultdict"): lambda a: SDict(),
    ("builtins", "set"): lambda a: SSet(list(a[0].items) if a and isinstance(a[0], SList) else []),
    ("builtins", "frozenset"): lambda a: SSet(list(a[0].items) if a and isinstance(a[0], SList) else []),
    ("builtins", "bytearray"): lambda a: a[0] if a and isinstance(a[0], (bytes, Blob)) else None,
    ("torch", "Size"): lambda a: int_shape(a[0]),
    (_TORCH_UTILS, "_rebuild_tensor"): _rebuild_v2,
    (_TORCH_UTILS, "_rebuild_tensor_v2"): _rebuild_v2,
    (_TORCH_UTILS, "_rebuild_qtensor"): _rebuild_v2,
    (_TORCH_UTILS, "_rebuild_tensor_v3"): _rebuild_v3,
    (_TORCH_UTILS, "_rebuild_parameter"): _first_tensor,
    (_TORCH_UTILS, "_rebuild_parameter_with_state"): _first_tensor,
    (_TORCH_UTILS, "_rebuild_device_tensor_from_cpu_tensor"): _first_tensor,
    (_TORCH_UTILS, "_rebuild_device_tensor_from_numpy"): _from_numpy,
    (_TORCH_UTILS, "_rebuild_xla_tensor"): _from_numpy,
    (_TORCH_UTILS, "_rebuild_meta_tensor_no_storage"): _meta_tensor,
    (_TORCH_UTILS, "_rebuild_wrapper_subclass"): _wrapper_subclass,
    (_TORCH_UTILS, "_rebuild_from_type_v2"): _from_type_v2,
    ("torch._tensor", "_rebuild_from_type_v2"): _from_type_v2,
    **{(m, "_reconstruct"): (lambda a: ArrayRef()) for m in _NUMPY_CORE},
    **{(m, "scalar"): _numpy_scalar for m in _NUMPY_CORE},
    **{(m, "_frombuffer"): _frombuffer for m in _NUMPY_NUMERIC},
    ("numpy", "dtype"): lambda a: NpDtype(a[0]) if isinstance(a[0], str) else None,
    ("copyreg", "_reconstructor"): lambda a: Obj(a[0]),
    ("copy_reg", "_reconstructor"): lambda a: Obj(a[0]),
}


def call(func: Value, args: Value) -> Value:
    """What `func(*args)` stands for: a known result, or an `Obj` record of the call."""
    if isinstance(func, Global) and isinstance(args, tuple):
        handler = KNOWN_CALLS.get((func.module, func.name))
        if handler is not None:
            try:
                out = handler(args)
            except (IndexError, TypeError, ValueError, AttributeError, struct.error):
                out = None
            if out is not None:
                return out
    return Obj(func, args)


def build(obj: Value, state: Value) -> None:
    """BUILD (`__setstate__`): fill in numpy arrays and dtypes, keep other objects' state."""
    if isinstance(obj, ArrayRef) and isinstance(state, tuple) and len(state) >= 4:
        shape = int_shape(state[1])
        if shape is not None:
            obj.shape = shape
        obj.dtype = _dtype_arg(state[2])
    elif isinstance(obj, NpDtype) and isinstance(state, tuple) and len(state) > 1:
        if isinstance(state[1], str):
            obj.order = state[1]
    elif isinstance(obj, Obj):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], SDict):
            merged = SDict(list(state[0].items))
            if isinstance(state[1], SDict):
                merged.items += state[1].items
            state = merged
        obj.state = state
