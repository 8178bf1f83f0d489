"""PyTorch checkpoints: `torch.save` zip archives (<name>/data.pkl + data/<key> storages),
TorchScript archives, and legacy (pre-1.6) non-zip files of consecutive pickles.

Only the zip's end records, its central directory and data.pkl are read; storages are never
touched. Tensor dtypes come from the storage class in each persistent id, shapes from the
`_rebuild_tensor_v2` arguments, names from the dict keys above them.
"""

from __future__ import annotations

from .base import Decline, DescribeError, Line, Reader
from .pickle_hooks import HOOKS
from .pickle_report import scan_lines
from .pickle_scan import ScanStop, scan
from .readers import Cursor
from .zipdir import ZIP_MAGIC, ZipEntry, open_member, read_directory

LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MAX_PICKLE_INFLATE = 64 * 1024 * 1024


def _find_data_pkl(entries: list[ZipEntry]) -> str | None:
    """The archive prefix ('archive/') of the top-level data.pkl, or None."""
    found = [e.name[: -len("data.pkl")] for e in entries if e.name.endswith("data.pkl")]
    found = [p for p in found if p == "" or (p.endswith("/") and p.count("/") == 1)]
    return min(found, key=len) if found else None


def _small_text(reader: Reader, entries: dict[str, ZipEntry], name: str) -> str | None:
    entry = entries.get(name)
    if entry is None or entry.size > 64:
        return None
    data = open_member(reader, entry, max_inflate=64).read(0, 64)
    text = data.decode("ascii", "replace").strip()
    return text if text.isprintable() and text else None


class PyTorchDescriber:
    """`format pytorch` / `torchscript`: serialization version, storages, then the pickle view."""

    name = "pytorch"

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(ZIP_MAGIC) or head.startswith(LEGACY_MAGIC)

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        if reader.read(0, len(LEGACY_MAGIC)) == LEGACY_MAGIC:
            return self._legacy(reader, max_tensor_lines)
        entries = read_directory(reader)
        prefix = _find_data_pkl(entries)
        if prefix is None:
            raise Decline("zip without data.pkl")
        by_name = {e.name: e for e in entries}
        torchscript = any(n.startswith(prefix + "code/") for n in by_name) or prefix + "constants.pkl" in by_name
        lines: list[Line] = [("format", "torchscript" if torchscript else "pytorch")]
        version = _small_text(reader, by_name, prefix + ".data/version") or _small_text(
            reader, by_name, prefix + "version"
        )
        if version:
            lines.append(("serialization", version))
        byteorder = _small_text(reader, by_name, prefix + "byteorder")
        if byteorder and byteorder != "little":
            lines.append(("byteorder", byteorder))
        lines.append(("storages", str(sum(1 for n in by_name if n.startswith(prefix + "data/")))))
        member = open_member(reader, by_name[prefix + "data.pkl"], max_inflate=MAX_PICKLE_INFLATE)
        result = scan(Cursor(member), build_hooks=HOOKS)
        return lines + scan_lines(result, max_tensor_lines=max_tensor_lines)

    def _legacy(self, reader: Reader, max_tensor_lines: int) -> list[Line]:
        """Magic number, protocol version and sys_info pickles, then the object pickle."""
        cursor = Cursor(reader)
        for what in ("magic number", "protocol version", "sys info"):
            head = scan(cursor)
            if head.stopped:
                raise DescribeError(f"legacy torch {what} pickle: {head.stopped}")
        result = scan(cursor, build_hooks=HOOKS)
        if result.stopped and result.root is None and not result.globals:
            raise ScanStop(result.stopped)
        lines: list[Line] = [("format", "pytorch"), ("serialization", "legacy")]
        return lines + scan_lines(result, max_tensor_lines=max_tensor_lines)
