"""ContentStore end to end on SeaweedFS over loopback, against one plain aiobotocore call.

    .venv/bin/python bench/bench_store.py                 # 1 GiB series + 4 GiB memory check
    .venv/bin/python bench/bench_store.py --skip-big      # 1 GiB series only

Phases (each in its own child process, so its peak RSS and CPU time are its own):
  put      base checkpoint into an empty host cache (background uploads run meanwhile), then flush
  v2, v3   the fine-tuned and the shifted-header checkpoints: new bytes stored
  cold     read base with an empty host cache (everything from S3)
  warm     read base again from the host cache
  baseline one aiobotocore put_object and one get_object of the same bytes
  big-put, big-read   a 4 GiB checkpoint: peak RSS of a put (+flush) and of a cold read

Models come from ../shared/anchor-bench/gen_model.py (generated if missing) under
/tmp/bench-models-gitmld/. A SeaweedFS is started for the run (tests/s3server.py) and stopped
after. MB = 10^6 bytes. The machine may be shared: the table shows the load average, the CPU
seconds of each phase (which do not depend on what else runs) and how long its threads were
ready but waited for a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.s3server

GEN_MODEL = ROOT.parent / "shared" / "anchor-bench" / "gen_model.py"
MODELS = Path("/tmp/bench-models-gitmld")
BUCKET = "bench-store"
MiB = 1 << 20
PIECE = 256 * 1024  # the daemon receives DATA frames of at most 256 KiB


# -- models --------------------------------------------------------------------------------------


def ensure_models(big: bool) -> dict[str, Path]:
    d1 = MODELS / "1GiB"
    paths = {"base": d1 / "base.safetensors", "v2": d1 / "v2.safetensors", "v3": d1 / "v3.safetensors"}
    d1.mkdir(parents=True, exist_ok=True)
    gen = [sys.executable, str(GEN_MODEL)]
    if not paths["base"].exists():
        subprocess.run([*gen, "base", "--size", "1GiB", "--seed", "0", "--out", str(paths["base"])], check=True)
    if not paths["v2"].exists():
        subprocess.run([*gen, "finetune", "--base", str(paths["base"]), "--out", str(paths["v2"])], check=True)
    if not paths["v3"].exists():
        subprocess.run([*gen, "finetune", "--base", str(paths["base"]), "--out", str(paths["v3"]), "--add-tensor"],
                       check=True)
    if big:
        paths["big"] = MODELS / "4GiB" / "base.safetensors"
        if not paths["big"].exists():
            paths["big"].parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*gen, "base", "--size", "4GiB", "--seed", "4", "--out", str(paths["big"])], check=True)
    return paths


# -- child phases --------------------------------------------------------------------------------


async def file_stream(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


async def phase_store(a: dict[str, Any]) -> dict[str, Any]:
    from gitmld.daemon.store.store import ContentStore, StoreOptions
    from gitmld.proto.remote_config import RemoteConfig

    cfg = RemoteConfig(url=a["url"], endpoint=a["endpoint"], keyfile=a["keyfile"])
    store = await ContentStore.open(cfg, Path(a["cache"]), options=StoreOptions(**a.get("options", {})))
    out: dict[str, Any] = {}
    try:
        if a["op"] == "put":
            path = Path(a["file"])
            t = time.perf_counter()
            result = await store.put(file_stream(path))
            out["put_s"] = time.perf_counter() - t
            t = time.perf_counter()
            await store.flush()
            out["flush_s"] = time.perf_counter() - t
            out["oid"] = result.oid
            out["size"] = result.size
        else:
            size = 0
            t = time.perf_counter()
            async for data in store.open_file(a["oid"]):  # the store verifies the SHA-256 at the end
                size += len(data)
            out["read_s"] = time.perf_counter() - t
            out["size"] = size
        out["stats"] = store.stats()
        out["repo"] = f"{store.repo.config.repo_id} kek {store.repo.kek_id}"
    finally:
        await store.close()
    return out


async def phase_baseline(a: dict[str, Any]) -> dict[str, Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    data = Path(a["file"]).read_bytes()  # given the bytes: its time excludes reading the file
    out: dict[str, Any] = {"size": len(data)}
    async with get_session().create_client("s3", endpoint_url=a["endpoint"],
                                           config=AioConfig(s3={"addressing_style": "path"})) as client:
        t = time.perf_counter()
        await client.put_object(Bucket=BUCKET, Key="baseline/obj", Body=data)
        out["put_s"] = time.perf_counter() - t
        del data
        t = time.perf_counter()
        resp = await client.get_object(Bucket=BUCKET, Key="baseline/obj")
        async with resp["Body"] as body:
            got = await body.read()
        out["read_s"] = time.perf_counter() - t
        assert len(got) == out["size"]
    return out


def peak_rss_mb() -> float:
    """VmHWM: the peak RSS of this process's own address space (ru_maxrss would also count
    the parent's RSS at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def runqueue_wait_s() -> float:
    """Seconds this process's threads were ready to run but waited for a CPU (schedstat):
    how much the rest of the machine slowed this phase down."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def child_main(spec: str) -> None:
    import uvloop

    a = json.loads(spec)
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), runqueue_wait_s()
    out = uvloop.run(phase_baseline(a) if a["op"] == "baseline" else phase_store(a))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out["rq_wait_s"] = runqueue_wait_s() - w0  # threads that ended early are not counted
    out["rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


# -- the orchestrator ---------------------------------------------------------------------------


def run_phase(name: str, spec: dict[str, Any], server_pid: int) -> dict[str, Any]:
    cpu0, load = server_cpu(server_pid), os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"phase {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out: dict[str, Any] = json.loads(line[len("RESULT "):])
    out.update(server_cpu_s=server_cpu(server_pid) - cpu0, load=load, wall_s=wall)
    print(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'stats'})}", flush=True)
    return out


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bucket_bytes(server: Any, prefix: str) -> int:
    total = 0
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def mbs(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:.0f} MB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--skip-big", action="store_true", help="skip the 4 GiB memory phases")
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return

    from tests.s3server import start_s3_server

    paths = ensure_models(big=not args.skip_big)
    with tempfile.TemporaryDirectory(prefix="gitmld-bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_s3_server(tmp / "seaweedfs", volume_size_limit_mb=1024, volumes_per_bucket=4)
        try:
            os.environ.update(server.env())
            server.create_bucket(BUCKET)
            rows = run_all(server, tmp, paths)
        finally:
            server.stop()
    print_table(rows, paths)


def run_all(server: Any, tmp: Path, paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    pid = server.process.pid
    common = {"endpoint": server.endpoint, "keyfile": str(tmp / "keyfile")}
    r1 = dict(common, url=f"s3://{BUCKET}/r1")
    rows: dict[str, dict[str, Any]] = {}
    rows["put"] = run_phase("put", dict(r1, op="put", file=str(paths["base"]), cache=str(tmp / "cacheA")), pid)
    rows["put"]["bucket"] = bucket_bytes(server, "r1/")
    for v in ("v2", "v3"):
        before = bucket_bytes(server, "r1/")
        rows[v] = run_phase(v, dict(r1, op="put", file=str(paths[v]), cache=str(tmp / "cacheA")), pid)
        rows[v]["bucket_new"] = bucket_bytes(server, "r1/") - before
    oid = rows["put"]["oid"]
    rows["cold"] = run_phase("cold", dict(r1, op="read", oid=oid, cache=str(tmp / "cacheB")), pid)
    rows["warm"] = run_phase("warm", dict(r1, op="read", oid=oid, cache=str(tmp / "cacheB")), pid)
    rows["baseline"] = run_phase("baseline", dict(common, op="baseline", file=str(paths["base"])), pid)
    if "big" in paths:
        r2 = dict(common, url=f"s3://{BUCKET}/r2")
        rows["big-put"] = run_phase("big-put", dict(r2, op="put", file=str(paths["big"]), cache=str(tmp / "cacheC")),
                                    pid)
        rows["big-read"] = run_phase("big-read", dict(r2, op="read", oid=rows["big-put"]["oid"],
                                                      cache=str(tmp / "cacheD")), pid)
    return rows


def print_table(rows: dict[str, dict[str, Any]], paths: dict[str, Path]) -> None:
    put, cold, warm, base = rows["put"], rows["cold"], rows["warm"], rows["baseline"]
    size = put["size"]
    print(f"\n## ContentStore on SeaweedFS (loopback), {size:,} bytes ({paths['base'].name})\n")
    print("| step | time | throughput | client CPU | S3 server CPU | waited for CPU | peak RSS | load | notes |")
    print("|---|---|---|---|---|---|---|---|---|")

    def row(step: str, r: dict[str, Any], seconds: float, notes: str = "", nbytes: int = size) -> None:
        print(f"| {step} | {seconds:.2f} s | {mbs(nbytes, seconds)} | {r['cpu_s']:.1f} s | {r['server_cpu_s']:.1f} s"
              f" | {r['rq_wait_s']:.1f} s | {r['rss_mb']:.0f} MB | {r['load']:.1f} | {notes} |")

    st = put["stats"]
    row("put (empty cache)", put, put["put_s"],
        f"chunks {st['new_chunks']}, stored {st['stored_bytes'] / size:.3f} of the size")
    row("flush (after put)", put, put["flush_s"], "seal last pack, wait for uploads, index, manifest")
    row("put + flush", put, put["put_s"] + put["flush_s"], f"bucket {put['bucket']:,} B ({put['bucket'] / size:.3f})")
    row("cold read (empty cache)", cold, cold["read_s"],
        f"{cold['stats']['remote_gets']} GETs, {cold['stats']['remote_get_bytes']:,} B")
    row("warm read (host cache)", warm, warm["read_s"], f"remote GETs {warm['stats']['remote_gets']}")
    print(f"| baseline put_object | {base['put_s']:.2f} s | {mbs(size, base['put_s'])} | | | | | {base['load']:.1f}"
          " | one aiobotocore call, bytes in memory |")
    print(f"| baseline get_object | {base['read_s']:.2f} s | {mbs(size, base['read_s'])} | {base['cpu_s']:.1f} s"
          f" (both) | {base['server_cpu_s']:.1f} s (both) | {base['rq_wait_s']:.1f} s (both) | {base['rss_mb']:.0f} MB"
          " | | read to the end |")
    for v in ("v2", "v3"):
        r = rows[v]
        s = r["stats"]
        row(f"put + flush {v}", r, r["put_s"] + r["flush_s"],
            f"new chunk bytes {s['new_chunk_bytes']:,} ({s['new_chunk_bytes'] / r['size']:.3f}), "
            f"bucket +{r['bucket_new']:,} B ({r['bucket_new'] / r['size']:.3f})", r["size"])
    if "big-put" in rows:
        bp, br = rows["big-put"], rows["big-read"]
        row("4 GiB put + flush", bp, bp["put_s"] + bp["flush_s"], "peak RSS of the whole child", bp["size"])
        row("4 GiB cold read", br, br["read_s"], "peak RSS of the whole child", br["size"])
    print(f"\nput + flush vs baseline put_object: {base['put_s'] / (put['put_s'] + put['flush_s']):.2f}x;"
          f" cold read vs baseline get_object: {base['read_s'] / cold['read_s']:.2f}x")


if __name__ == "__main__":
    main()
