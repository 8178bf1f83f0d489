"""`python -m gitmld.daemon`: run the per-host daemon in the foreground on uvloop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from gitmld.proto import paths
from gitmld.proto.version import __version__

# numpy (byte planes) loads OpenBLAS, whose idle worker threads spin on the cores the daemon's
# own threads need; it does no linear algebra here. Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def parse_size(text: str) -> int:
    """'50GiB', '512m', '1000000' -> bytes."""
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    suffix = t[-1:] if t[-1:] in units and t[-1:] != "" else ""
    number = t[: -len(suffix)] if suffix else t
    try:
        return int(float(number) * units[suffix])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 50GiB, 512m)") from None


def upload_policy(text: str) -> dict[str, int | None]:
    """--upload-while-putting as StoreOptions overrides; empty: the store's default."""
    value = text.strip().lower()
    if not value:
        return {}
    if value == "unlimited":
        return {"upload_while_putting": None}
    try:
        n = parse_size(value)
    except argparse.ArgumentTypeError:
        n = -1
    if n < 0:
        raise SystemExit(f"gitmld daemon: --upload-while-putting: not a size or 'unlimited': {text!r}")
    return {"upload_while_putting": n}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gitmld daemon", description="Run the gitmld daemon in the foreground.")
    p.add_argument("--socket", type=Path, default=None, help="Unix socket path (default: GITMLD_SOCKET or XDG)")
    p.add_argument("--cache-dir", type=Path, default=None, help="host cache (default: GITMLD_CACHE_DIR or XDG)")
    p.add_argument(
        "--cache-limit",
        type=parse_size,
        default=parse_size(os.environ.get("GITMLD_CACHE_LIMIT", "50GiB")),
        help="host cache size limit; uploaded data beyond it is evicted LRU (default 50GiB)",
    )
    p.add_argument(
        "--upload-while-putting",
        default=os.environ.get("GITMLD_UPLOAD_WHILE_PUTTING", ""),
        metavar="BYTES|unlimited",
        help="background upload bytes allowed while a `git add` is storing a file (0: uploads wait until it"
        " is done; default: 0 on machines with 2 CPUs or fewer, else unlimited)",
    )
    p.add_argument("--log-level", default=os.environ.get("GITMLD_LOG_LEVEL", "INFO"))
    p.add_argument("--version", action="version", version=f"gitmld-daemon {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from gitmld.daemon.server import run
    from gitmld.daemon.service import DaemonSettings

    settings = DaemonSettings(
        socket_path=args.socket or Path(paths.socket_path()),
        cache_dir=args.cache_dir or Path(paths.cache_dir()),
        cache_limit_bytes=args.cache_limit,
        store_overrides=upload_policy(args.upload_while_putting),
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(run(settings))
    return uvloop.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
