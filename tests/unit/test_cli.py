"""The `gitmld` command: install, track/untrack, status without a daemon, keygen, push/prefetch/
fsck against a fake daemon, help for every subcommand, and the progress meter."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gitmld.client import cli, install
from gitmld.client.progress import Progress, human_size, progress_enabled
from gitmld.proto.keyfile import kek_id, load_kek
from gitmld.proto.pointer import Pointer

from tests.unit.test_gitconfig import git, gitenv_fixture  # noqa: F401 - provides `gitenv`

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `gitmld ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def go(*args: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse: --help, usage errors
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return go


def pointer_for(content: bytes, **description: str) -> Pointer:
    return Pointer(f"sha256:{hashlib.sha256(content).hexdigest()}", len(content), list(description.items()))


def commit(repo: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    git("add", *files)
    git("commit", "-q", "-m", "commit")


# -- help and usage -----------------------------------------------------------------------------

SUBCOMMANDS = ["install", "track", "untrack", "status", "filter-process", "push", "pre-push", "prefetch",
               "ls-files", "fsck", "keygen", "pointer-textconv", "diff", "merge-driver", "version"]


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(run: Run, name: str) -> None:
    code, out, _ = run(name, "--help")
    assert code == 0
    assert out.startswith(f"usage: gitmld {name}")


def test_top_level_help_lists_every_command(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0
    for name in [*SUBCOMMANDS, "daemon"]:
        assert name in out


def test_daemon_help_is_the_daemons_own() -> None:
    proc = subprocess.run([sys.executable, "-m", "gitmld.client.cli", "daemon", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "usage: gitmld daemon" in proc.stdout and "--socket" in proc.stdout


def test_usage_errors_exit_2(run: Run) -> None:
    assert run()[0] == 2
    assert run("no-such-command")[0] == 2
    assert run("install", "--global", "--local")[0] == 2
    assert run("untrack")[0] == 2
    assert run("push", "--all", "main")[0] == 2


def test_version(run: Run) -> None:
    code, out, _ = run("version")
    assert code == 0 and out.startswith("gitmld ")


# -- install --------------------------------------------------------------------------------------


def test_install_configures_git_and_the_hook(gitenv: Path, run: Run) -> None:
    code, out, _ = run("install")
    assert code == 0
    process = git("config", "--local", "filter.gitmld.process").strip()
    assert process.startswith(sys.executable) and process.endswith("-m gitmld.client.filter_process")
    assert git("config", "--local", "filter.gitmld.required").strip() == "true"
    assert git("config", "--local", "diff.gitmld.textconv").strip().endswith("pointer-textconv")
    assert git("config", "--local", "diff.gitmld.cachetextconv").strip() == "true"
    driver = git("config", "--local", "merge.gitmld.driver").strip()
    assert driver.startswith(sys.executable) and driver.endswith("-m gitmld.client.cli merge-driver %O %A %B %P")
    assert git("config", "--local", "merge.gitmld.name").strip()
    hook = gitenv / ".git" / "hooks" / "pre-push"
    assert hook.stat().st_mode & stat.S_IXUSR
    assert install.HOOK_MARKER in hook.read_text() and 'pre-push "$@"' in hook.read_text()
    assert str(hook) in out


def test_install_is_idempotent(gitenv: Path, run: Run) -> None:
    run("install")
    hook = (gitenv / ".git" / "hooks" / "pre-push").read_text()
    assert run("install")[0] == 0
    assert (gitenv / ".git" / "hooks" / "pre-push").read_text() == hook
    assert len(git("config", "--local", "--get-all", "filter.gitmld.process").splitlines()) == 1


def test_install_refuses_to_clobber_a_foreign_hook(gitenv: Path, run: Run) -> None:
    hook = gitenv / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\necho mine\n")
    code, _, err = run("install")
    assert code == 1
    assert str(hook) in err and "--force" in err
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    assert git("config", "--local", "filter.gitmld.required").strip() == "true"  # config still done

    assert run("install", "--force")[0] == 0
    assert install.HOOK_MARKER in hook.read_text()
    assert (hook.parent / "pre-push.gitmld-backup").read_text() == "#!/bin/sh\necho mine\n"


def test_install_honours_core_hooks_path(gitenv: Path, run: Run) -> None:
    git("config", "core.hooksPath", "custom-hooks")
    assert run("install")[0] == 0
    assert install.HOOK_MARKER in (gitenv / "custom-hooks" / "pre-push").read_text()


def test_install_global_writes_global_config_and_no_hook(gitenv: Path, run: Run) -> None:
    assert run("install", "--global")[0] == 0
    assert git("config", "--global", "filter.gitmld.required").strip() == "true"
    assert subprocess.run(["git", "config", "--local", "filter.gitmld.process"]).returncode == 1
    assert not (gitenv / ".git" / "hooks" / "pre-push").exists()


def test_install_outside_a_repository_fails(tmp_path: Path, gitenv: Path, run: Run,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    code, _, err = run("install")
    assert code == 1 and "not inside a Git repository" in err


# -- track / untrack ------------------------------------------------------------------------------


def test_track_writes_gitattributes_that_git_honours(gitenv: Path, run: Run) -> None:
    (gitenv / ".gitattributes").write_text("*.txt text\n")
    assert run("track", "*.safetensors", "my model.pt")[0] == 0
    text = (gitenv / ".gitattributes").read_text()
    assert text == ("*.txt text\n"
                    "*.safetensors filter=gitmld diff=gitmld merge=gitmld -text\n"
                    "my[[:space:]]model.pt filter=gitmld diff=gitmld merge=gitmld -text\n")
    attrs = git("check-attr", "filter", "diff", "merge", "text", "--", "a/x.safetensors", "my model.pt", "a.txt")
    assert "a/x.safetensors: filter: gitmld" in attrs
    assert "my model.pt: filter: gitmld" in attrs
    assert "a/x.safetensors: text: unset" in attrs
    assert "a.txt: filter: unspecified" in attrs


def test_track_is_idempotent_and_lists(gitenv: Path, run: Run) -> None:
    run("track", "*.bin")
    code, out, _ = run("track", "*.bin")
    assert code == 0 and "already tracked" in out
    assert (gitenv / ".gitattributes").read_text().count("*.bin") == 1
    code, out, _ = run("track")
    assert code == 0 and "    *.bin (.gitattributes)" in out


def test_track_rejects_negative_patterns(gitenv: Path, run: Run) -> None:
    code, _, err = run("track", "!*.bin")
    assert code == 1 and "negative" in err
    assert not (gitenv / ".gitattributes").exists()


def test_track_points_out_files_already_stored_as_content(gitenv: Path, run: Run) -> None:
    commit(gitenv, {"weights.bin": b"\x00" * 100, "ptr.bin": pointer_for(b"x").to_bytes(),
                    "huge.bin": b"version gitmld/1\n" + b"\x00" * (1 << 20)})
    code, out, _ = run("track", "*.bin")
    assert code == 0
    assert "2 file(s)" in out and "weights.bin" in out and "huge.bin" in out and "ptr.bin" not in out
    assert "git add --renormalize" in out


def test_untrack_removes_only_gitmld_attributes(gitenv: Path, run: Run) -> None:
    (gitenv / ".gitattributes").write_text(
        "# models\n*.bin filter=gitmld diff=gitmld merge=gitmld -text export-ignore\n"
        "*.pt filter=gitmld diff=gitmld merge=gitmld -text\n*.txt text\n"
    )
    code, out, _ = run("untrack", "*.bin", "*.pt", "*.none")
    assert code == 0
    assert "'*.none' was not tracked" in out
    assert (gitenv / ".gitattributes").read_text() == "# models\n*.bin export-ignore\n*.txt text\n"


# -- status ---------------------------------------------------------------------------------------


def test_status_without_daemon_says_so_and_exits_1(gitenv: Path, run: Run) -> None:
    code, out, err = run("status")
    assert code == 1
    assert "not running" in err
    socket = str(Path(os.environ["XDG_RUNTIME_DIR"]) / "gitmld" / "daemon.sock")
    assert socket in out and "not running" in out
    assert "file://" in out  # the repository's remote is still shown


def test_status_json_without_daemon(gitenv: Path, run: Run) -> None:
    code, out, _ = run("status", "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["running"] is False
    assert doc["client"]["socket"].endswith("daemon.sock")
    assert doc["client"]["remote"]["url"].startswith("file://")


def test_status_shows_a_config_error_instead_of_failing(gitenv: Path, run: Run) -> None:
    git("config", "gitmld.packSize", "huge")
    code, out, _ = run("status")
    assert code == 1
    assert "gitmld.packSize" in out


def test_render_status_of_a_running_daemon() -> None:
    doc = {
        "version": "0.1.0", "pid": 4242, "uptime_seconds": 3725.0, "socket": "/run/x.sock",
        "cache_dir": "/c", "cache_bytes": 1 << 30, "cache_limit_bytes": 4 << 30,
        "connections": 2, "requests_served": 17,
        "transfers": [
            {"direction": "download", "kind": "fetch", "what": "sha256:" + "ab" * 32, "path": "model.bin",
             "done": 1 << 20, "total": 4 << 20, "rate": 512 << 10, "seconds": 1.5, "remote": "s3://b/p"},
            {"direction": "upload", "kind": "pack", "what": "data/1a/1a2b3c4d5e6f7a8b9c", "path": "",
             "done": 0, "total": 16 << 20, "rate": 0, "seconds": 0.5, "remote": "s3://b/p"},
        ],
        "remotes": [{"url": "s3://b/p", "reachable": True, "error": None, "probe_ms": 12.5,
                     "stats": {"cache_hits": 3, "cache_misses": 1, "upload_queue": 5,
                               "upload_queue_bytes": 80 << 20, "remote_get_bytes": 2048, "remote_gets": 2}},
                    {"url": "s3://down/p", "reachable": False, "probe_ms": 3000.0,
                     "error": "remote s3://down/p: no answer within 3 s", "stats": {}}],
    }
    facts = {"version": "0.1.0", "socket": "/run/x.sock", "cache_dir": "/c", "remote": {"url": "s3://b/p"}}
    text = cli.render_status(doc, facts)
    assert "running, gitmld 0.1.0" in text
    assert "4242" in text and "1h 2m" in text
    assert "1.00 GiB of 4.00 GiB (25%)" in text
    assert "75.0% (3 hits, 1 misses)" in text
    assert "5 object(s) waiting (80.0 MiB)" in text
    assert "model.bin (sha256:abababababab): 25% (1.00 MiB/4.00 MiB), 512 KiB/s, 1.5 s" in text
    assert "pack 1a2b3c4d5e6f: 0% (0 bytes/16.0 MiB), 0.5 s" in text
    assert "\n  s3://b/p\n" in text and "2.00 KiB in 2 gets" in text
    assert "reachable (12.5 ms)" in text
    assert "UNREACHABLE: remote s3://down/p: no answer within 3 s" in text
    lines = text.splitlines()
    pid = next(line for line in lines if line.strip().startswith("pid"))
    uptime = next(line for line in lines if line.strip().startswith("uptime"))
    assert pid.index("4242") == uptime.index("1h 2m")  # values line up in one column


# -- keygen ---------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key(tmp_path: Path, gitenv: Path, run: Run) -> None:
    path = tmp_path / "keys" / "kek"
    code, out, _ = run("keygen", str(path))
    assert code == 0
    key = load_kek(path)  # the format the daemon reads
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert str(path) in out and kek_id(key) in out


def test_keygen_default_path_and_refusal_to_overwrite(gitenv: Path, run: Run) -> None:
    assert run("keygen")[0] == 0
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "gitmld" / "keyfile"
    key = path.read_bytes()
    code, _, err = run("keygen")
    assert code == 1 and "already exists" in err and "--force" in err
    assert path.read_bytes() == key
    assert run("keygen", "--force")[0] == 0
    assert path.read_bytes() != key and stat.S_IMODE(path.stat().st_mode) == 0o600


# -- pointer-textconv / ls-files -----------------------------------------------------------------


def test_textconv_prints_the_pointer(tmp_path: Path, run: Run) -> None:
    text = pointer_for(b"abc", format="safetensors").to_text()
    (tmp_path / "p").write_text(text)
    assert run("pointer-textconv", str(tmp_path / "p")) == (0, text, "")


def test_textconv_without_a_daemon_summarises_content_by_its_oid(gitenv: Path, run: Run) -> None:
    content = os.urandom(3 << 20)  # larger than a pointer can be: read in pieces
    (gitenv / "big").write_bytes(content)
    code, out, _ = run("pointer-textconv", str(gitenv / "big"))
    assert code == 0
    first, second = out.splitlines()
    assert first == f"gitmld content: sha256:{hashlib.sha256(content).hexdigest()}, 3.00 MiB ({3 << 20} bytes)"
    assert second.startswith("(no description: ") and "daemon" in second


def test_git_diff_shows_pointer_changes_through_textconv(gitenv: Path) -> None:
    git("config", "diff.gitmld.textconv", install.git_settings()["diff.gitmld.textconv"])
    (gitenv / ".gitattributes").write_text("*.bin diff=gitmld\n")  # no filter: blobs stay pointers
    old, new = pointer_for(b"v1", format="safetensors"), pointer_for(b"v2", format="gguf")
    commit(gitenv, {".gitattributes": (gitenv / ".gitattributes").read_bytes(), "m.bin": old.to_bytes()})
    (gitenv / "m.bin").write_bytes(new.to_bytes())
    diff = git("diff")
    assert f"-oid {old.oid}" in diff and f"+oid {new.oid}" in diff
    assert "-format safetensors" in diff and "+format gguf" in diff


def test_textconv_missing_file_fails_naming_it(tmp_path: Path, run: Run) -> None:
    code, _, err = run("pointer-textconv", str(tmp_path / "nope"))
    assert code == 1 and "nope" in err


def test_ls_files_lists_pointers_with_description(gitenv: Path, run: Run) -> None:
    p = pointer_for(b"model", format="safetensors", params="1.5B")
    commit(gitenv, {"m/model.bin": p.to_bytes(), "README": b"hi\n"})
    code, out, _ = run("ls-files")
    assert code == 0
    assert out.splitlines() == [f"{p.sha256[:12]}     5 bytes  m/model.bin  format=safetensors  params=1.5B"]


# -- commands that talk to the daemon -------------------------------------------------------------


class FakeClient:
    """Stands in for DaemonClient: objects in `store` are present; `fetchable` become ready."""

    def __init__(self, store: dict[str, bytes], fetchable: set[str] | None = None) -> None:
        self.store = store
        self.fetchable = fetchable or set()
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.requests.append((op, fields))
        if op == "has":
            return {"present": fields["oid"] in self.store}
        if op == "fetch":
            return {"queued": len(fields["oids"])}
        if op == "wait":
            first = sorted(fields["oids"])[0]  # one object per round: the loop must go on
            if first in self.fetchable:
                return {"ready": [first], "failed": {}}
            return {"ready": [], "failed": {first: "not in the remote"}}
        raise AssertionError(op)

    def request_progress(self, op: str, on_progress: Callable[[dict[str, Any]], None],
                         **fields: Any) -> dict[str, Any]:
        self.requests.append((op, fields))
        on_progress({"done": 5, "total": 10, "unit": "bytes", "what": "upload"})
        return {"uploaded_bytes": 10, "objects": len(fields["oids"])}

    def get(self, remote: dict[str, Any], oid: str, size: int, path: str) -> Iterator[bytes]:
        yield self.store[oid]


@pytest.fixture
def two_models(gitenv: Path) -> dict[str, Pointer]:
    a, b = pointer_for(b"model a"), pointer_for(b"model b")
    commit(gitenv, {"a.bin": a.to_bytes(), "b.bin": b.to_bytes(), "c.txt": b"text\n"})
    return {"a": a, "b": b}


def use_fake(monkeypatch: pytest.MonkeyPatch, client: FakeClient) -> None:
    monkeypatch.setattr(cli, "connect", lambda: client)


def test_push_flushes_the_pointers_with_progress(two_models: dict[str, Pointer], run: Run,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient({})
    use_fake(monkeypatch, client)
    code, _, err = run("push", "--progress")
    assert code == 0
    op, fields = client.requests[0]
    assert op == "flush" and fields["oids"] == sorted(p.oid for p in two_models.values())
    assert fields["remote"]["url"].startswith("file://")
    assert "Uploading gitmld objects:  50% (5 bytes/10 bytes)" in err
    assert "2 object(s) durable" in err


def test_push_without_pointers_needs_no_daemon(gitenv: Path, run: Run) -> None:
    commit(gitenv, {"plain.txt": b"plain\n"})
    code, _, err = run("push")
    assert code == 0 and "no gitmld objects" in err


def test_push_without_a_daemon_fails_clearly(two_models: dict[str, Pointer], run: Run) -> None:
    code, _, err = run("push")  # GITMLD_NO_AUTOSTART=1 and nothing listens
    assert code == 1 and "no gitmld daemon answers" in err


def test_git_push_is_blocked_when_objects_cannot_be_uploaded(two_models: dict[str, Pointer], tmp_path: Path,
                                                            run: Run) -> None:
    git("init", "-q", "--bare", str(tmp_path / "origin.git"))
    git("remote", "add", "origin", str(tmp_path / "origin.git"))
    assert run("install")[0] == 0
    proc = subprocess.run(["git", "push", "origin", "main"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "no gitmld daemon answers" in proc.stderr
    assert git("--git-dir", str(tmp_path / "origin.git"), "for-each-ref").strip() == ""  # nothing pushed


def test_git_push_without_pointers_passes_the_hook(gitenv: Path, tmp_path: Path, run: Run) -> None:
    commit(gitenv, {"plain.txt": b"plain\n"})
    git("init", "-q", "--bare", str(tmp_path / "origin.git"))
    git("remote", "add", "origin", str(tmp_path / "origin.git"))
    assert run("install")[0] == 0
    proc = subprocess.run(["git", "push", "-q", "origin", "main"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "refs/heads/main" in git("--git-dir", str(tmp_path / "origin.git"), "for-each-ref")


def test_prefetch_waits_for_every_object_and_reports_failures(two_models: dict[str, Pointer], run: Run,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = two_models["a"], two_models["b"]
    client = FakeClient({}, fetchable={a.oid})
    use_fake(monkeypatch, client)
    code, _, err = run("prefetch")
    assert code == 1
    assert client.requests[0] == ("fetch", {"remote": client.requests[0][1]["remote"],
                                            "oids": sorted([a.oid, b.oid])})
    assert [op for op, _ in client.requests] == ["fetch", "wait", "wait"]
    assert "b.bin" in err and "a.bin" not in err  # only the failed object is named
    assert "not in the remote" in err and "1 of 2" in err


def test_prefetch_success(two_models: dict[str, Pointer], run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake(monkeypatch, FakeClient({}, fetchable={p.oid for p in two_models.values()}))
    code, _, err = run("prefetch", "HEAD")
    assert code == 0 and "2 object(s)" in err


def test_fsck_reports_missing_and_corrupt_objects(two_models: dict[str, Pointer], run: Run,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a = two_models["a"]
    use_fake(monkeypatch, FakeClient({a.oid: b"model a"}))
    code, out, _ = run("fsck")
    assert code == 1
    assert "b.bin" in out and "missing" in out and "a.bin" not in out

    use_fake(monkeypatch, FakeClient({p.oid: b"tampered" for p in two_models.values()}))
    code, out, _ = run("fsck", "--verify")
    assert code == 1 and out.count("corrupt") == 2


def test_fsck_clean_and_damaged_pointer(two_models: dict[str, Pointer], gitenv: Path, run: Run,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake(monkeypatch, FakeClient({p.oid: c for p, c in zip(two_models.values(), [b"model a", b"model b"],
                                                                 strict=True)}))
    code, _, err = run("fsck", "--verify")
    assert code == 0 and "ok" in err
    commit(gitenv, {"broken.bin": b"version gitmld/1\nsize 3\n"})
    code, out, _ = run("fsck")
    assert code == 1 and "broken.bin: damaged pointer" in out


# -- progress meter -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_like_gits() -> None:
    clock, out = Clock(), io.StringIO()
    meter = Progress("Uploading gitmld objects", total=7, stream=out, clock=clock)
    meter.update(0, nbytes=0)
    clock.now += 1.0
    meter.update(3, nbytes=180 << 20)
    assert meter.render() == "Uploading gitmld objects:  42% (3/7), 180 MiB | 180 MiB/s"
    meter.finish()
    assert out.getvalue().endswith(", done.\n")
    assert out.getvalue().count("\r") == 2


def test_progress_is_throttled_and_can_be_off() -> None:
    clock, out = Clock(), io.StringIO()
    meter = Progress("Counting", stream=out, clock=clock, interval=0.5)
    for n in range(1000):
        meter.update(n)  # no total, no time passing: one draw
    assert out.getvalue().count("\r") == 1
    quiet = io.StringIO()
    off = Progress("Counting", total=2, stream=quiet, enabled=False)
    off.update(1)
    off.finish()
    assert quiet.getvalue() == ""
    idle = io.StringIO()
    Progress("Uploading", stream=idle).finish()  # nothing happened: nothing to say
    assert idle.getvalue() == ""


def test_progress_only_on_terminals_unless_asked() -> None:
    assert progress_enabled(False, io.StringIO()) is False
    assert progress_enabled(True, io.StringIO()) is True


@pytest.mark.parametrize(("n", "text"), [(0, "0 bytes"), (1023, "1023 bytes"), (1536, "1.50 KiB"),
                                         (int(1.2 * (1 << 30)), "1.20 GiB"), (150 << 20, "150 MiB")])
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text
