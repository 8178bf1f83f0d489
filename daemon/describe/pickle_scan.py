"""A pickle opcode scanner: what a pickle would import and build, without running any of it.

It walks the opcode stream like `pickletools.genops` (and takes opcode names from
`pickletools`' table) but reads arguments itself: a multi-GB BINBYTES8 argument is skipped by
its length instead of read, and joblib's raw array data after a NumpyArrayWrapper (which is
not pickle at all) is stepped over by a hook. A tiny symbolic stack (pickle_values) follows
MARK/memo/REDUCE/BUILD so torch's `_rebuild_tensor_v2` calls yield dtypes and shapes and dict
keys yield state-dict names. Nothing is imported, nothing is called: `pickle.load` never runs.

Hard limits (opcodes, stack, marks, memo, container items, inline argument size) stop the
scan with a reason instead of exhausting memory; what was found until then is kept.
"""

from __future__ import annotations

import codecs
import pickletools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .base import DescribeError
from .pickle_values import Blob, Global, Obj, PersistentRef, SDict, SList, SSet, Value, build, call
from .readers import Cursor, Truncated


@dataclass(frozen=True, slots=True)
class ScanLimits:
    max_opcodes: int = 5_000_000
    max_stack: int = 1_000_000
    max_marks: int = 10_000
    max_memo: int = 1_000_000
    max_items: int = 5_000_000
    max_inline: int = 64 * 1024  # bytes/str arguments longer than this are skipped, not read
    max_line: int = 64 * 1024  # text arguments (protocol 0)
    max_nested: int = 4  # pickles inside pickles (joblib object arrays)


class ScanStop(DescribeError):
    """A limit or a malformed opcode ended the scan; the partial result is still useful."""


@dataclass(slots=True)
class ScanResult:
    root: Value = None
    protocol: int = 0
    globals: set[Global] = field(default_factory=set)
    stopped: str | None = None
    end: int = 0  # offset after STOP
    opcodes: int = 0
    seen_any: bool = False
    ran_out: bool = False  # stopped because the bytes ended (a truncated file, or a sniffed head)


BuildHook = Callable[[Obj, "Scanner"], Value]
"""Called after BUILD of an object whose class is a key of the hooks map; returns its stand-in."""

_MARK = object()


