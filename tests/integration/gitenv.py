"""A sandboxed user for integration tests: its own HOME, XDG dirs, daemon socket and cache.

Each test gets a fresh user so git config, keyfiles and caches never leak between tests, and
a real daemon process (`python -m gitmld.daemon`) that the test starts and stops by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent


def wait_until(predicate: Any, deadline_s: float, what: str, interval: float = 0.05) -> Any:
    """Poll predicate until it returns something truthy, or fail naming what we waited for."""
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval)


def socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class GitEnv:
    """A user of the host: environment, a daemon, and helpers to run git and gitmld."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    daemon: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, root: Path, *, cache_dir: Path | None = None) -> GitEnv:
        home = root / "home"
        run = root / "run"
        for d in (home, run):
            d.mkdir(parents=True, exist_ok=True)
        run.chmod(0o700)
        env = dict(os.environ)
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local/share"),
            XDG_RUNTIME_DIR=str(run),
            GITMLD_SOCKET=str(run / "gitmld.sock"),
            GITMLD_CACHE_DIR=str(cache_dir or root / "cache"),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_TERMINAL_PROMPT="0",
            PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        )
        genv = cls(root=root, env=env)
        genv.git("config", "--global", "user.name", "gitmld test", cwd=root)
        genv.git("config", "--global", "user.email", "test@example.invalid", cwd=root)
        genv.git("config", "--global", "init.defaultBranch", "main", cwd=root)
        genv.git("config", "--global", "advice.detachedHead", "false", cwd=root)
        genv.gitmld("install", "--global", cwd=root)  # filters for every clone, as `git lfs install`
        return genv

    @property
    def socket_path(self) -> Path:
        return Path(self.env["GITMLD_SOCKET"])

    @property
    def cache_dir(self) -> Path:
        return Path(self.env["GITMLD_CACHE_DIR"])

    def run(self, *args: str, cwd: Path, check: bool = True, input: bytes | None = None,
            env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            list(args), cwd=cwd, env=env or self.env, input=input, capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed with {proc.returncode}\n"
                f"stdout: {proc.stdout.decode(errors='replace')[-3000:]}\n"
                f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}\n"
                f"daemon log: {self.daemon_log()[-3000:]}"
            )
        return proc

    def git(self, *args: str, cwd: Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self.run("git", *args, cwd=cwd, check=check, **kw)

    def gitmld(self, *args: str, cwd: Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self.run(str(VENV_BIN / "gitmld"), *args, cwd=cwd, check=check, **kw)

    def start_daemon(self) -> subprocess.Popen[bytes]:
        """Start a daemon for this user and wait until its socket answers."""
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - closed with the process
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "gitmld.daemon", "--log-level", "DEBUG"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        daemon = self.daemon
        wait_until(lambda: daemon.poll() is not None or socket_answers(self.socket_path), 30, "daemon socket")
        if daemon.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.returncode}: {self.daemon_log()[-3000:]}")
        return daemon

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Stop the daemon this test started, by its pid."""
        if self.daemon is None:
            return None
        daemon, self.daemon = self.daemon, None
        if daemon.poll() is None:
            daemon.send_signal(sig)
            try:
                daemon.wait(timeout)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
        return daemon.returncode

    def stop_autostarted_daemon(self, timeout: float = 60) -> None:
        """Stop a daemon the filter started for this user, by the pid in its lock file."""
        lock = self.socket_path.parent / "daemon.lock"
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        wait_until(lambda: not pid_alive(pid), timeout, f"autostarted daemon {pid} to stop")

    def daemon_log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.root / "daemon.log").read_text(errors="replace")
        return ""

    def status(self, cwd: Path | None = None) -> dict[str, Any]:
        out = self.gitmld("status", "--json", cwd=cwd or self.root).stdout
        return json.loads(out)

    def remote_stats(self, url: str) -> dict[str, int]:
        for remote in self.status().get("daemon", self.status()).get("remotes", []):
            if remote["url"] == url:
                return remote["stats"]
        return {}

    def new_repo(self, name: str, remote_url: str, endpoint: str | None) -> Path:
        """A repository with gitmld installed, *.safetensors and *.bin tracked, remote committed."""
        work = self.root / name
        origin = self.root / f"{name}.git"
        self.git("init", "-q", "--bare", str(origin), cwd=self.root)
        self.git("init", "-q", str(work), cwd=self.root)
        self.git("remote", "add", "origin", f"file://{origin}", cwd=work)
        self.gitmld("install", cwd=work)
        self.gitmld("track", "*.safetensors", "*.bin", cwd=work)
        self.git("config", "-f", ".gitmldconfig", "gitmld.url", remote_url, cwd=work)
        if endpoint:
            self.git("config", "-f", ".gitmldconfig", "gitmld.endpoint", endpoint, cwd=work)
        self.git("add", ".gitattributes", ".gitmldconfig", cwd=work)
        self.git("commit", "-q", "-m", "set up gitmld", cwd=work)
        return work

    def clone(self, origin_of: Path, dest: Path, *extra: str) -> Path:
        """git clone, then `gitmld install` in the clone (as a user runs once per clone)."""
        origin = origin_of.parent / f"{origin_of.name}.git"
        self.git("clone", "-q", *extra, f"file://{origin}", str(dest), cwd=self.root)
        return dest
