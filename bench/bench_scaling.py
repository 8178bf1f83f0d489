"""How well the put's CPU work uses two cores: each primitive in one thread, two threads and two
processes, and the whole chunk encode (keyed id + byte planes + zstd + AES-GCM) in threads
against processes. A primitive that holds the GIL does not scale in threads; one that is bound
by the memory system does not scale in processes either.

    .venv/bin/python bench/bench_scaling.py /tmp/bench-models/1GiB/base.safetensors [--mib 256]

Prints seconds per GiB of input and the speed-up of two workers over one. Run it on a quiet
machine: every figure is a wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blake3
import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gitmld.daemon.store import codec
from gitmld.daemon.store.chunker import StreamChunker
from gitmld.daemon.store.keys import RepoKeys

REPEAT = 5  # best of: single runs on this VM vary by 30%
PIECE = 80 << 10  # about one chunk (mean chunk ~77 KiB on bf16 weights)
U2 = np.dtype("<u2")
_data = b""  # the sample, in each worker process too (set by _load)
_keys: RepoKeys | None = None


def _load(path: str, size: int, keys: RepoKeys) -> None:
    global _data, _keys
    with open(path, "rb") as f:
        _data = f.read(size)
    _keys = keys


def _planes(piece: memoryview) -> tuple[np.ndarray, np.ndarray]:
    items = np.frombuffer(piece, dtype=U2)
    return (items >> 8).astype(np.uint8), items.astype(np.uint8)


def _op(name: str) -> Callable[[memoryview], object]:
    assert _keys is not None
    keys, aead = _keys, AESGCM(_keys.data_key)
    plane = codec._compressor(0)
    return {
        "BLAKE3 keyed (chunk id)": lambda p: blake3.blake3(p, key=keys.id_key).digest(),
        "AES-GCM (45 KiB of 80)": lambda p: aead.encrypt(b"\0" * 12, p[: 45 << 10], b"aad"),
        "zstd of the exponent plane": lambda p: plane.compress(_planes(p)[0]),
        "numpy byte planes": _planes,
        "encode_chunk (all of it)": lambda p: codec.encode_chunk(keys, codec.chunk_id(keys, p), p, "bf16", 3, aead),
    }[name]


def _run_range(name: str, lo: int, hi: int) -> float:
    """Apply the op to every PIECE of _data[lo:hi]; the seconds it took."""
    op, view = _op(name), memoryview(_data)
    t = time.perf_counter()
    for off in range(lo, hi - PIECE + 1, PIECE):
        op(view[off : off + PIECE])
    return time.perf_counter() - t


def in_threads(name: str, n: int) -> float:
    step = len(_data) // n
    with ThreadPoolExecutor(n) as pool:
        t = time.perf_counter()
        list(pool.map(lambda i: _run_range(name, i * step, (i + 1) * step), range(n)))
        return time.perf_counter() - t


def in_processes(pool: ProcessPoolExecutor, name: str, n: int) -> float:
    step = len(_data) // n
    t = time.perf_counter()
    list(pool.map(_run_range, [name] * n, [i * step for i in range(n)], [(i + 1) * step for i in range(n)]))
    return time.perf_counter() - t


def chunk_spans(data: bytes) -> int:
    """The real chunker over the sample, to report the mean chunk size the pieces stand for."""
    chunker, n = StreamChunker(tensor_aware=True, defer_digests=True), 0
    for off in range(0, len(data), 4 << 20):
        n += len(chunker.feed(data[off : off + (4 << 20)]))
        chunker.take_digest_work()
    return n + len(chunker.finish())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--mib", type=int, default=256, help="bytes of the model to use")
    args = ap.parse_args()
    keys = RepoKeys.generate()
    _load(str(args.model), args.mib << 20, keys)
    gib = len(_data) / 2**30
    print(f"{len(_data) >> 20} MiB of {args.model.name}: mean chunk {len(_data) / chunk_spans(_data) / 1024:.0f} KiB,"
          f" pieces of {PIECE >> 10} KiB; {os.cpu_count()} CPUs\n")
    print("| work | 1 thread | 2 threads | 2 processes | threads speed-up | processes speed-up |")
    print("|---|---|---|---|---|---|")
    ctx = get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=_load,
                             initargs=(str(args.model), args.mib << 20, keys)) as procs:
        list(procs.map(time.sleep, [0, 0]))  # both workers up and loaded before timing
        for name in ("BLAKE3 keyed (chunk id)", "AES-GCM (45 KiB of 80)", "zstd of the exponent plane",
                     "numpy byte planes", "encode_chunk (all of it)"):
            one = min(in_threads(name, 1) for _ in range(REPEAT))
            two_t = min(in_threads(name, 2) for _ in range(REPEAT))
            two_p = min(in_processes(procs, name, 2) for _ in range(REPEAT))
            print(f"| {name} | {one / gib:.3f} s/GiB | {two_t / gib:.3f} | {two_p / gib:.3f} |"
                  f" {one / two_t:.2f}x | {one / two_p:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
