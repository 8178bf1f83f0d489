"""The last resort: what kind of file this is, from its first bytes, and nothing more.

It always matches and never fails, so a description exists for every file (the pointer's
`size` line already gives the size).
"""

from __future__ import annotations

from .base import Line, Reader

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"GGUF", "gguf"),
    (0, b"GGML", "ggml"),
    (0, b"ggjt", "ggml"),
    (0, b"\x93NUMPY", "npy"),
    (0, b"\x7fELF", "elf"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"%PDF-", "pdf"),
    (4, b"TFL3", "tflite"),
    (257, b"ustar", "tar"),
]


def sniff_kind(head: bytes) -> str:
    """A one-word content kind for the first bytes of a file."""
    # HDF5 may start after a user block of 512, 1024, 2048, ... bytes
    for offset in (0, 512, 1024, 2048, 4096):
        if head[offset : offset + 8] == HDF5_MAGIC:
            return "hdf5"
    for offset, magic, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return _text_kind(head)


def _text_kind(head: bytes) -> str:
    if not head:
        return "empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # a character cut by the end of the head is fine
            return "unknown"
        text = head[: exc.start].decode("utf-8")
    if any(not (ch.isprintable() or ch in "\t\r\n\f") for ch in text):
        return "unknown"
    stripped = text.lstrip()
    return "json" if stripped[:1] in ("{", "[") else "text"


class GenericDescriber:
    """`format <kind>`: zip, gzip, hdf5, tar, json, text, unknown, ..."""

    name = "generic"
    head_size = 8192

    def sniff(self, head: bytes, size: int) -> bool:
        return True

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        return [("format", sniff_kind(reader.read(0, self.head_size)))]
