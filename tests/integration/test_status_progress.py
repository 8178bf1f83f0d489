"""What `gitmld status` and the filter report about the remote and transfers, through real git,
the real daemon and SeaweedFS behind a TCP proxy that a test slows down, stalls or takes down.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3Bucket
from tests.integration.gitenv import GitEnv, wait_until
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_git_workflow import copy_keyfile, host_port, sha256
from tests.modelgen import write_checkpoint
from tests.s3server import S3Server

pytestmark = pytest.mark.integration


def remote_doc(genv: GitEnv, url: str, endpoint: str) -> dict[str, Any] | None:
    for remote in genv.status().get("remotes", []):
        if remote["url"] == url and remote["endpoint"] == endpoint:
            return remote
    return None


def transfers(genv: GitEnv, direction: str) -> list[dict[str, Any]]:
    return [t for t in genv.status().get("transfers", []) if t["direction"] == direction]


def test_status_shows_whether_the_remote_is_reachable(user: GitEnv, s3_server: S3Server,
                                                      s3_bucket: S3Bucket) -> None:
    proxy = TcpProxy(*host_port(s3_server.endpoint))
    proxy.up()
    try:
        work = user.new_repo("model", s3_bucket.url, proxy.url)
        (work / "w.bin").write_bytes(b"weights" * 1000)
        user.git("add", "w.bin", cwd=work)  # the daemon opens the store of this remote
        remote = wait_until(lambda: remote_doc(user, s3_bucket.url, proxy.url), 30, "the remote in status")
        assert remote["reachable"] is True and remote["error"] is None
        assert remote["probe_ms"] < 3000

        proxy.down()
        down = wait_until(lambda: (r := remote_doc(user, s3_bucket.url, proxy.url)) and r["reachable"] is False
                          and r, 30, "status to see the remote down")  # after the few seconds of caching
        assert s3_bucket.url in down["error"] and f"127.0.0.1:{proxy.port}" in down["error"], down["error"]
        text = user.gitmld("status", cwd=work).stdout.decode()
        assert "UNREACHABLE: " in text and f"127.0.0.1:{proxy.port}" in text, text

        proxy.up()
        wait_until(lambda: (r := remote_doc(user, s3_bucket.url, proxy.url)) and r["reachable"] is True,
                   30, "status to see the remote back")
        text = user.gitmld("status", cwd=work).stdout.decode()
        assert re.search(r"state\s+reachable \(\d", text), text
    finally:
        proxy.down()


def test_slow_upload_shows_in_status_and_push_progress(user: GitEnv, s3_server: S3Server,
                                                       s3_bucket: S3Bucket) -> None:
    # 512 KiB/s per connection, two uploads at a time, 1 MiB packs: seconds of visible progress
    proxy = TcpProxy(*host_port(s3_server.endpoint), up_rate_bytes_per_s=512 << 10)
    proxy.up()
    try:
        work = user.new_repo("model", s3_bucket.url, proxy.url)
        user.git("config", "-f", ".gitmldconfig", "gitmld.packSize", "1m", cwd=work)
        user.git("config", "-f", ".gitmldconfig", "gitmld.concurrency", "2", cwd=work)
        user.git("commit", "-q", "-am", "small packs", cwd=work)
        write_checkpoint(work / "model.safetensors", layers=4, hidden=512, seed=11)
        user.git("add", "model.safetensors", cwd=work)  # packs upload in the background from here
        user.git("commit", "-q", "-m", "model", cwd=work)

        uploads = wait_until(lambda: transfers(user, "upload"), 60, "an upload in flight")
        for t in uploads:
            assert t["kind"] == "pack" and t["what"].startswith("data/") and t["remote"] == s3_bucket.url
            assert 0 <= t["done"] < t["total"] and isinstance(t["rate"], int)
        text = user.gitmld("status", cwd=work).stdout.decode()
        assert re.search(r"upload\s+pack [0-9a-f]{12}: \d+% \(", text), text

        pushed = user.gitmld("push", "--progress", cwd=work)
        err = pushed.stderr.decode()
        lines = [line.strip() for line in re.split(r"[\r\n]", err) if line.startswith("Uploading")]
        percents = [int(m.group(1)) for line in lines if (m := re.search(r":\s+(\d+)% \(", line))]
        assert percents and percents == sorted(percents), err  # it only moves forward
        assert any(0 < p < 100 for p in percents), err  # seen part-way, with a known total
        final = re.search(r"100% \(([^/]+)/([^)]+)\).*, done\.", err)
        assert final and final.group(1) == final.group(2), err
        summary = re.search(r"durable in \S+ \((.+) uploaded\)", err)
        assert summary and summary.group(1) == final.group(2), err  # the total was the bytes uploaded
        assert transfers(user, "upload") == []
        assert remote_doc(user, s3_bucket.url, proxy.url)["stats"]["upload_queue"] == 0  # type: ignore[index]
    finally:
        proxy.down()


def test_stalled_fetch_fails_the_checkout_after_fetch_timeout(user: GitEnv, make_user: Callable[..., GitEnv],
                                                              s3_server: S3Server,
                                                              s3_bucket: S3Bucket) -> None:
    work = user.new_repo("model", s3_bucket.url, s3_bucket.endpoint)
    user.git("config", "-f", ".gitmldconfig", "gitmld.packSize", "1m", cwd=work)
    user.git("commit", "-q", "-am", "small packs", cwd=work)
    model = write_checkpoint(work / "model.safetensors", layers=4, hidden=512, seed=12)
    user.git("add", "model.safetensors", cwd=work)
    user.git("commit", "-q", "-m", "model", cwd=work)
    user.git("push", "-q", "origin", "main", cwd=work)
    oid = "sha256:" + sha256(model)

    # Another host reads through a slow proxy, one GET at a time: the fetch moves in steps.
    proxy = TcpProxy(*host_port(s3_server.endpoint), rate_bytes_per_s=512 << 10)
    proxy.up()
    try:
        other = make_user("node", start=False, GITMLD_NO_AUTOSTART="1")
        copy_keyfile(user, other)
        for key, value in (("gitmld.endpoint", proxy.url), ("gitmld.concurrency", "1"),
                           ("gitmld.fetchTimeout", "3")):
            other.git("config", "--global", key, value, cwd=other.root)
        other.start_daemon()
        dest = other.root / "c"
        clone = subprocess.Popen(["git", "clone", "-q", f"file://{work.parent / 'model.git'}", str(dest)],
                                 env=other.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def moving() -> list[dict[str, Any]]:
            return [t for t in transfers(other, "download")
                    if t["kind"] == "fetch" and t["what"] == oid and 0 < t["done"] < t["total"]]

        [download] = wait_until(moving, 120, "the fetch to be part-way")
        assert download["path"] == "model.safetensors" and download["total"] == model.stat().st_size
        text = other.gitmld("status", cwd=other.root).stdout.decode()
        assert re.search(r"download\s+model\.safetensors \(sha256:[0-9a-f]{12}\): \d+% \(", text), text

        proxy.stall()  # connections stay open, nothing moves: only the deadline ends the wait
        _, err_bytes = clone.communicate(timeout=120)
        err = err_bytes.decode(errors="replace")
        assert clone.returncode != 0, err
        assert "'model.safetensors'" in err and oid in err and "no progress for" in err, err
        assert "gitmld.fetchTimeout is 3 s" in err, err
        assert not (dest / "model.safetensors").exists(), "no partial file in the worktree"

        proxy.resume()  # the daemon's fetch goes on; a new checkout gets the file
        other.git("checkout", "-f", "HEAD", "--", ".", cwd=dest)
        assert sha256(dest / "model.safetensors") == sha256(model)
    finally:
        proxy.resume()
        proxy.down()


def test_status_json_document_fields(user: GitEnv, tmp_dir_remote: str) -> None:
    work = user.new_repo("model", tmp_dir_remote, None)
    (work / "w.bin").write_bytes(b"x" * 5000)
    user.git("add", "w.bin", cwd=work)
    doc = json.loads(user.gitmld("status", "--json", cwd=work).stdout)
    assert doc["running"] is True and doc["transfers"] == []
    [remote] = doc["remotes"]
    assert remote["url"] == tmp_dir_remote and remote["reachable"] is True
    assert set(remote) >= {"url", "endpoint", "reachable", "error", "probe_ms", "probed_seconds_ago", "stats"}
    shutil.rmtree(Path(tmp_dir_remote.removeprefix("file://")))  # the share is gone
    gone = wait_until(lambda: (r := remote_doc(user, tmp_dir_remote, None)) and r["reachable"] is False and r,
                      30, "status to notice")
    assert "does not exist" in gone["error"]