class Scanner:
    """One pickle stream from a Cursor position to its STOP opcode."""

    def __init__(
        self,
        cursor: Cursor,
        *,
        limits: ScanLimits = ScanLimits(),
        build_hooks: Mapping[Global, BuildHook] | None = None,
        result: ScanResult | None = None,
        depth: int = 0,
    ) -> None:
        self.cursor = cursor
        self.limits = limits
        self.hooks = build_hooks or {}
        self.result = result or ScanResult()
        self.depth = depth
        self.stack: list[Value] = []
        self.metastack: list[list[Value]] = []
        self.memo: dict[int, Value] = {}
        self.items = 0

    # -- arguments ---------------------------------------------------------------------------
    def _int(self, fmt: str, size: int) -> int:
        return int(struct.unpack(fmt, self.cursor.read(size))[0])

    def _data(self, n: int, kind: str) -> Value:
        if n > self.limits.max_inline:
            start = self.cursor.pos
            self.cursor.skip(n)
            return Blob(n, kind, start)
        raw = self.cursor.read(n)
        if kind == "str":
            return raw.decode("utf-8", "surrogatepass") if _utf8(raw) else raw.decode("utf-8", "replace")
        return raw

    def _line(self) -> str:
        return self.cursor.read_line(self.limits.max_line).decode("latin-1")

    def _long(self, n: int) -> int:
        if n > 256:  # a number with more than 2048 bits is no shape or parameter we can show
            self.cursor.skip(n)
            return -1
        return int.from_bytes(self.cursor.read(n), "little", signed=True)

    # -- stack -------------------------------------------------------------------------------
    def push(self, value: Value) -> None:
        if len(self.stack) >= self.limits.max_stack:
            raise ScanStop(f"pickle stack deeper than {self.limits.max_stack}")
        self.stack.append(value)

    def pop(self) -> Value:
        if not self.stack:
            raise ScanStop("pickle stack underflow")
        value = self.stack.pop()
        if value is _MARK:
            raise ScanStop("pickle MARK used as a value")
        return value

    def pop_mark(self) -> list[Value]:
        if not self.metastack:
            raise ScanStop("pickle has no MARK to pop to")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def count(self, n: int) -> None:
        self.items += n
        if self.items > self.limits.max_items:
            raise ScanStop(f"pickle containers hold more than {self.limits.max_items} items")

    def remember(self, key: int) -> None:
        if not self.stack:
            raise ScanStop("pickle memo PUT on an empty stack")
        if len(self.memo) >= self.limits.max_memo and key not in self.memo:
            raise ScanStop(f"pickle memo larger than {self.limits.max_memo}")
        self.memo[key] = self.stack[-1]

    def recall(self, key: int) -> None:
        if key not in self.memo:
            raise ScanStop(f"pickle memo GET of unknown key {key}")
        self.push(self.memo[key])

    def global_(self, module: str, name: str) -> Global:
        g = Global(module, name)
        self.result.globals.add(g)
        return g

    def partial_root(self) -> Value:
        bottom = self.metastack[0] if self.metastack else self.stack
        return bottom[0] if bottom else None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> ScanResult:
        """Scan to STOP; on a limit or malformed opcode, record why and keep the partial root."""
        try:
            root = self._loop()
            self.result.root = root if self.depth == 0 else self.result.root
        except (DescribeError, ValueError, OverflowError, struct.error) as exc:  # ScanStop, Truncated, ...
            reason = str(exc) if isinstance(exc, DescribeError) else f"malformed pickle ({type(exc).__name__})"
            self.result.stopped = reason
            self.result.ran_out = isinstance(exc, Truncated)
            if self.depth == 0:
                self.result.root = self.partial_root()
            raise ScanStop(reason) from None
        finally:
            self.result.end = self.cursor.pos
        return self.result

    def _loop(self) -> Value:
        cur, res = self.cursor, self.result
        dispatch = {code: getattr(self, "op_" + name) for code, name in _OPS.items() if code != _STOP}
        max_opcodes = self.limits.max_opcodes
        while True:
            if res.opcodes >= max_opcodes:
                raise ScanStop(f"pickle has more than {max_opcodes} opcodes")
            res.opcodes += 1
            code = cur.u8()
            handler = dispatch.get(code)
            if handler is None:
                if code == _STOP:
                    return self.pop()
                raise ScanStop(f"not a pickle opcode {bytes([code])!r} at offset {cur.pos - 1}")
            res.seen_any = True
            handler()

    # -- opcodes: values ---------------------------------------------------------------------
    def op_PROTO(self) -> None:
        self.result.protocol = self.cursor.u8()

    def op_FRAME(self) -> None:
        self.cursor.skip(8)  # frame lengths only help buffering; opcodes continue inline

    def op_NONE(self) -> None:
        self.push(None)

    def op_NEWTRUE(self) -> None:
        self.push(True)

    def op_NEWFALSE(self) -> None:
        self.push(False)

    def op_INT(self) -> None:
        text = self._line()
        self.push({"00": False, "01": True}.get(text, _parse_int(text)))

    def op_LONG(self) -> None:
        self.push(_parse_int(self._line().rstrip("L")))

    def op_BININT(self) -> None:
        self.push(self._int("<i", 4))

    def op_BININT1(self) -> None:
        self.push(self.cursor.u8())

    def op_BININT2(self) -> None:
        self.push(self.cursor.u16())

    def op_LONG1(self) -> None:
        self.push(self._long(self.cursor.u8()))

    def op_LONG4(self) -> None:
        n = self._int("<i", 4)
        if n < 0:
            raise ScanStop("negative LONG4 length")
        self.push(self._long(n))

    def op_FLOAT(self) -> None:
        try:
            self.push(float(self._line()))
        except ValueError:
            raise ScanStop("bad FLOAT text") from None

    def op_BINFLOAT(self) -> None:
        self.push(struct.unpack(">d", self.cursor.read(8))[0])

    def op_STRING(self) -> None:
        text = self._line().strip()
        if len(text) < 2 or text[0] != text[-1] or text[0] not in "'\"":
            raise ScanStop("bad STRING quoting")
        self.push(codecs.escape_decode(text[1:-1].encode("latin-1"))[0].decode("latin-1"))

    def op_BINSTRING(self) -> None:
        n = self._int("<i", 4)
        if n < 0:
            raise ScanStop("negative BINSTRING length")
        self.push(_py2_str(self._data(n, "bytes")))

    def op_SHORT_BINSTRING(self) -> None:
        self.push(_py2_str(self._data(self.cursor.u8(), "bytes")))

    def op_BINBYTES(self) -> None:
        self.push(self._data(self.cursor.u32(), "bytes"))

    def op_SHORT_BINBYTES(self) -> None:
        self.push(self._data(self.cursor.u8(), "bytes"))

    def op_BINBYTES8(self) -> None:
        self.push(self._data(self.cursor.u64(), "bytes"))

    def op_BYTEARRAY8(self) -> None:
        self.push(self._data(self.cursor.u64(), "bytes"))

    def op_NEXT_BUFFER(self) -> None:
        self.push(Blob(0, "out-of-band buffer"))

    def op_READONLY_BUFFER(self) -> None:
        pass

    def op_UNICODE(self) -> None:
        self.push(codecs.decode(self.cursor.read_line(self.limits.max_line), "raw_unicode_escape"))

    def op_SHORT_BINUNICODE(self) -> None:
        self.push(self._data(self.cursor.u8(), "str"))

    def op_BINUNICODE(self) -> None:
        self.push(self._data(self.cursor.u32(), "str"))

    def op_BINUNICODE8(self) -> None:
        self.push(self._data(self.cursor.u64(), "str"))

    # -- opcodes: containers -----------------------------------------------------------------
    def op_MARK(self) -> None:
        if len(self.metastack) >= self.limits.max_marks:
            raise ScanStop(f"pickle nests MARKs deeper than {self.limits.max_marks}")
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP_MARK(self) -> None:
        self.pop_mark()

    def op_POP(self) -> None:
        if not self.stack:
            raise ScanStop("pickle stack underflow")
        self.stack.pop()

    def op_DUP(self) -> None:
        if not self.stack:
            raise ScanStop("pickle stack underflow")
        self.push(self.stack[-1])

    def op_EMPTY_TUPLE(self) -> None:
        self.push(())

    def op_TUPLE(self) -> None:
        items = self.pop_mark()
        self.count(len(items))
        self.push(tuple(items))

    def op_TUPLE1(self) -> None:
        self.push((self.pop(),))

    def op_TUPLE2(self) -> None:
        b, a = self.pop(), self.pop()
        self.push((a, b))

    def op_TUPLE3(self) -> None:
        c, b, a = self.pop(), self.pop(), self.pop()
        self.push((a, b, c))

    def op_EMPTY_LIST(self) -> None:
        self.push(SList())

    def op_LIST(self) -> None:
        items = self.pop_mark()
        self.count(len(items))
        self.push(SList(items))

    def op_APPEND(self) -> None:
        self._extend([self.pop()])

    def op_APPENDS(self) -> None:
        self._extend(self.pop_mark())

    def _extend(self, items: list[Value]) -> None:
        target = self.stack[-1] if self.stack else None
        self.count(len(items))
        if isinstance(target, (SList, Obj)):
            target.items.extend(items)
        elif target is None or target is _MARK:
            raise ScanStop("APPEND without a list")

    def op_EMPTY_DICT(self) -> None:
        self.push(SDict())

    def op_DICT(self) -> None:
        items = self.pop_mark()
        self.count(len(items))
        self.push(SDict(list(zip(items[::2], items[1::2], strict=False))))

    def op_SETITEM(self) -> None:
        value, key = self.pop(), self.pop()
        self._set_items([(key, value)])

    def op_SETITEMS(self) -> None:
        items = self.pop_mark()
        self._set_items(list(zip(items[::2], items[1::2], strict=False)))

    def _set_items(self, pairs: list[tuple[Value, Value]]) -> None:
        target = self.stack[-1] if self.stack else None
        self.count(len(pairs))
        if isinstance(target, SDict):
            target.items.extend(pairs)
        elif isinstance(target, Obj):
            target.dict_items.extend(pairs)
        elif target is None or target is _MARK:
            raise ScanStop("SETITEM without a dict")

    def op_EMPTY_SET(self) -> None:
        self.push(SSet())

    def op_ADDITEMS(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1] if self.stack else None
        self.count(len(items))
        if isinstance(target, SSet):
            target.items.extend(items)

    def op_FROZENSET(self) -> None:
        items = self.pop_mark()
        self.count(len(items))
        self.push(SSet(items))

    # -- opcodes: memo -----------------------------------------------------------------------
    def op_PUT(self) -> None:
        self.remember(_parse_int(self._line()))

    def op_BINPUT(self) -> None:
        self.remember(self.cursor.u8())

    def op_LONG_BINPUT(self) -> None:
        self.remember(self.cursor.u32())

    def op_MEMOIZE(self) -> None:
        self.remember(len(self.memo))

    def op_GET(self) -> None:
        self.recall(_parse_int(self._line()))

    def op_BINGET(self) -> None:
        self.recall(self.cursor.u8())

    def op_LONG_BINGET(self) -> None:
        self.recall(self.cursor.u32())

    # -- opcodes: imports and calls (recorded, never performed) --------------------------------
    def op_GLOBAL(self) -> None:
        module = self._line()
        self.push(self.global_(module, self._line()))

    def op_STACK_GLOBAL(self) -> None:
        name, module = self.pop(), self.pop()
        if not isinstance(name, str) or not isinstance(module, str):
            raise ScanStop("STACK_GLOBAL of non-strings")
        self.push(self.global_(module, name))

    def op_INST(self) -> None:
        module = self._line()
        cls = self.global_(module, self._line())
        self.push(call(cls, tuple(self.pop_mark())))

    def op_OBJ(self) -> None:
        items = self.pop_mark()
        if not items:
            raise ScanStop("OBJ without a class")
        self.push(call(items[0], tuple(items[1:])))

    def op_EXT1(self) -> None:
        self._ext(self.cursor.u8())

    def op_EXT2(self) -> None:
        self._ext(self.cursor.u16())

    def op_EXT4(self) -> None:
        self._ext(self._int("<i", 4))

    def _ext(self, code: int) -> None:
        self.push(self.global_("copyreg.extension", str(code)))

    def op_REDUCE(self) -> None:
        args, func = self.pop(), self.pop()
        self.push(call(func, args))

    def op_NEWOBJ(self) -> None:
        args, cls = self.pop(), self.pop()
        self.push(call(cls, args))

    def op_NEWOBJ_EX(self) -> None:
        _kwargs, args, cls = self.pop(), self.pop(), self.pop()
        self.push(call(cls, args))

    def op_BUILD(self) -> None:
        state = self.pop()
        if not self.stack:
            raise ScanStop("BUILD without an object")
        obj = self.stack[-1]
        build(obj, state)
        if isinstance(obj, Obj) and isinstance(obj.cls, Global) and obj.cls in self.hooks:
            self.stack[-1] = self.hooks[obj.cls](obj, self)

    def op_PERSID(self) -> None:
        self.push(PersistentRef(self._line()))

    def op_BINPERSID(self) -> None:
        self.push(PersistentRef(self.pop()))

    def nested(self) -> ScanResult:
        """Scan a whole pickle embedded at the cursor (joblib's object arrays); globals count."""
        if self.depth >= self.limits.max_nested:
            raise ScanStop("pickles nested too deeply")
        inner = Scanner(self.cursor, limits=self.limits, build_hooks=self.hooks, depth=self.depth + 1)
        inner.result.globals = self.result.globals
        inner.run()
        return inner.result


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def _py2_str(value: Value) -> Value:
    """Python 2 `str` (BINSTRING) as text; module and attribute names arrive this way."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScanStop(f"bad integer text {text[:20]!r}") from None


_OPS: dict[int, str] = {ord(op.code): op.name for op in pickletools.opcodes}
_STOP = ord(".")  # pickletools names it STOP
_MISSING = [name for code, name in _OPS.items() if code != _STOP and not hasattr(Scanner, "op_" + name)]
assert not _MISSING, f"opcodes without a handler: {_MISSING}"


def looks_like_pickle(head: bytes) -> bool:
    """Protocol 2+ pickles start with PROTO and their version."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def scan(
    cursor: Cursor,
    *,
    limits: ScanLimits = ScanLimits(),
    build_hooks: Mapping[Global, BuildHook] | None = None,
) -> ScanResult:
    """Scan one pickle at the cursor; never raises for malformed input (see `stopped`)."""
    scanner = Scanner(cursor, limits=limits, build_hooks=build_hooks)
    try:
        return scanner.run()
    except ScanStop:
        return scanner.result
