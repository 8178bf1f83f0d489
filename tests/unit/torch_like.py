"""torch.save-shaped pickles without torch: the same opcodes a state dict produces.

Fake `torch` modules exist only while pickling, so `pickle` writes the real global names
(`torch._utils._rebuild_tensor_v2`, `torch.BFloat16Storage`) and torch's persistent ids.
Lets the bounded-read tests run where torch is not installed.
"""

from __future__ import annotations

import io
import math
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager


def _rebuild_tensor_v2(*args: object) -> None:  # stands in for torch's, never called
    raise AssertionError("describers must not unpickle")


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce__(self) -> tuple[object, ...]:
        stride = tuple(math.prod(self.shape[i + 1 :]) for i in range(len(self.shape)))
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, OrderedDict()))


@contextmanager
def _fake_torch(storage_class: str) -> Iterator[type]:
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage = type(storage_class, (), {"__module__": "torch"})
    setattr(torch, storage_class, storage)
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    _rebuild_tensor_v2.__module__ = "torch._utils"
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield storage
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def state_dict_pickle(shapes: dict[str, tuple[int, ...]], storage_class: str = "BFloat16Storage") -> bytes:
    """data.pkl of `torch.save(state_dict)` for tensors of these shapes, one storage each."""
    with _fake_torch(storage_class) as storage_type:

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj: object) -> object:
                if isinstance(obj, _Storage):
                    return ("storage", storage_type, obj.key, "cpu", obj.numel)
                return None

        state = OrderedDict(
            (name, _Tensor(_Storage(str(i), math.prod(shape)), shape)) for i, (name, shape) in enumerate(shapes.items())
        )
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(state)
        return buf.getvalue()
