"""Git integration through real git, the real daemon and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.gitenv import GitEnv, wait_until
from tests.integration.tcp_proxy import TcpProxy
from tests.modelgen import write_checkpoint

pytestmark = pytest.mark.integration


def host_port(endpoint: str) -> tuple[str, int]:
    parsed = urlsplit(endpoint)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def copy_keyfile(src: GitEnv, dst: GitEnv) -> None:
    """A second machine gets the keyfile out of band, never through Git."""
    s = Path(src.env["XDG_CONFIG_HOME"]) / "gitmld" / "keyfile"
    d = Path(dst.env["XDG_CONFIG_HOME"]) / "gitmld" / "keyfile"
    d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy(s, d)
    d.chmod(0o600)


def stats_for(genv: GitEnv, url: str) -> dict[str, int]:
    status = genv.status()
    daemon = status.get("daemon", status)
    for remote in daemon.get("remotes", []):
        if remote["url"] == url:
            return remote["stats"]
    raise AssertionError(f"daemon knows no remote {url}: {json.dumps(daemon)[:2000]}")


@pytest.mark.parametrize("direct", [True, False], ids=["direct-smudge", "smudge-through-filter"])
def test_add_push_clone_checkout_and_branch_switch(user: GitEnv, s3_bucket, direct: bool) -> None:
    if not direct:
        user.env["GITMLD_NO_DIRECT_SMUDGE"] = "1"  # content comes through the filter's socket
    work = user.new_repo("model", s3_bucket.url, s3_bucket.endpoint)
    model = write_checkpoint(work / "model.safetensors", layers=4, hidden=512, seed=1)
    base_sum = sha256(model)
    user.git("add", "model.safetensors", cwd=work)
    user.git("commit", "-q", "-m", "base", cwd=work)

    pointer = user.git("show", "HEAD:model.safetensors", cwd=work).stdout.decode()
    assert pointer.startswith("version gitmld/1\n")
    assert f"oid sha256:{base_sum}\n" in pointer
    assert f"size {model.stat().st_size}\n" in pointer
    assert "format safetensors" in pointer and "tensor model.layers.3.self_attn.q_proj.weight BF16" in pointer

    user.git("push", "-q", "origin", "main", cwd=work)

    user.git("checkout", "-q", "-b", "finetune", cwd=work)
    write_checkpoint(work / "model.safetensors", layers=4, hidden=512, seed=1, changed_layers=(3,))
    v2_sum = sha256(work / "model.safetensors")
    assert v2_sum != base_sum
    user.git("commit", "-q", "-am", "fine-tune layer 3", cwd=work)
    user.git("push", "-q", "origin", "finetune", cwd=work)

    diff = user.git("diff", "main", "finetune", "--", "model.safetensors", cwd=work).stdout.decode()
    changed = {line.split()[1] for line in diff.splitlines() if line.startswith("+tensor ")}
    assert changed and all(".layers.3." in name for name in changed), diff  # only the fine-tuned layer
    assert f"-oid sha256:{base_sum}" in diff and f"+oid sha256:{v2_sum}" in diff

    user.git("checkout", "-q", "main", cwd=work)
    assert sha256(work / "model.safetensors") == base_sum
    user.git("checkout", "-q", "finetune", cwd=work)
    assert sha256(work / "model.safetensors") == v2_sum

    clone = user.clone(work, user.root / "clone")
    assert sha256(clone / "model.safetensors") == base_sum
    assert "gitmld pre-push hook" in (clone / ".git/hooks/pre-push").read_text(), "clones get the hook"
    user.git("checkout", "-q", "finetune", cwd=clone)
    assert sha256(clone / "model.safetensors") == v2_sum
    assert user.git("status", "--porcelain", cwd=clone).stdout == b""
    status = user.status()
    piped = status.get("daemon", status)["direct_smudge_bytes"]
    assert (piped >= 2 * model.stat().st_size) if direct else piped == 0, piped


def test_second_clone_on_the_host_reads_nothing_from_s3(user: GitEnv, make_user, s3_bucket) -> None:
    work = user.new_repo("model", s3_bucket.url, s3_bucket.endpoint)
    model = write_checkpoint(work / "model.safetensors", layers=4, hidden=512, seed=2)
    user.git("add", "model.safetensors", cwd=work)
    user.git("commit", "-q", "-m", "base", cwd=work)
    user.git("push", "-q", "origin", "main", cwd=work)

    other = make_user("host2", start=False)  # another machine: empty cache, same keyfile
    copy_keyfile(user, other)
    other.start_daemon()
    c1 = other.clone(work, other.root / "c1")
    assert sha256(c1 / "model.safetensors") == sha256(model)
    after_first = stats_for(other, s3_bucket.url)
    assert after_first["remote_gets"] > 0
    cache_after_first = other.status().get("daemon", other.status())["cache_bytes"]

    c2 = other.clone(work, other.root / "c2")
    assert sha256(c2 / "model.safetensors") == sha256(model)
    after_second = stats_for(other, s3_bucket.url)
    assert after_second["remote_gets"] == after_first["remote_gets"]
    assert after_second["remote_get_bytes"] == after_first["remote_get_bytes"]
    cache_after_second = other.status().get("daemon", other.status())["cache_bytes"]
    assert cache_after_second - cache_after_first < model.stat().st_size // 20  # content held once


def test_eight_checkouts_at_once_fetch_each_chunk_once(user: GitEnv, make_user, s3_bucket) -> None:
    work = user.new_repo("model", s3_bucket.url, s3_bucket.endpoint)
    model = write_checkpoint(work / "model.safetensors", layers=4, hidden=768, seed=3)
    user.git("add", "model.safetensors", cwd=work)
    user.git("commit", "-q", "-m", "base", cwd=work)
    user.git("push", "-q", "origin", "main", cwd=work)

    other = make_user("node", start=False)
    copy_keyfile(user, other)
    other.start_daemon()
    origin = work.parent / "model.git"
    procs = [
        subprocess.Popen(["git", "clone", "-q", f"file://{origin}", str(other.root / f"c{i}")],
                         env=other.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode(errors="replace")
    for i in range(8):
        assert sha256(other.root / f"c{i}" / "model.safetensors") == sha256(model)
    stats = stats_for(other, s3_bucket.url)
    # Stored bytes are < the file size (compressed); fetching any chunk twice would exceed it.
    assert 0 < stats["remote_get_bytes"] <= model.stat().st_size


def test_daemon_killed_during_checkout_leaves_no_partial_file(user: GitEnv, make_user, s3_server,
                                                               s3_bucket) -> None:
    proxy = TcpProxy(*host_port(s3_server.endpoint), rate_bytes_per_s=8 << 20)
    proxy.up()
    try:
        work = user.new_repo("model", s3_bucket.url, proxy.url)
        model = write_checkpoint(work / "model.safetensors", layers=6, hidden=1024, seed=4)
        user.git("add", "model.safetensors", cwd=work)
        user.git("commit", "-q", "-m", "base", cwd=work)
        user.git("push", "-q", "origin", "main", cwd=work)

        other = make_user("node", start=False, GITMLD_NO_AUTOSTART="1")
        copy_keyfile(user, other)
        daemon = other.start_daemon()
        origin = work.parent / "model.git"
        dest = other.root / "c"
        clone = subprocess.Popen(["git", "clone", "-q", f"file://{origin}", str(dest)],
                                 env=other.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def downloading() -> bool:
            daemon_doc = other.status()
            return any(r["url"] == s3_bucket.url and r["stats"].get("remote_get_bytes", 0) > 0
                       for r in daemon_doc.get("remotes", []))

        wait_until(downloading, 60, "the checkout to start downloading")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        other.daemon = None
        _, err = clone.communicate(timeout=120)
        assert clone.returncode != 0, "git must report the failed checkout"
        assert b"model.safetensors" in err
        target = dest / "model.safetensors"
        assert not target.exists() or sha256(target) == sha256(model), "no partial file in the worktree"

        other.start_daemon()
        other.git("checkout", "-f", "HEAD", "--", ".", cwd=dest)
        assert sha256(target) == sha256(model)
    finally:
        proxy.down()


def test_push_with_remote_down_fails_keeps_queue_then_succeeds(user: GitEnv, make_user, s3_server,
                                                                s3_bucket) -> None:
    proxy = TcpProxy(*host_port(s3_server.endpoint))
    proxy.up()
    try:
        work = user.new_repo("model", s3_bucket.url, proxy.url)
        write_checkpoint(work / "model.safetensors", layers=2, hidden=512, seed=5)
        user.git("add", "model.safetensors", cwd=work)
        user.git("commit", "-q", "-m", "base", cwd=work)
        user.git("push", "-q", "origin", "main", cwd=work)

        proxy.down()  # git add and commit work offline; push must fail and lose nothing
        model = write_checkpoint(work / "model.safetensors", layers=2, hidden=512, seed=5, changed_layers=(1,))
        user.git("add", "model.safetensors", cwd=work)
        user.git("commit", "-q", "-m", "fine-tune", cwd=work)
        before = user.git("rev-parse", "origin/main", cwd=work).stdout
        failed = user.git("push", "origin", "main", cwd=work, check=False)
        assert failed.returncode != 0
        assert b"sha256:" + sha256(model).encode()[:12] in failed.stderr, failed.stderr
        origin_main = user.git("ls-remote", "origin", "refs/heads/main", cwd=work).stdout.split()[0]
        assert origin_main + b"\n" == before, "a failed upload must stop the push"
        assert stats_for(user, s3_bucket.url)["upload_queue"] > 0

        proxy.up()
        user.git("push", "-q", "origin", "main", cwd=work)
        assert stats_for(user, s3_bucket.url)["upload_queue"] == 0

        other = make_user("host2", start=False)
        copy_keyfile(user, other)
        other.start_daemon()
        c = other.clone(work, other.root / "c")
        assert sha256(c / "model.safetensors") == sha256(model)
    finally:
        proxy.down()


def test_malformed_and_foreign_pointers_fail_checkout_with_clear_errors(user: GitEnv, s3_bucket) -> None:
    work = user.new_repo("model", s3_bucket.url, s3_bucket.endpoint)
    bad = b"version gitmld/1\noid sha256:nothex\nsize 12\n"
    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 12\n"
    for name, content in (("bad.bin", bad), ("lfs.bin", lfs)):
        blob = user.git("hash-object", "-w", "--stdin", cwd=work, input=content).stdout.decode().strip()
        user.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", cwd=work)
    user.git("commit", "-q", "-m", "hand-made pointers", cwd=work)
    user.git("push", "-q", "--no-verify", "origin", "main", cwd=work)
    clone = user.root / "c"
    user.git("clone", "-q", "--no-checkout", f"file://{work.parent / 'model.git'}", str(clone), cwd=user.root)
    user.git("checkout", "HEAD", "--", ".gitattributes", ".gitmldconfig", cwd=clone)
    expected = {"bad.bin": "oid", "lfs.bin": "Git LFS"}
    for name, must in expected.items():
        result = user.git("checkout", "HEAD", "--", name, cwd=clone, check=False)
        assert result.returncode != 0
        err = result.stderr.decode(errors="replace")
        assert name in err and must in err, err
        assert not (clone / name).exists(), "a failed smudge writes nothing into the worktree"


def test_protocol_garbage_gets_an_error_and_the_daemon_lives(user: GitEnv) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(user.socket_path))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    ftype, length = struct.unpack(">BI", data[:5])
    assert ftype == 0x06
    error = json.loads(data[5 : 5 + length])
    assert error["code"] == "protocol"
    assert user.status()["pid"] == user.daemon.pid if user.daemon else False


def test_many_filters_starting_at_once_start_one_daemon(make_user, s3_bucket) -> None:
    genv = make_user("auto", start=False)  # no daemon: the filters must start exactly one
    work = genv.new_repo("model", s3_bucket.url, s3_bucket.endpoint)
    for i in range(6):
        (work / f"m{i}.bin").write_bytes(hashlib.sha256(str(i).encode()).digest() * 4096)
    errors: list[bytes] = []

    def add(i: int) -> None:
        p = genv.git("hash-object", "--path", f"m{i}.bin", f"m{i}.bin", cwd=work, check=False)
        if p.returncode != 0:
            errors.append(p.stderr)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    log = (genv.cache_dir / "daemon.log").read_text(errors="replace")
    assert log.count("serving") == 1, log
