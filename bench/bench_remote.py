"""Remote throughput on SeaweedFS over loopback: our S3Remote versus one plain aiobotocore call.

The baseline is what a straightforward client does: one put_object of the whole file's bytes
and one get_object read to the end, with aiobotocore's default configuration (path-style
only). Ours is `S3Remote.put_file` (concurrent multipart) and parallel ranged GETs through
`S3Remote.get_range`. The store must beat the baseline by 1.5x. Both run on uvloop, as the
daemon does. Each line also shows the CPU seconds of this client and of the server: on a small
machine the S3 server's CPU, not the network, is what bounds loopback throughput.

    .venv/bin/python bench/bench_remote.py --size-mib 1024

Without --file, a file of random bytes is made under /tmp and deleted afterwards. Without
--endpoint, a SeaweedFS is started for the run (see tests/s3server.py) and stopped after.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.s3server

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from bench_store import server_cpu as process_cpu
from gitmld.daemon.remote.s3 import S3Remote

from tests.s3server import start_s3_server

MiB = 1 << 20


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


SERVER_PID: int | None = None  # the weed we started, for its CPU time


def server_cpu() -> float:
    """CPU seconds the S3 server has used (Linux /proc; 0 when the server is not ours)."""
    return 0.0 if SERVER_PID is None else process_cpu(SERVER_PID)


async def timed(label: str, size: int, work: Awaitable[Any]) -> tuple[float, Any]:
    """Await work (a coroutine not started yet); print throughput and client/server CPU."""
    start, cpu, server = time.perf_counter(), time.process_time(), server_cpu()
    result = await work
    seconds = time.perf_counter() - start
    cpu, server = time.process_time() - cpu, server_cpu() - server
    print(f"  {label:<52} {seconds:7.2f} s {size / seconds / 1e6:7.1f} MB/s"
          f"  cpu: client {cpu:5.2f} s, server {server:5.2f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    return size / seconds / 1e6, result


async def parallel_get(remote: S3Remote, name: str, size: int, range_size: int, concurrency: int) -> list[bytes]:
    """Fetch the object as ranges, `concurrency` at a time; the parts in order, not copied
    into one buffer (the store consumes ranges as they come, as the baseline's caller would)."""
    parts: list[bytes] = [b""] * -(-size // range_size)
    indexes = iter(range(len(parts)))

    async def worker() -> None:
        for index in indexes:
            parts[index] = await remote.get_range(name, index * range_size, range_size)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return parts


def sha256_parts(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


async def run(args: argparse.Namespace, endpoint: str, path: Path) -> None:
    size = path.stat().st_size
    data = path.read_bytes()  # the baseline is given the bytes: its time excludes reading the file
    digest = hashlib.sha256(data).hexdigest()
    bucket = args.bucket
    results: dict[str, list[float]] = {}

    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=endpoint, config=AioConfig(s3={"addressing_style": "path"})
    ) as client:
        await client.put_object(Bucket=bucket, Key="warmup", Body=b"x")  # volume growth happens here
        for rep in range(args.repeat):
            print(f"round {rep + 1}/{args.repeat}, {size / MiB:.0f} MiB", flush=True)
            rate, _ = await timed("baseline: one put_object (aiobotocore defaults)", size,
                                  client.put_object(Bucket=bucket, Key="base/obj", Body=data))
            results.setdefault("base_put", []).append(rate)

            async def base_get() -> bytes:
                resp = await client.get_object(Bucket=bucket, Key="base/obj")
                async with resp["Body"] as body:
                    got: bytes = await body.read()
                return got

            rate, got = await timed("baseline: one get_object, read to the end", size, base_get())
            assert hashlib.sha256(got).hexdigest() == digest, "baseline get returned other bytes"
            del got
            results.setdefault("base_get", []).append(rate)

            remote = S3Remote(f"s3://{bucket}/ours", endpoint=endpoint, path_style=True,
                              concurrency=args.concurrency, part_size=args.part_mib * MiB,
                              multipart_threshold=args.part_mib * MiB)
            try:
                rate, _ = await timed(
                    f"ours: put_file, multipart {args.part_mib} MiB parts x{args.concurrency}", size,
                    remote.put_file("obj", path))
                results.setdefault("our_put", []).append(rate)
                rate, got = await timed(
                    f"ours: get_range {args.range_mib} MiB x{args.concurrency} in parallel", size,
                    parallel_get(remote, "obj", size, args.range_mib * MiB, args.concurrency))
                assert sha256_parts(got) == digest, "ranged gets returned other bytes"
                del got
                results.setdefault("our_get", []).append(rate)
                print(f"  stats {remote.stats.snapshot()}", flush=True)
            finally:
                await remote.close()

    for title, pick in (("best", max), ("median", statistics.median)):
        value = {k: pick(v) for k, v in results.items()}
        print(f"\n{title} of {args.repeat}, MB = 10^6 bytes")
        print(f"  put: baseline {value['base_put']:.1f} MB/s, ours {value['our_put']:.1f} MB/s "
              f"-> {value['our_put'] / value['base_put']:.2f}x")
        print(f"  get: baseline {value['base_get']:.1f} MB/s, ours {value['our_get']:.1f} MB/s "
              f"-> {value['our_get'] / value['base_get']:.2f}x")


def main() -> None:
    global SERVER_PID
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the generated file")
    parser.add_argument("--file", type=Path, help="use this file instead of generating one")
    parser.add_argument("--endpoint", help="an S3 endpoint already running (credentials from the AWS chain)")
    parser.add_argument("--bucket", default="bench-remote")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--range-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio (the daemon runs uvloop)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gitmld-bench-") as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / "payload.bin"
            print(f"writing {args.size_mib} MiB of random bytes to {path}", flush=True)
            make_file(path, args.size_mib * MiB)
        server = None
        endpoint = args.endpoint
        if endpoint is None:
            server = start_s3_server(Path(tmp) / "seaweedfs", volume_size_limit_mb=1024, volumes_per_bucket=4)
            print(f"SeaweedFS {server.endpoint} up in {server.startup_seconds:.1f} s", flush=True)
            os.environ.update(server.env())
            endpoint = server.endpoint
            SERVER_PID = server.process.pid
        try:
            if server is not None:
                server.create_bucket(args.bucket)
            if args.no_uvloop:
                asyncio.run(run(args, endpoint, path))
            else:
                import uvloop

                uvloop.run(run(args, endpoint, path))
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
