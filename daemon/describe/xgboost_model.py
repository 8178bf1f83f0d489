"""XGBoost boosters in pickles: the library version recorded inside the raw model bytes.

`Booster.__getstate__` stores the model as UBJSON (or JSON in older releases) whose last
field is `version: [major, minor, patch]`. Only the last 64 bytes are looked at; the stand-in
object gains `_xgboost_version`, which the report shows like sklearn's `_sklearn_version`.
"""

from __future__ import annotations

import re
import struct

from .base import DescribeError
from .pickle_scan import Scanner
from .pickle_values import Blob, Global, Obj, SDict, Value

BOOSTER = Global("xgboost.core", "Booster")
_JSON = re.compile(rb'"version"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]')
_UBJ_INTS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}


def _ubjson_version(tail: bytes) -> str | None:
    at = tail.rfind(b"version[")
    if at < 0:
        return None
    i = at + len(b"version[")
    items: list[int] = []
    try:
        if tail[i : i + 1] == b"#":  # counted array: '#', a typed count, then typed items
            fmt = _UBJ_INTS[tail[i + 1 : i + 2]]
            i += 2 + struct.calcsize(fmt)
        while len(items) < 3:
            fmt = _UBJ_INTS[tail[i : i + 1]]
            items.append(struct.unpack_from(fmt, tail, i + 1)[0])
            i += 1 + struct.calcsize(fmt)
    except (KeyError, struct.error):
        return None
    return ".".join(map(str, items))


def version_of(tail: bytes) -> str | None:
    m = _JSON.search(tail)
    return b".".join(m.groups()).decode() if m else _ubjson_version(tail)


def after_booster(obj: Obj, scanner: Scanner) -> Value:
    handle = obj.state.get("handle") if isinstance(obj.state, SDict) else None
    tail = b""
    if isinstance(handle, bytes):
        tail = handle[-64:]
    elif isinstance(handle, Blob) and handle.offset >= 0:
        try:
            tail = scanner.cursor.reader.read(handle.offset + handle.size - 64, 64)
        except DescribeError:  # a forward-only (decompressing) reader cannot go back
            tail = b""
    version = version_of(tail)
    if version and isinstance(obj.state, SDict):
        obj.state.items.append(("_xgboost_version", version))
    return obj
