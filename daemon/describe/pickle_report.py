"""From a pickle scan to description lines: classes, unsafe imports, the top object, tensors.

Shared by the PyTorch, pickle and joblib describers so that the same object reads the same
whichever container it came in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .base import Line
from .lines import TensorDesc, joined, pairs, plain, tensor_section, tensor_summary
from .pickle_scan import ScanResult
from .pickle_values import ArrayRef, Global, Obj, SDict, SList, SSet, TensorRef, Value

MAX_NODES = 2_000_000
MAX_DEPTH = 200
# torch.nn.Module keeps its tensors and children under these keys; state_dict() names skip them
MODULE_KEYS = frozenset({"_parameters", "_buffers", "_modules"})
_VERSION_KEY = re.compile(r"_([a-z][a-z0-9]*)_version\Z")

# Imports that no model needs and that run commands, open files or load code when called.
UNSAFE_MODULES = (
    "os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "runpy", "pty", "webbrowser",
    "importlib", "ctypes", "multiprocessing", "code", "codeop", "commands", "pdb", "bdb", "asyncio",
    "http", "urllib", "urllib2", "requests", "ftplib", "smtplib", "telnetlib", "pickle", "_pickle",
    "cPickle", "marshal", "types", "dill", "cloudpickle", "tempfile", "glob", "pathlib", "io",
    "_io", "signal", "threading", "_thread", "torch.hub",
)  # fmt: skip
UNSAFE_NAMES = frozenset({
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "compile"), ("builtins", "open"),
    ("builtins", "__import__"), ("builtins", "getattr"), ("builtins", "setattr"),
    ("builtins", "delattr"), ("builtins", "globals"), ("builtins", "locals"), ("builtins", "vars"),
    ("builtins", "breakpoint"), ("builtins", "input"), ("builtins", "memoryview"),
    ("__builtin__", "eval"), ("__builtin__", "exec"), ("__builtin__", "execfile"),
    ("__builtin__", "open"), ("__builtin__", "__import__"), ("__builtin__", "getattr"),
    ("__builtin__", "apply"), ("operator", "attrgetter"), ("operator", "methodcaller"),
    ("operator", "getitem"), ("functools", "partial"), ("functools", "reduce"), ("torch", "load"),
    ("torch.serialization", "load"), ("numpy", "load"), ("numpy.lib.npyio", "load"),
})  # fmt: skip


def is_unsafe(g: Global) -> bool:
    """A global that can run code or touch the system when a pickle calls it."""
    if (g.module, g.name) in UNSAFE_NAMES:
        return True
    return any(g.module == m or g.module.startswith(m + ".") for m in UNSAFE_MODULES)


def _key_text(key: Value) -> str | None:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    return None


def _state_items(obj: Obj) -> list[tuple[Value, Value]]:
    items: list[tuple[Value, Value]] = []
    if isinstance(obj.state, SDict):
        items += obj.state.items
    items += obj.dict_items
    return items


class Walk:
    """One bounded, cycle-safe pass over the scanned object graph."""

    def __init__(self, root: Value) -> None:
        self.tensors: list[TensorDesc] = []
        self.versions: dict[str, str] = {}
        self.truncated = False
        self._run(root)

    def _run(self, root: Value) -> None:
        seen: set[int] = set()
        todo: list[tuple[Value, tuple[str, ...]]] = [(root, ())]
        nodes = 0
        while todo:
            value, path = todo.pop()
            nodes += 1
            if nodes > MAX_NODES or len(path) > MAX_DEPTH:
                self.truncated = True
                continue
            if isinstance(value, (TensorRef, ArrayRef)):
                self.tensors.append(TensorDesc(".".join(path) or "<root>", value.dtype, value.shape))
                continue
            if not isinstance(value, (SDict, SList, SSet, Obj, tuple)) or id(value) in seen:
                continue
            seen.add(id(value))
            todo.extend(reversed(self._children(value, path)))

    def _children(self, value: Value, path: tuple[str, ...]) -> list[tuple[Value, tuple[str, ...]]]:
        if isinstance(value, SDict):
            return [(v, (*path, k)) for key, v in value.items if (k := _key_text(key)) is not None]
        if isinstance(value, (SList, SSet)):
            return [(v, (*path, str(i))) for i, v in enumerate(value.items)]
        if isinstance(value, tuple):
            return [(v, (*path, str(i))) for i, v in enumerate(value)]
        out: list[tuple[Value, tuple[str, ...]]] = []
        assert isinstance(value, Obj)
        for key, v in _state_items(value):
            k = _key_text(key)
            if k is None:
                continue
            m = _VERSION_KEY.match(k)
            if m and isinstance(v, str):
                self.versions.setdefault(m.group(1), v)
            if k in MODULE_KEYS and isinstance(v, SDict):
                out += [(vv, (*path, kk)) for key2, vv in v.items if (kk := _key_text(key2)) is not None]
            else:
                out.append((v, (*path, k)))
        out += [(v, (*path, str(i))) for i, v in enumerate(value.items)]
        if isinstance(value.args, tuple) and not isinstance(value.state, SDict):
            out += [(v, (*path, str(i))) for i, v in enumerate(value.args)]
        return out


def _is_plain(value: Value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def top_object_lines(root: Value) -> list[Line]:
    """`object <class>` and `object-params k=v` (plain constructor values; sklearn's fitted
    attributes end in '_' and private ones start with it, so both are left out), or for a
    top-level dict (a training checkpoint) `values k=v` of its plain entries."""
    if isinstance(root, Obj):
        lines: list[Line] = []
        if isinstance(root.cls, Global):
            lines.append(("object", root.cls.dotted))
        params = {
            k: plain(v)
            for key, v in _state_items(root)
            if (k := _key_text(key)) is not None and not k.startswith("_") and not k.endswith("_") and _is_plain(v)
        }
        if params:
            lines.append(("object-params", pairs(params)))
        return lines
    if isinstance(root, SDict):
        values = {k: plain(v) for key, v in root.items if (k := _key_text(key)) is not None and _is_plain(v)}
        return [("values", pairs(values))] if values else []
    return []


def class_lines(globals_: Iterable[Global]) -> list[Line]:
    """`classes a.B,c.d` (every import) and `unsafe ...` (the dangerous ones, listed apart)."""
    found = sorted(globals_, key=lambda g: (g.module, g.name))
    lines: list[Line] = []
    if found:
        lines.append(("classes", joined(g.dotted for g in found)))
    unsafe = [g.dotted for g in found if is_unsafe(g)]
    if unsafe:
        lines.append(("unsafe", joined(unsafe)))
    return lines


def scan_lines(result: ScanResult, *, max_tensor_lines: int) -> list[Line]:
    """Everything after `format`: protocol, object, versions, classes, unsafe, tensors, notes."""
    walk = Walk(result.root)
    lines: list[Line] = []
    if result.protocol:
        lines.append(("pickle-protocol", str(result.protocol)))
    lines += top_object_lines(result.root)
    if walk.versions:
        lines.append(("versions", pairs(walk.versions)))
    lines += class_lines(result.globals)
    lines += tensor_summary(walk.tensors)
    if result.stopped:
        lines.append(("note", f"scan stopped: {result.stopped}"))
    elif walk.truncated:
        lines.append(("note", "object graph too large: tensors listed in part"))
    lines += tensor_section(walk.tensors, max_lines=max_tensor_lines)
    return lines
