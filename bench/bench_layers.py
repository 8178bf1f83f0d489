"""Where the time of `git add` and a warm `git clone` goes, layer by layer.

Runs one daemon (directory remote, fresh cache) and times, for one checkpoint:
  put via socket   DaemonClient.put of the file (no git): daemon + store ingest
  git add          the same through git's filter process (adds git and the filter hop)
  get via socket   DaemonClient.get of the object to nowhere, warm cache: daemon + store read
  git clone        a clone served from the warm host cache (adds the filter hop, git, the write)

Usage: .venv/bin/python bench/bench_layers.py /tmp/bench-models/256MiB/base.safetensors
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # for bench_store

from bench_store import server_cpu as process_cpu  # noqa: E402  (CPU seconds of a live pid, from /proc)
from gitmld.client.daemon_client import DaemonClient  # noqa: E402

from tests.integration.gitenv import GitEnv  # noqa: E402


def children_cpu() -> float:
    """CPU seconds of the finished children (git and the filter process git started)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(label: str, fn, size: int, daemon_pid: int) -> float:
    d0, c0, s0 = process_cpu(daemon_pid), children_cpu(), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    mine = s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime
    print(f"| {label} | {dt:.2f} s | {size / dt / 1e6:.0f} MB/s | {process_cpu(daemon_pid) - d0:.2f} s"
          f" | {children_cpu() - c0 + mine:.2f} s |", flush=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    args = ap.parse_args()
    size = args.model.stat().st_size
    root = Path(tempfile.mkdtemp(prefix="gitmld-layers-"))
    genv = GitEnv.create(root / "u")
    os.environ.update({k: v for k, v in genv.env.items() if k.startswith(("GITMLD_", "XDG_", "HOME"))})
    pid = genv.start_daemon().pid
    try:
        remote_url = (root / "remote").as_uri()
        work = genv.new_repo("w", remote_url, None)
        remote = {"url": remote_url}
        print(f"{args.model.name}: {size} bytes\n\n| layer | time | rate | daemon CPU"
              " | client CPU (git, filter or this process) |\n|---|---|---|---|---|")

        def put() -> None:
            client = DaemonClient.connect(autostart=False)
            with open(args.model, "rb") as f:
                client.put(remote, "x.safetensors", iter(lambda: f.read(1 << 20), b""))
            client.close()

        timed("put via socket (cold cache)", put, size, pid)
        shutil.copy(args.model, work / "model.safetensors")
        timed("git add (chunks already stored)", lambda: genv.git("add", "model.safetensors", cwd=work), size, pid)
        genv.git("commit", "-q", "-m", "m", cwd=work)
        oid = "sha256:" + genv.git("show", "HEAD:model.safetensors", cwd=work).stdout.decode().split("sha256:")[1][:64]

        def get() -> None:
            client = DaemonClient.connect(autostart=False)
            n = sum(len(b) for b in client.get(remote, oid, size, "x"))
            client.close()
            assert n == size, n

        timed("get via socket (warm cache)", get, size, pid)
        genv.git("push", "-q", "origin", "main", cwd=work)
        timed("git clone (warm cache)", lambda: genv.clone(work, root / "c"), size, pid)
    finally:
        genv.stop_daemon()
        subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()
