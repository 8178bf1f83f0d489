"""ContentStore put and warm read of one file with a directory remote: no S3 server shares the
cores, so this is the store's own speed. Prints wall time, CPU time and CPU per thread.

    .venv/bin/python bench/bench_put_local.py /tmp/bench-models/1GiB/base.safetensors [--repeat 3]

The background uploads to the directory remote run after the put (StoreOptions'
upload_while_putting default on <= 2 CPUs) and are not in the put's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gitmld.daemon.store.store import ContentStore, StoreOptions  # noqa: E402
from gitmld.proto import keyfile  # noqa: E402
from gitmld.proto.remote_config import RemoteConfig  # noqa: E402

PIECE = 256 * 1024  # the daemon receives DATA frames of at most 256 KiB


async def pieces(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_by_thread() -> dict[str, float]:
    """CPU seconds of the live threads, by name without the pool index."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: collections.Counter[str] = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "ended").rstrip("0123456789_")
        out[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {k: round(v, 2) for k, v in out.most_common()}


async def once(path: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gitmld-bench-put-"))
    try:
        kf = tmp / "keyfile"
        keyfile.create_keyfile(kf)
        cfg = RemoteConfig(url=(tmp / "remote").as_uri(), keyfile=str(kf))
        store = await ContentStore.open(cfg, tmp / "cache", options=StoreOptions())
        size = path.stat().st_size
        try:
            c0, t0 = cpu_seconds(), time.perf_counter()
            result = await store.put(pieces(path))
            t1, c1 = time.perf_counter(), cpu_seconds()
            threads = cpu_by_thread()
            await store.flush()  # the uploads, so that they do not run during the read
            c2, t2 = cpu_seconds(), time.perf_counter()
            n = 0
            async for data in store.open_file(result.oid):
                n += len(data)
            t3, c3 = time.perf_counter(), cpu_seconds()
            assert n == size
        finally:
            await store.close()
        print(f"put {size / (t1 - t0) / 1e6:4.0f} MB/s ({t1 - t0:.2f} s, {c1 - c0:.2f} CPU-s)  "
              f"warm read {size / (t3 - t2) / 1e6:4.0f} MB/s ({t3 - t2:.2f} s, {c3 - c2:.2f} CPU-s)  "
              f"load {os.getloadavg()[0]:.1f}\n  CPU by thread after the put: {threads}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    for _ in range(args.repeat):
        asyncio.run(once(args.file))


if __name__ == "__main__":
    main()
