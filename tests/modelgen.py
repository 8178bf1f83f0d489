"""Small synthetic safetensors checkpoints for tests: bf16 weights from a normal distribution.

bf16 is written by hand (the high half of float32) so tests need only numpy; the layout is
the real safetensors one (8-byte header length, JSON header sorted by name, data).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np


def bf16_normal(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> bytes:
    """bf16 bytes of Normal(0, sigma): compresses like real weights, not like zeros or noise."""
    values = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    return (values.view(np.uint32) >> 16).astype("<u2").tobytes()


def layer_tensors(layers: int, hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (hidden * 2, hidden))]
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append((f"model.layers.{i}.self_attn.{proj}.weight", (hidden, hidden)))
        names.append((f"model.layers.{i}.input_layernorm.weight", (hidden,)))
    names.append(("model.norm.weight", (hidden,)))
    return names


def write_checkpoint(
    path: Path,
    *,
    layers: int = 4,
    hidden: int = 512,
    seed: int = 0,
    changed_layers: tuple[int, ...] = (),
    extra_tensor: bool = False,
) -> Path:
    """Write a checkpoint; `changed_layers` get other values, as a fine-tune of those layers."""
    tensors: dict[str, tuple[tuple[int, ...], bytes]] = {}
    for name, shape in layer_tensors(layers, hidden):
        layer_seed = zlib.crc32(name.encode())
        changed = any(f".layers.{i}." in name for i in changed_layers)
        rng = np.random.default_rng([seed, layer_seed, 1 if changed else 0])
        tensors[name] = (shape, bf16_normal(rng, shape, 0.02))
    if extra_tensor:
        rng = np.random.default_rng([seed, 99])
        tensors["score.weight"] = ((8, hidden), bf16_normal(rng, (8, hidden), 0.02))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        shape, data = tensors[name]
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in sorted(tensors):
            f.write(tensors[name][1])
    return path
