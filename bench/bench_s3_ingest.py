"""What an S3 server's ingest costs per GiB, by request shape: single PUTs of several sizes and
multipart uploads, 8 requests in flight through aiobotocore on uvloop. On this 2-core machine
SeaweedFS's own CPU per GiB written, not the client, bounds how fast any upload (our push, or
Git LFS's) can go; if it did not depend on the shape, no choice of ours moves it.

    .venv/bin/python bench/bench_s3_ingest.py [--mib 512]
    .venv/bin/python bench/bench_s3_ingest.py --endpoint http://127.0.0.1:8333 --server-pid PID

Without --endpoint a SeaweedFS is started for the run (tests/s3server.py) and stopped after;
with it, credentials come from the AWS chain and --server-pid names the server to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.s3server

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from bench_store import server_cpu

from tests.s3server import start_s3_server

MiB = 1 << 20
SHAPES = [  # (label, object size, part size; 0 = one PUT)
    ("PUT 4 MiB", 4 * MiB, 0),
    ("PUT 16 MiB", 16 * MiB, 0),
    ("PUT 64 MiB", 64 * MiB, 0),
    ("multipart 16 MiB in 8 MiB parts", 16 * MiB, 8 * MiB),
    ("multipart 64 MiB in 16 MiB parts", 64 * MiB, 16 * MiB),
]


def client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def upload(c: Any, bucket: str, key: str, body: bytes, part: int) -> None:
    if not part:
        await c.put_object(Bucket=bucket, Key=key, Body=body)
        return
    up = await c.create_multipart_upload(Bucket=bucket, Key=key)

    async def one(n: int, off: int) -> dict[str, Any]:
        r = await c.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n,
                                Body=body[off : off + part])
        return {"PartNumber": n, "ETag": r["ETag"]}

    parts = await asyncio.gather(*(one(i + 1, off) for i, off in enumerate(range(0, len(body), part))))
    await c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                      MultipartUpload={"Parts": list(parts)})


async def run(endpoint: str, bucket: str, total: int, server_pid: int | None) -> None:
    cfg = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=16)
    payload = os.urandom(64 * MiB)  # encrypted packs look like this: incompressible
    async with get_session().create_client("s3", endpoint_url=endpoint, config=cfg) as c:
        print(f"{total // MiB} MiB per shape, 8 requests in flight\n")
        print("| shape | MB/s | server CPU-s per GiB | client CPU-s per GiB |\n|---|---|---|---|")
        for label, size, part in SHAPES:
            limit = asyncio.Semaphore(8)
            stamp = time.time_ns()

            async def one(i: int, size: int = size, part: int = part, stamp: int = stamp,
                          limit: asyncio.Semaphore = limit) -> None:
                async with limit:
                    await upload(c, bucket, f"ingest/{stamp}/{i}", payload[:size], part)

            s0, c0, t0 = server_cpu(server_pid) if server_pid else 0.0, client_cpu(), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(total // size)))
            dt, gib = time.perf_counter() - t0, total / 2**30
            server = (server_cpu(server_pid) - s0) / gib if server_pid else float("nan")
            print(f"| {label} | {total / dt / 1e6:.0f} | {server:.1f} | {(client_cpu() - c0) / gib:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=512, help="bytes uploaded per shape")
    ap.add_argument("--endpoint", help="an S3 endpoint already running")
    ap.add_argument("--server-pid", type=int, help="pid of that endpoint's server, for its CPU time")
    ap.add_argument("--bucket", default="bench-ingest")
    args = ap.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory(prefix="gitmld-ingest-") as tmp:
        server = None
        endpoint, pid = args.endpoint, args.server_pid
        if endpoint is None:
            server = start_s3_server(Path(tmp) / "seaweedfs", volume_size_limit_mb=1024, volumes_per_bucket=4)
            os.environ.update(server.env())
            endpoint, pid = server.endpoint, server.process.pid
            server.create_bucket(args.bucket)
        try:
            uvloop.run(run(endpoint, args.bucket, args.mib * MiB, pid))
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
