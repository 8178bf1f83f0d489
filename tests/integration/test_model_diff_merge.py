"""`gitmld diff` and the safetensors merge driver through real git and a real daemon, and the
daemon ops under them (ranged `get`, `compose`)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gitmld.client.daemon_client import DaemonClient, DaemonError
from gitmld.model.layout import read_layout
from gitmld.model.sources import FileSource
from gitmld.proto.pointer import Pointer
from safetensors.torch import load_file

from tests.integration.gitenv import GitEnv
from tests.integration.test_git_workflow import copy_keyfile, sha256, stats_for
from tests.modelgen import bf16_normal, write_checkpoint

pytestmark = pytest.mark.integration

MODEL = "model.safetensors"


def layout_of(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (offset, length) in a local safetensors file."""
    with open(path, "rb") as f:
        return {t.name: (t.offset, t.length) for t in read_layout(FileSource(f, str(path)), str(path)).tensors}


def perturb(path: Path, name: str, seed: int) -> None:
    """Give one bf16 tensor new values in place (a fine-tune of just that tensor)."""
    offset, length = layout_of(path)[name]
    data = bf16_normal(np.random.default_rng([seed, 7]), (length // 2,), 0.02)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def commit(user: GitEnv, work: Path, message: str) -> None:
    user.git("add", MODEL, cwd=work)
    user.git("commit", "-q", "-m", message, cwd=work)


def branches(user: GitEnv, work: Path, *, theirs: list[tuple[str, int]], ours: list[tuple[str, int]],
             theirs_extra: bool = False) -> dict[str, Path]:
    """base on main, branch `other` perturbs `theirs`, main then perturbs `ours`; keeps a copy
    of each version's content for the checks."""
    keep = user.root / "versions"
    keep.mkdir(exist_ok=True)
    write_checkpoint(work / MODEL, layers=4, hidden=256, seed=1)
    commit(user, work, "base")
    shutil.copy(work / MODEL, keep / "base")
    user.git("checkout", "-q", "-b", "other", cwd=work)
    if theirs_extra:
        write_checkpoint(work / MODEL, layers=4, hidden=256, seed=1, extra_tensor=True)
    for name, seed in theirs:
        perturb(work / MODEL, name, seed)
    commit(user, work, "theirs")
    shutil.copy(work / MODEL, keep / "theirs")
    user.git("checkout", "-q", "main", cwd=work)
    for name, seed in ours:
        perturb(work / MODEL, name, seed)
    commit(user, work, "ours")
    shutil.copy(work / MODEL, keep / "ours")
    return {v: keep / v for v in ("base", "theirs", "ours")}


def layer(i: int, proj: str = "q_proj") -> str:
    return f"model.layers.{i}.self_attn.{proj}.weight"


def test_branches_changing_different_layers_merge_cleanly_reusing_chunks(user: GitEnv, tmp_dir_remote: str) -> None:
    work = user.new_repo("m", tmp_dir_remote, None)
    v = branches(user, work, theirs=[(layer(1), 11), (layer(1, "v_proj"), 12)], ours=[(layer(3), 13)],
                 theirs_extra=True)
    before = stats_for(user, tmp_dir_remote)
    merged = user.git("merge", "--no-edit", "other", cwd=work)
    after = stats_for(user, tmp_dir_remote)
    assert b"3 from theirs, 0 averaged, 20 from ours" in merged.stderr  # 2 tensors + the added one
    # the merged file was stored through the daemon: only its header could be new
    assert after["new_chunk_bytes"] - before["new_chunk_bytes"] < 64 * 1024
    assert after["dedup_chunks"] > before["dedup_chunks"]

    got = load_file(str(work / MODEL))
    base, ours, theirs = (load_file(str(v[k])) for k in ("base", "ours", "theirs"))
    assert set(got) == set(theirs) == set(base) | {"score.weight"}
    for name, tensor in got.items():
        expected = theirs[name] if name in (layer(1), layer(1, "v_proj"), "score.weight") else ours[name]
        assert torch.equal(tensor, expected), name
    assert not torch.equal(got[layer(1)], base[layer(1)]) and not torch.equal(got[layer(3)], base[layer(3)])

    pointer = Pointer.parse(user.git("show", f"HEAD:{MODEL}", cwd=work).stdout)
    assert pointer.oid == "sha256:" + sha256(work / MODEL)
    assert len(pointer.tensors) == len(got) and all(t.digest for t in pointer.tensors)
    assert user.git("status", "--porcelain", cwd=work).stdout == b""
    user.git("push", "-q", "origin", "main", cwd=work)  # the composed object becomes durable
    fsck = user.gitmld("fsck", "--verify", cwd=work)
    assert b"ok" in fsck.stderr


def test_merge_on_another_host_reads_from_s3_and_uploads_only_what_is_new(user: GitEnv, make_user,
                                                                          s3_bucket) -> None:
    work = user.new_repo("m", s3_bucket.url, s3_bucket.endpoint)
    v = branches(user, work, theirs=[(layer(1), 51), (layer(2, "o_proj"), 52)], ours=[(layer(3), 53)])
    user.git("push", "-q", "origin", "main", "other", cwd=work)

    other = make_user("host2", start=False)  # empty host cache: theirs' tensors come from S3
    copy_keyfile(user, other)
    other.start_daemon()
    clone = other.clone(work, other.root / "c")
    before = stats_for(other, s3_bucket.url)
    other.git("merge", "--no-edit", "origin/other", cwd=clone)
    got = load_file(str(clone / MODEL))
    ours, theirs = load_file(str(v["ours"])), load_file(str(v["theirs"]))
    for name, tensor in got.items():
        expected = theirs[name] if name in (layer(1), layer(2, "o_proj")) else ours[name]
        assert torch.equal(tensor, expected), name
    mid = stats_for(other, s3_bucket.url)
    assert mid["remote_get_bytes"] > before["remote_get_bytes"]  # theirs' two tensors were fetched
    assert mid["new_chunk_bytes"] - before["new_chunk_bytes"] < 64 * 1024
    other.git("push", "-q", "origin", "HEAD:merged", cwd=clone)
    after = stats_for(other, s3_bucket.url)
    uploaded = after["remote_put_bytes"] - mid["remote_put_bytes"]
    assert 0 < uploaded < 256 * 1024, uploaded  # a manifest and an index segment, no tensor data
    third = user.clone(work, user.root / "c3")
    user.git("checkout", "-q", "merged", cwd=third)
    assert sha256(third / MODEL) == sha256(clone / MODEL)


def test_both_sides_changing_one_tensor_conflict_naming_it(user: GitEnv, tmp_dir_remote: str) -> None:
    work = user.new_repo("m", tmp_dir_remote, None)
    v = branches(user, work, theirs=[(layer(2), 21), (layer(0), 22)], ours=[(layer(2), 23), (layer(3), 24)])
    result = user.git("merge", "--no-edit", "other", cwd=work, check=False)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert f"{layer(2)}: changed in both, with different values" in out, out
    assert layer(0) not in out and layer(3) not in out  # one-sided changes are no conflict
    assert "CONFLICT" in out
    assert user.git("status", "--porcelain", cwd=work).stdout.decode().startswith(f"UU {MODEL}")
    stages = user.git("ls-files", "-u", "--", MODEL, cwd=work).stdout.decode().splitlines()
    assert [line.split()[2] for line in stages] == ["1", "2", "3"]
    assert sha256(work / MODEL) == sha256(v["ours"])  # %A was left as ours

    user.git("checkout", "--theirs", "--", MODEL, cwd=work)  # the usual way out works
    assert sha256(work / MODEL) == sha256(v["theirs"])


def test_average_strategy_gives_the_mean(user: GitEnv, tmp_dir_remote: str) -> None:
    work = user.new_repo("m", tmp_dir_remote, None)
    v = branches(user, work, theirs=[(layer(2), 31), (layer(0), 32)], ours=[(layer(2), 33)])
    user.git("config", "gitmld.mergeStrategy", "average", cwd=work)
    merged = user.git("merge", "--no-edit", "other", cwd=work)
    assert b"1 averaged" in merged.stdout + merged.stderr
    got = load_file(str(work / MODEL))
    ours, theirs = load_file(str(v["ours"])), load_file(str(v["theirs"]))
    mean = ((ours[layer(2)].float() + theirs[layer(2)].float()) / 2).to(torch.bfloat16)
    assert torch.equal(got[layer(2)], mean)
    assert not torch.equal(mean, ours[layer(2)]) and not torch.equal(mean, theirs[layer(2)])
    assert torch.equal(got[layer(0)], theirs[layer(0)])
    assert torch.equal(got[layer(3)], ours[layer(3)])


def test_ours_strategy_and_the_driver_without_tensor_lines(user: GitEnv, tmp_dir_remote: str) -> None:
    """Pointers that list a summary instead of tensor lines: the driver hashes the tensors
    through the daemon and reaches the same merge."""
    work = user.new_repo("m", tmp_dir_remote, None)
    branches(user, work, theirs=[(layer(2), 41), (layer(1), 42)], ours=[(layer(2), 43)])
    files = {}
    for stage, rev in (("O", "main~1"), ("A", "main"), ("B", "other")):
        text = user.git("show", f"{rev}:{MODEL}", cwd=work).stdout
        full = Pointer.parse(text)
        bare = Pointer(full.oid, full.size, [(k, val) for k, val in full.description if k != "tensor"])
        for kind, p in (("full", full), ("bare", bare)):
            path = user.root / f"{kind}-{stage}"
            path.write_text(p.to_text())
            files[kind, stage] = path
    results = {}
    for kind in ("full", "bare"):
        r = user.gitmld("merge-driver", "--strategy", "ours", *(str(files[kind, s]) for s in "OAB"), MODEL,
                        cwd=work)
        assert b"1 from theirs" in r.stderr, r.stderr
        results[kind] = Pointer.parse(files[kind, "A"].read_bytes())
    assert results["full"].oid == results["bare"].oid
    no_strategy = user.gitmld("merge-driver", *(str(files["bare", s]) for s in "OAB"), MODEL, cwd=work, check=False)
    assert no_strategy.returncode == 1 and layer(2).encode() in no_strategy.stderr


def test_diff_of_two_commits_reads_only_the_changed_tensors(user: GitEnv, make_user, s3_bucket) -> None:
    work = user.new_repo("m", s3_bucket.url, s3_bucket.endpoint)
    keep = user.root / "versions"
    keep.mkdir()
    write_checkpoint(work / MODEL, layers=4, hidden=768, seed=5)
    commit(user, work, "v1")
    shutil.copy(work / MODEL, keep / "v1")
    write_checkpoint(work / MODEL, layers=4, hidden=768, seed=5, changed_layers=(2,), extra_tensor=True)
    commit(user, work, "v2")
    shutil.copy(work / MODEL, keep / "v2")
    user.git("push", "-q", "origin", "main", cwd=work)

    other = make_user("host2", start=False)  # a cold host cache: what the diff reads comes from S3
    copy_keyfile(user, other)
    other.start_daemon()
    clone = other.root / "c"
    other.git("clone", "-q", "--no-checkout", f"file://{work.parent / 'm.git'}", str(clone), cwd=other.root)
    other.git("checkout", "HEAD", "--", ".gitattributes", ".gitmldconfig", cwd=clone)
    before = stats_for(other, s3_bucket.url) if other.status()["remotes"] else None
    out = other.gitmld("diff", "--json", "HEAD~1", "HEAD", "--", MODEL, cwd=clone).stdout
    after = stats_for(other, s3_bucket.url)
    report = json.loads(out)

    old_layout, new_layout = layout_of(keep / "v1"), layout_of(keep / "v2")
    old_t, new_t = load_file(str(keep / "v1")), load_file(str(keep / "v2"))
    changed = sorted(n for n in old_t if not torch.equal(old_t[n], new_t[n]))
    assert changed and all(".layers.2." in n for n in changed)
    assert [c["name"] for c in report["changes"] if c["status"] == "changed"] == changed
    assert [(c["status"], c["name"]) for c in report["changes"] if c["status"] != "changed"] == [
        ("added", "score.weight")]
    assert report["unchanged"] == len(old_t) - len(changed)
    for c in report["changes"]:
        if c["status"] != "changed":
            continue
        a = old_t[c["name"]].double().numpy()
        b = new_t[c["name"]].double().numpy()
        assert np.isclose(c["l2"], np.linalg.norm(b - a), rtol=1e-12, atol=0)
        assert np.isclose(c["relative"], np.linalg.norm(b - a) / np.linalg.norm(a), rtol=1e-12, atol=0)
        assert c["max_abs"] == float(np.max(np.abs(b - a)))

    changed_bytes = sum(old_layout[n][1] + new_layout[n][1] for n in changed)
    headers = old_layout[min(old_layout, key=lambda n: old_layout[n][0])][0] \
        + new_layout[min(new_layout, key=lambda n: new_layout[n][0])][0]
    total = (keep / "v1").stat().st_size + (keep / "v2").stat().st_size
    start = before or dict.fromkeys(after, 0)
    read = after["bytes_out"] - start["bytes_out"]
    assert read == changed_bytes + headers == report["bytes_read"]["daemon"]
    assert read < 0.3 * total
    decoded = after["range_chunk_bytes"] - start["range_chunk_bytes"]
    assert read <= decoded < read + 512 * 1024  # only the chunks at the ranges' edges beyond them
    fetched = after["remote_get_bytes"] - start["remote_get_bytes"]
    assert 0 < fetched < changed_bytes + 2 * 1024 * 1024 < total // 2


def test_diff_against_the_worktree_and_a_missing_side(user: GitEnv, tmp_dir_remote: str) -> None:
    work = user.new_repo("m", tmp_dir_remote, None)
    write_checkpoint(work / MODEL, layers=2, hidden=256, seed=6)
    commit(user, work, "v1")
    perturb(work / MODEL, layer(1, "k_proj"), 9)
    text = user.gitmld("diff", "--", MODEL, cwd=work).stdout.decode()
    assert "gitmld diff HEAD worktree" in text
    assert "changed  BF16   256x256" in text and layer(1, "k_proj") in text
    assert "1 changed, 0 added, 0 removed, 11 unchanged" in text
    user.git("commit", "-q", "-am", "v2", cwd=work)
    assert "0 changed, 0 added, 0 removed, 12 unchanged" in user.gitmld("diff", "HEAD", MODEL, cwd=work).stdout.decode()
    first = user.git("rev-list", "--max-parents=0", "HEAD", cwd=work).stdout.decode().strip()
    added = json.loads(user.gitmld("diff", "--json", first, "HEAD", "--", MODEL, cwd=work).stdout)
    assert {c["status"] for c in added["changes"]} == {"added"}
    assert len(added["changes"]) == 12  # embed + 2 layers x 5 + norm
    bad = user.gitmld("diff", "nosuchrev", "--", MODEL, cwd=work, check=False)
    assert bad.returncode == 1 and b"'nosuchrev' is not a commit" in bad.stderr


def test_ranged_get_and_compose_through_the_daemon(user: GitEnv, tmp_dir_remote: str) -> None:
    remote = {"url": tmp_dir_remote}
    data = write_checkpoint(user.root / "m.safetensors", layers=2, hidden=256, seed=8).read_bytes()
    with DaemonClient.connect(str(user.socket_path), autostart=False) as client:
        put = client.put(remote, "m.safetensors", [data])
        oid, size = put["oid"], put["size"]
        for offset, length in ((0, 8), (1000, 70_000), (size - 3, 3), (size, 0)):
            got = b"".join(client.get(remote, oid, size, "m", offset=offset, length=length))
            assert got == data[offset : offset + length]
        with pytest.raises(DaemonError, match="past the end of the file") as err:
            client.get(remote, oid, size, "m", offset=size - 1, length=2)
        assert err.value.code == "bad_request"

        # a new file: a header of our own, a copied range, inline bytes, another copy
        parts = [{"inline": 5}, {"oid": oid, "offset": 100, "length": 5000}, {"inline": 3},
                 {"oid": oid, "offset": 0, "length": 10}]
        composed = client.compose(remote, "c.bin", parts, [b"he", b"llo", b"abc"])
        expected = b"hello" + data[100:5100] + b"abc" + data[:10]
        assert composed["size"] == len(expected)
        assert composed["oid"] == "sha256:" + hashlib.sha256(expected).hexdigest()
        assert b"".join(client.get(remote, composed["oid"], len(expected), "c")) == expected

        for bad_parts, inline, code, message in (
            ([{"inline": 5}], [b"abc"], "bad_request", "ended its data after 3 inline bytes"),
            ([{"inline": 2}], [b"abc"], "bad_request", "more inline bytes than its parts declare"),
            ([{"oid": oid, "offset": size, "length": 1}], [], "bad_request", "past the end"),
            ([{"oid": "sha256:" + "0" * 64, "offset": 0, "length": 1}], [], "not_found", "neither in the host cache"),
            ([{"inline": 1, "oid": oid}], [b"x"], "bad_request", "a part is either"),
        ):
            with pytest.raises(DaemonError, match=message) as err:
                client.compose(remote, "bad.bin", bad_parts, inline)
            assert err.value.code == code
        assert client.request("has", remote=remote, oid=oid, local=True) == {"present": True}  # still usable
