"""ONNX models (ModelProto), read with a minimal protobuf walker: no onnx package needed.

Shows opset, producer, graph inputs and outputs with shapes, op types, and initializers by
name, dtype and shape. Initializer data (raw_data, float_data, ...) is skipped by length.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .base import DescribeError, Line, Reader
from .lines import (
    TensorDesc,
    escape,
    join_capped,
    joined,
    pairs,
    shape_text,
    tensor_section,
    tensor_summary,
    word,
)
from .protobuf import LEN, VARINT, fields, packed_varints, signed64, text, varint
from .readers import Cursor

ONNX_TYPES = {
    1: "F32", 2: "U8", 3: "I8", 4: "U16", 5: "I16", 6: "I32", 7: "I64", 8: "STRING", 9: "BOOL",
    10: "F16", 11: "F64", 12: "U32", 13: "U64", 14: "C64", 15: "C128", 16: "BF16", 17: "F8_E4M3",
    18: "F8_E4M3FNUZ", 19: "F8_E5M2", 20: "F8_E5M2FNUZ", 21: "U4", 22: "I4", 23: "F4_E2M1",
    24: "F8_E8M0",
}  # fmt: skip
# ModelProto fields that may start a file (ir_version comes first when writers follow field order)
_MODEL_TAGS = {0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}
MAX_TYPE_DEPTH = 8


def _dtype(code: int) -> str:
    return ONNX_TYPES.get(code, f"TYPE{code}")


@dataclass
class _Model:
    ir_version: int = 0
    producer: str = ""
    producer_version: str = ""
    model_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    graph: str = ""
    ops: Counter[str] = field(default_factory=Counter)
    inputs: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    initializers: list[TensorDesc] = field(default_factory=list)
    external: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


class _Parser:
    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.m = _Model()

    def model(self, end: int) -> None:
        c, m = self.cur, self.m
        for num, wire, val in fields(c, end):
            if num == 1 and wire == VARINT:
                m.ir_version = val
            elif num == 2 and wire == LEN:
                m.producer = text(c, val)
            elif num == 3 and wire == LEN:
                m.producer_version = text(c, val)
            elif num == 5 and wire == VARINT:
                m.model_version = signed64(val)
            elif num == 7 and wire == LEN:
                self.graph(c.pos + val)
            elif num == 8 and wire == LEN:
                domain, version = self.pair(c.pos + val)
                m.opsets[domain or "ai.onnx"] = version
            elif num == 14 and wire == LEN:
                key, value = self.strings(c.pos + val)
                m.metadata[key] = value

    def pair(self, end: int) -> tuple[str, int]:
        domain, version = "", 0
        for num, wire, val in fields(self.cur, end):
            if num == 1 and wire == LEN:
                domain = text(self.cur, val, 256)
            elif num == 2 and wire == VARINT:
                version = signed64(val)
        return domain, version

    def strings(self, end: int) -> tuple[str, str]:
        out = ["", ""]
        for num, wire, val in fields(self.cur, end):
            if num in (1, 2) and wire == LEN:
                out[num - 1] = text(self.cur, val, 1024)
        return out[0], out[1]

    def graph(self, end: int) -> None:
        c, m = self.cur, self.m
        for num, wire, val in fields(c, end):
            if wire != LEN:
                continue
            if num == 1:
                m.ops[self.node(c.pos + val)] += 1
            elif num == 2:
                m.graph = text(c, val, 256)
            elif num == 5:
                m.initializers.append(self.tensor(c.pos + val))
            elif num in (11, 12):
                (m.inputs if num == 11 else m.outputs).append(self.value_info(c.pos + val))

    def node(self, end: int) -> str:
        op, domain = "", ""
        for num, wire, val in fields(self.cur, end):
            if num == 4 and wire == LEN:
                op = text(self.cur, val, 128)
            elif num == 7 and wire == LEN:
                domain = text(self.cur, val, 128)
        return f"{domain}.{op}" if domain and domain != "ai.onnx" else op

    def tensor(self, end: int) -> TensorDesc:
        c = self.cur
        dims: list[int] = []
        dtype, name, external = 0, "", False
        for num, wire, val in fields(c, end):
            if num == 1:
                dims += packed_varints(c, val) if wire == LEN else [val]
            elif num == 2 and wire == VARINT:
                dtype = val
            elif num == 8 and wire == LEN:
                name = text(c, val, 1024)
            elif num == 14 and wire == VARINT:
                external = val == 1
        if len(dims) > 64 or any(signed64(d) < 0 for d in dims):
            raise DescribeError(f"ONNX initializer {name[:64]!r} has a bad shape")
        self.m.external += external
        return TensorDesc(name, _dtype(dtype), tuple(dims))

    def value_info(self, end: int) -> tuple[str, str]:
        name, kind = "", "?"
        for num, wire, val in fields(self.cur, end):
            if num == 1 and wire == LEN:
                name = text(self.cur, val, 256)
            elif num == 2 and wire == LEN:
                kind = self.type(self.cur.pos + val, 0)
        return name, kind

    def type(self, end: int, depth: int) -> str:
        if depth > MAX_TYPE_DEPTH:
            raise DescribeError("ONNX type nested too deeply")
        out = "?"
        for num, wire, val in fields(self.cur, end):
            if wire != LEN:
                continue
            if num in (1, 8):  # tensor_type, sparse_tensor_type
                out = self.tensor_type(self.cur.pos + val)
            elif num in (4, 9):  # sequence_type, optional_type: their field 1 is a TypeProto
                inner = "?"
                for n2, w2, v2 in fields(self.cur, self.cur.pos + val):
                    if n2 == 1 and w2 == LEN:
                        inner = self.type(self.cur.pos + v2, depth + 1)
                out = f"{'seq' if num == 4 else 'opt'}({inner})"
            elif num == 5:
                out = "map"
        return out

    def tensor_type(self, end: int) -> str:
        elem, shape = 0, None
        for num, wire, val in fields(self.cur, end):
            if num == 1 and wire == VARINT:
                elem = val
            elif num == 2 and wire == LEN:
                shape = self.shape(self.cur.pos + val)
        return f"{_dtype(elem)}[{shape if shape is not None else '?'}]"

    def shape(self, end: int) -> str:
        dims: list[str] = []
        for num, wire, val in fields(self.cur, end):
            if num != 1 or wire != LEN or len(dims) >= 64:
                continue
            dim = "?"
            for n2, w2, v2 in fields(self.cur, self.cur.pos + val):
                if n2 == 1 and w2 == VARINT:
                    dim = str(signed64(v2))
                elif n2 == 2 and w2 == LEN:
                    dim = word(text(self.cur, v2, 64), 32)
            dims.append(dim)
        return "x".join(dims) if dims else shape_text(())


def _signature(items: list[tuple[str, str]]) -> str:
    """Inputs or outputs in graph order (their position matters), `name:F32[1x3]`."""
    return join_capped([escape(f"{name}:{kind}", ",") for name, kind in items])


class OnnxDescriber:
    """`format onnx`: ir-version, opset, producer, graph, ops, inputs/outputs, initializers."""

    name = "onnx"

    def sniff(self, head: bytes, size: int) -> bool:
        if len(head) < 4 or head[0] != 0x08 or not 1 <= head[1] <= 32:
            return False
        return head[2] in _MODEL_TAGS

    def describe(self, reader: Reader, *, max_tensor_lines: int) -> list[Line]:
        cur = Cursor(reader)
        first = varint(cur)
        if first != 0x08:
            raise DescribeError("not an ONNX model")
        cur.pos = 0
        parser = _Parser(cur)
        parser.model(reader.size)
        m = parser.m
        weights = {t.name for t in m.initializers}
        inputs = [(n, k) for n, k in m.inputs if n not in weights]  # ir < 4 lists weights as inputs
        lines: list[Line] = [("format", "onnx"), ("ir-version", str(m.ir_version))]
        default = m.opsets.pop("ai.onnx", None)
        if default is not None:
            lines.append(("opset", str(default)))
        if m.opsets:
            lines.append(("opset-domains", pairs({k: str(v) for k, v in m.opsets.items()})))
        if m.producer or m.producer_version:
            lines.append(("producer", f"{m.producer} {m.producer_version}".strip()))
        if m.model_version:
            lines.append(("model-version", str(m.model_version)))
        if m.graph:
            lines.append(("graph", m.graph))
        lines.append(("nodes", str(sum(m.ops.values()))))
        if m.ops:
            lines.append(("ops", joined(f"{op}:{n}" for op, n in m.ops.items())))
        if inputs:
            lines.append(("inputs", _signature(inputs)))
        if m.outputs:
            lines.append(("outputs", _signature(m.outputs)))
        if m.metadata:
            lines.append(("metadata", pairs(m.metadata)))
        lines += tensor_summary(m.initializers, count_key="initializers")
        if m.external:
            lines.append(("external-data", str(m.external)))
        return lines + tensor_section(m.initializers, max_lines=max_tensor_lines)
