"""Which describer describes a file: the first whose content sniff matches, in a fixed order.

Order (docs/DESCRIBERS.md): safetensors, gguf, npy, pytorch, npz, compressed-pickle, pickle,
onnx, then plug-ins from the `gitmld.describers` entry-point group (sorted by entry-point
name), then generic, which always matches. File names play no part. A describer may decline
after a match (a zip that is neither a checkpoint nor an .npz); a describer that fails yields
the generic description plus a `note`: describing never fails a `git add`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, cast

from .base import Decline, DescribeError, Describer, DigestDescriber, Line, Reader
from .compressed_pickle import CompressedPickleDescriber
from .generic import GenericDescriber, sniff_kind
from .gguf import GgufDescriber
from .lines import clean_value, finalize
from .numpy_files import NpyDescriber, NpzDescriber
from .onnx import OnnxDescriber
from .pickle_file import PickleDescriber
from .pytorch import PyTorchDescriber
from .readers import BudgetReader, FileReader
from .safetensors import SafetensorsDescriber

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gitmld.describers"
HEAD_SIZE = 8192
DEFAULT_MAX_TENSOR_LINES = 256
DEFAULT_READ_BUDGET = 128 * 1024 * 1024  # per file; a safetensors header may be up to 100 MB


def builtin_describers() -> list[Describer]:
    """The built-in describers in sniffing order, without the generic fallback."""
    return [
        SafetensorsDescriber(),
        GgufDescriber(),
        NpyDescriber(),
        PyTorchDescriber(),
        NpzDescriber(),
        CompressedPickleDescriber(),
        PickleDescriber(),
        OnnxDescriber(),
    ]


def _load_plugin(ep: Any) -> Describer | None:
    try:
        obj = ep.load()
        if inspect.isclass(obj):
            obj = obj()
    except Exception:
        log.warning("describer plug-in %s (%s) failed to load; skipped", ep.name, ep.value, exc_info=True)
        return None
    if not all(hasattr(obj, attr) for attr in ("name", "sniff", "describe")):
        log.warning("describer plug-in %s (%s) lacks name/sniff/describe; skipped", ep.name, ep.value)
        return None
    described: Describer = obj
    return described


@functools.cache
def plugin_describers() -> tuple[Describer, ...]:
    """Describers that other installed packages register under `gitmld.describers`."""
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))
    return tuple(d for ep in eps if (d := _load_plugin(ep)) is not None)


def describers() -> list[Describer]:
    """Every describer in the order they are tried; the generic one last."""
    return [*builtin_describers(), *plugin_describers(), GenericDescriber()]


def _fallback(head: bytes, why: str) -> list[Line]:
    return [("format", sniff_kind(head)), ("note", clean_value(why, 200))]


def describe(
    reader: Reader,
    *,
    max_tensor_lines: int = DEFAULT_MAX_TENSOR_LINES,
    tensor_digests: Mapping[str, str] | None = None,
    read_budget: int = DEFAULT_READ_BUDGET,
) -> list[Line]:
    """The description lines of one file, the same on every machine for the same bytes.

    `tensor_digests` maps tensor names to content digests (16 hex, computed by the store
    while streaming) for describers that show them (safetensors). Never raises for any file
    content; only a failing `reader` (an I/O error) propagates.
    """
    max_tensor_lines = max(0, max_tensor_lines)
    head = reader.read(0, min(reader.size, HEAD_SIZE))
    for d in describers():
        try:
            if not d.sniff(head, reader.size):
                continue
        except Exception:  # a plug-in's sniff must not stop the others
            log.warning("describer %s failed to sniff; skipped", getattr(d, "name", d), exc_info=True)
            continue
        budget = BudgetReader(reader, read_budget)
        try:
            if tensor_digests and getattr(d, "uses_tensor_digests", False):
                lines = cast(DigestDescriber, d).describe(
                    budget, max_tensor_lines=max_tensor_lines, tensor_digests=tensor_digests
                )
            else:
                lines = d.describe(budget, max_tensor_lines=max_tensor_lines)
            return finalize(lines)
        except Decline:
            continue
        except OSError:
            raise
        except DescribeError as exc:
            return _fallback(head, f"{d.name}: {exc}")
        except Exception as exc:  # a bug or a resource error in a describer is still not fatal
            log.warning("describer %s failed", d.name, exc_info=True)
            detail = f": {str(exc)[:120]}" if str(exc) else ""
            return _fallback(head, f"{d.name}: internal error ({type(exc).__name__}{detail})")
    return _fallback(head, "no describer matched")


def describe_path(path: str | os.PathLike[str], **options: Any) -> list[Line]:
    """`describe` for a file on disk."""
    with FileReader(path) as reader:
        return describe(reader, **options)
