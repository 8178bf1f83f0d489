"""client.hooks: pre-push parsing, exactly the pointer blobs of new commits, upload failures."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gitmld.client import hooks
from gitmld.client.daemon_client import DaemonError, DaemonUnavailable
from gitmld.client.gitconfig import GitError
from gitmld.client.hooks import PushError, RefUpdate
from gitmld.proto.pointer import Pointer

from tests.unit.test_gitconfig import git, gitenv_fixture  # noqa: F401 - provides `gitenv`

ZERO = "0" * 40


def make_pointer(content: bytes, **description: str) -> Pointer:
    return Pointer(f"sha256:{hashlib.sha256(content).hexdigest()}", len(content), list(description.items()))


def commit_files(repo: Path, files: dict[str, bytes], message: str) -> str:
    for name, data in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    git("add", *files)
    git("commit", "-q", "-m", message)
    return git("rev-parse", "HEAD").strip()


@pytest.fixture
def pushed(gitenv: Path, tmp_path: Path) -> dict[str, Any]:
    """A repo whose first commit is on `origin` and whose second is not yet pushed."""
    old = make_pointer(b"old model")
    new = make_pointer(b"new model", format="safetensors")
    git("init", "-q", "--bare", str(tmp_path / "origin.git"))
    git("remote", "add", "origin", str(tmp_path / "origin.git"))
    first = commit_files(gitenv, {"models/old.bin": old.to_bytes(), "README": b"hello\n"}, "first")
    git("push", "-q", "origin", "main")
    second = commit_files(
        gitenv,
        {
            "models/new.bin": new.to_bytes(),
            "models/copy.bin": old.to_bytes(),  # an object the remote already has, at a new path
            "notes.txt": b"version gitmld/1 is how pointers start\n",  # looks like one, is not
            "lfs.bin": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 3\n",
            "big.dat": b"version gitmld/1\n" + b"x" * (1 << 20),  # too large to be a pointer
        },
        "second",
    )
    return {"repo": gitenv, "first": first, "second": second, "old": old, "new": new}


def oids(pointers: Any) -> set[str]:
    return {p.pointer.oid for p in pointers}


def test_parse_pre_push_lines() -> None:
    lines = [f"refs/heads/main {'a' * 40} refs/heads/main {'b' * 40}\n", "\n",
             f"refs/heads/gone {ZERO} refs/heads/gone {'c' * 40}\n"]
    updates = hooks.parse_pre_push(lines)
    assert updates[0] == RefUpdate("refs/heads/main", "a" * 40, "refs/heads/main", "b" * 40)
    assert not updates[0].is_new and not updates[0].is_delete
    assert updates[1].is_delete


def test_parse_pre_push_rejects_malformed_line() -> None:
    with pytest.raises(ValueError, match="line 1"):
        hooks.parse_pre_push(["refs/heads/main abc\n"])


def test_push_of_existing_branch_finds_only_new_pointers(pushed: dict[str, Any]) -> None:
    update = RefUpdate("refs/heads/main", pushed["second"], "refs/heads/main", pushed["first"])
    revs = hooks.push_revisions([update], "origin")
    assert revs == [pushed["second"], "--not", pushed["first"]]
    found = list(hooks.pointers_in_revs(revs))
    assert oids(found) == {pushed["new"].oid}
    assert [p.path for p in found] == ["models/new.bin"]
    assert found[0].pointer.get("format") == "safetensors"


def test_push_of_new_branch_excludes_what_remote_tracking_refs_reach(pushed: dict[str, Any]) -> None:
    update = RefUpdate("refs/heads/topic", pushed["second"], "refs/heads/topic", ZERO)
    revs = hooks.push_revisions([update], "origin")
    assert revs == [pushed["second"], "--not", "--remotes=origin"]
    assert oids(hooks.pointers_in_revs(revs)) == {pushed["new"].oid}


def test_remote_tip_unknown_locally_falls_back_to_remote_tracking_refs(pushed: dict[str, Any]) -> None:
    update = RefUpdate("refs/heads/main", pushed["second"], "refs/heads/main", "e" * 40)
    assert hooks.push_revisions([update], "origin") == [pushed["second"], "--not", "--remotes=origin"]


def test_deleting_a_branch_pushes_nothing(pushed: dict[str, Any]) -> None:
    update = RefUpdate("(delete)", ZERO, "refs/heads/main", pushed["first"])
    assert hooks.push_revisions([update], "origin") == []
    assert list(hooks.pointers_in_revs([])) == []


def test_all_history_finds_every_pointer_once(pushed: dict[str, Any]) -> None:
    found = list(hooks.pointers_in_revs(["--all"]))
    assert oids(found) == {pushed["old"].oid, pushed["new"].oid}
    assert len(found) == 2  # copy.bin is the same blob as old.bin: listed once


def test_tree_listing_reports_each_path_and_damaged_pointers(pushed: dict[str, Any]) -> None:
    damaged = b"version gitmld/1\noid sha256:xyz\nsize 1\n"
    commit_files(pushed["repo"], {"broken.bin": damaged}, "third")
    bad: list[hooks.BadPointer] = []
    found = sorted(hooks.pointers_in_tree("HEAD", bad=bad.append), key=lambda p: p.path)
    assert [p.path for p in found] == ["models/copy.bin", "models/new.bin", "models/old.bin"]
    assert [b.path for b in bad] == ["broken.bin"]
    assert "oid" in bad[0].error


def test_stopping_early_ends_the_git_processes(pushed: dict[str, Any]) -> None:
    stream = hooks.pointers_in_revs(["--all"])
    first = next(stream)
    stream.close()  # must not hang or raise
    assert first.pointer.oid in {pushed["old"].oid, pushed["new"].oid}


def test_bad_revision_is_a_git_error(pushed: dict[str, Any]) -> None:
    with pytest.raises(GitError, match="rev-list"):
        list(hooks.pointers_in_revs(["no-such-branch"]))


class FakeDaemon:
    """Answers `flush` and `has` like the daemon would."""

    def __init__(self, *, fail_flush: bool = False, present: set[str] | None = None) -> None:
        self.fail_flush = fail_flush
        self.present = present or set()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.calls.append((op, fields))
        assert op == "has"
        return {"present": fields["oid"] in self.present}

    def request_progress(self, op: str, on_progress: Callable[[dict[str, Any]], None], **fields: Any) -> dict[str, Any]:
        self.calls.append((op, fields))
        if self.fail_flush:
            raise DaemonError("remote", "2 objects could not be uploaded")
        on_progress({"done": 10, "total": 20, "unit": "bytes", "what": "upload"})
        return {"uploaded_bytes": 20, "objects": len(fields["oids"])}


def test_upload_flushes_exactly_the_objects(pushed: dict[str, Any]) -> None:
    objects = hooks.unique_objects(hooks.pointers_in_revs(["--all"]))
    daemon = FakeDaemon()
    frames: list[dict[str, Any]] = []
    answer = hooks.upload(daemon, {"url": "s3://b/p"}, objects, frames.append)
    assert answer["objects"] == 2
    assert daemon.calls == [("flush", {"remote": {"url": "s3://b/p"}, "oids": sorted(objects)})]
    assert frames[0]["done"] == 10


def test_upload_failure_lists_the_missing_objects(pushed: dict[str, Any]) -> None:
    objects = hooks.unique_objects(hooks.pointers_in_revs(["--all"]))
    daemon = FakeDaemon(fail_flush=True, present={pushed["old"].oid})
    with pytest.raises(PushError) as info:
        hooks.upload(daemon, {"url": "s3://b/p"}, objects, lambda frame: None)
    message = str(info.value)
    assert "s3://b/p" in message and "2 objects could not be uploaded" in message
    assert "models/new.bin" in message  # missing: named
    assert "old.bin" not in message  # present in the remote: not blamed


def test_upload_of_nothing_does_not_call_the_daemon() -> None:
    daemon = FakeDaemon()
    assert hooks.upload(daemon, {}, {}, lambda frame: None)["objects"] == 0
    assert daemon.calls == []


def test_upload_without_a_daemon_says_so(pushed: dict[str, Any]) -> None:
    objects = hooks.unique_objects(hooks.pointers_in_revs(["--all"]))

    class Gone(FakeDaemon):
        def request_progress(self, op: str, on_progress: Callable[[dict[str, Any]], None],
                             **fields: Any) -> dict[str, Any]:
            raise DaemonUnavailable("no gitmld daemon answers at /x")

    daemon = Gone()
    with pytest.raises(DaemonUnavailable, match="no gitmld daemon answers"):
        hooks.upload(daemon, {}, objects, lambda frame: None)
    assert daemon.calls == []  # no pointless `has` round trips
