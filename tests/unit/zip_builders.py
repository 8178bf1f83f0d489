"""Hand-made zip archives for describer tests: sparse zip64 files and deflate bombs.

`zipfile` cannot write a 10 GiB member without writing 10 GiB, nor a deflated member without
holding its inflated bytes; these builders write the records themselves.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

LOCAL = struct.Struct("<4s5H3L2H")
CENTRAL = struct.Struct("<4s6H3L5H2L")
EOCD = struct.Struct("<4s4H2LH")
EOCD64 = struct.Struct("<4sQ2H2L4Q")
LOCATOR = struct.Struct("<4sLQL")
FULL = 2**32 - 1


def one_deflated_member_zip(name: bytes, body: bytes, claimed_size: int) -> bytes:
    """A zip of one member whose deflated bytes are `body` (claimed to inflate to claimed_size)."""
    local = LOCAL.pack(b"PK\x03\x04", 20, 0, 8, 0, 0, 0, len(body), claimed_size, len(name), 0)
    central = CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 8, 0, 0, 0, len(body), claimed_size, len(name), 0, 0, 0, 0, 0, 0)
    directory_at = len(local) + len(name) + len(body)
    end = EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), directory_at, 0)
    return local + name + body + central + name + end


def deflated_zeros(prefix: bytes, mib: int, suffix: bytes = b"") -> bytes:
    """Raw deflate of prefix + `mib` MiB of zeros + suffix, compressed piecewise (small memory)."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    zeros = b"\0" * 2**20
    return (
        comp.compress(prefix)
        + b"".join(comp.compress(zeros) for _ in range(mib))
        + comp.compress(suffix)
        + comp.flush()
    )


def sparse_zip64(path: Path, members: list[tuple[str, bytes | int]]) -> None:
    """A zip64 archive of stored members; an int member is that many bytes of hole (sparse)."""
    central = []
    with open(path, "wb") as f:
        for name, content in members:
            size = content if isinstance(content, int) else len(content)
            crc = 0 if isinstance(content, int) else zlib.crc32(content)
            offset = f.tell()
            raw = name.encode()
            extra = struct.pack("<2H2Q", 1, 16, size, size)
            f.write(LOCAL.pack(b"PK\x03\x04", 45, 0, 0, 0, 0, crc, FULL, FULL, len(raw), len(extra)) + raw + extra)
            if isinstance(content, int):
                f.seek(content, 1)
            else:
                f.write(content)
            central.append((raw, crc, size, offset))
        directory_at = f.tell()
        for raw, crc, size, offset in central:
            extra = struct.pack("<2H3Q", 1, 24, size, size, offset)
            entry = CENTRAL.pack(
                b"PK\x01\x02", 45, 45, 0, 0, 0, 0, crc, FULL, FULL, len(raw), len(extra), 0, 0, 0, 0, FULL
            )
            f.write(entry + raw + extra)
        end = f.tell()
        n = len(central)
        f.write(EOCD64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, end - directory_at, directory_at))
        f.write(LOCATOR.pack(b"PK\x06\x07", 0, end, 1))
        f.write(EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, FULL, FULL, 0))
