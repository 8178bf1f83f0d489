"""Protocol-buffers wire format, just enough to walk a message without its .proto classes.

Fields are yielded with the cursor at their payload; whatever the caller does not read is
skipped by length, never read (ONNX initializers' raw_data). Varints longer than 10 bytes or
above 2**64, lengths past the enclosing message, and group wire types are errors.
"""

from __future__ import annotations

from collections.abc import Iterator

from .base import DescribeError
from .readers import Cursor

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def varint(cur: Cursor) -> int:
    value = shift = 0
    for _ in range(10):
        byte = cur.u8()
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise DescribeError("protobuf varint overflows 64 bits")
            return value
        shift += 7
    raise DescribeError("protobuf varint longer than 10 bytes")


def signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(cur: Cursor, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, wire type, value) for each field in [cur.pos, end).

    value is the integer for VARINT, the payload length for LEN (cursor at the payload), and
    0 for fixed-size fields (cursor at their bytes). After each yield the cursor is moved to
    the end of the field, whatever the caller read of it.
    """
    while cur.pos < end:
        key = varint(cur)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DescribeError("protobuf field number 0")
        if wire == VARINT:
            value, stop = varint(cur), -1
        elif wire == LEN:
            value = varint(cur)
            stop = cur.pos + value
        elif wire in (I64, I32):
            value, stop = 0, cur.pos + (8 if wire == I64 else 4)
        else:
            raise DescribeError(f"protobuf wire type {wire} is not supported")
        if stop > end:
            raise DescribeError(f"protobuf field {number} runs past its message")
        yield number, wire, value
        if stop >= 0:
            if cur.pos > stop:
                raise DescribeError(f"protobuf field {number} read past its end")
            cur.skip(stop - cur.pos)
        if cur.pos > end:
            raise DescribeError("protobuf message overran")


def text(cur: Cursor, length: int, limit: int = 4096) -> str:
    """A string field, at most `limit` bytes of it (the rest is skipped by `fields`)."""
    return cur.read(min(length, limit)).decode("utf-8", "replace")


def packed_varints(cur: Cursor, length: int, limit: int = 64) -> list[int]:
    stop, out = cur.pos + length, list[int]()
    while cur.pos < stop:
        if len(out) >= limit:
            raise DescribeError(f"more than {limit} packed values")
        out.append(varint(cur))
    if cur.pos != stop:
        raise DescribeError("packed varints overran their field")
    return out
