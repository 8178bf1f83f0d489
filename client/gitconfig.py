"""Resolve the remote and its options from git config and the committed `.gitmldconfig`.

A clone must work without setup, so the repository carries its remote in `.gitmldconfig`
(git-config syntax, read with `git config -f`); a user overrides it in their own git config
(local, global, system, or `git -c`), which wins. The filter calls this once per process, so
each source costs one `git config` invocation. Values are validated here, on the client,
so a typo is reported naming the key and the file it came from, not deep in the daemon.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitmld.proto import paths
from gitmld.proto.remote_config import RemoteConfig, parse_url

CONFIG_FILE = ".gitmldconfig"
KEY_REGEXP = r"^gitmld\."

# Canonical spelling of every key we read (git reports names lower-cased) -> RemoteConfig field.
KEYS: dict[str, str] = {
    "gitmld.url": "url",
    "gitmld.endpoint": "endpoint",
    "gitmld.region": "region",
    "gitmld.pathStyle": "path_style",
    "gitmld.keyfile": "keyfile",
    "gitmld.compressionLevel": "compression_level",
    "gitmld.packSize": "pack_size",
    "gitmld.concurrency": "concurrency",
}
_CANONICAL = {k.lower(): k for k in KEYS}

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRUE = {"true", "yes", "on", "1", ""}
_FALSE = {"false", "no", "off", "0"}


class GitError(Exception):
    """A git command failed; the message carries the command and git's own words."""


class ConfigError(ValueError):
    """A `gitmld.*` value is invalid; names the key, the file it came from and a fix."""

    def __init__(self, origin: str, message: str, key: str | None = None) -> None:
        super().__init__(f"{key} in {origin}: {message}" if key else f"{origin}: {message}")
        self.key = key
        self.origin = origin


@dataclass(frozen=True)
class Entry:
    """One `gitmld.*` value and where it was set (for error messages)."""

    key: str  # canonical spelling, e.g. gitmld.packSize
    value: str | None  # None: the key was set without `= value` (a bare boolean)
    origin: str


def run_git(args: Sequence[str], *, cwd: str | Path | None = None, input: bytes | None = None,
            ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
    """Run git, capture its output, raise GitError naming the command when it fails."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, check=False)
    except FileNotFoundError as e:
        raise GitError("git is not installed or not on PATH; gitmld needs git >= 2.27") from e
    if proc.returncode not in ok_codes:
        detail = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise GitError(f"`git {' '.join(args)}` failed: {detail}")
    return proc


def repo_top(cwd: str | Path | None = None) -> Path | None:
    """The top of the current worktree, or None outside one (a bare repository, no repository)."""
    proc = run_git(["rev-parse", "--show-toplevel"], cwd=cwd, ok_codes=(0, 128))
    out = proc.stdout.decode(errors="surrogateescape").strip()
    return Path(out) if proc.returncode == 0 and out else None


def parse_entries(raw: bytes, *, origin: str | None = None) -> list[Entry]:
    """Parse `git config -z [--show-origin] --get-regexp` output. With `origin` given, the output
    has no origin fields and every entry gets that origin."""
    fields = raw.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    entries: list[Entry] = []
    i = 0
    while i < len(fields):
        where = origin
        if where is None:
            where = fields[i].decode(errors="replace")
            where = where[5:] if where.startswith("file:") else where
            i += 1
            if i >= len(fields):
                break
        name, nl, value = fields[i].decode(errors="surrogateescape").partition("\n")
        i += 1
        canonical = _CANONICAL.get(name.lower())
        if canonical is not None:  # unknown gitmld.* keys belong to newer versions: ignore
            entries.append(Entry(canonical, value if nl else None, where))
    return entries


def read_sources(top: Path | None, cwd: str | Path | None = None) -> list[Entry]:
    """All `gitmld.*` entries in ascending precedence: `.gitmldconfig`, then git config."""
    entries: list[Entry] = []
    if top is not None:
        entries += read_committed(top)
    args = ["config", "-z", "--show-origin", "--get-regexp", KEY_REGEXP]
    proc = run_git(args, cwd=cwd or top, ok_codes=(0, 1))
    entries += parse_entries(proc.stdout)
    return entries


def read_committed(top: Path) -> list[Entry]:
    """`.gitmldconfig` from the worktree; when it is not checked out (yet: a clone writes files
    in index order), from HEAD, as Git LFS does with `.lfsconfig`."""
    path = top / CONFIG_FILE
    if path.is_file():
        args, origin = ["-f", str(path)], str(path)
    else:
        args, origin = ["--blob", f"HEAD:{CONFIG_FILE}"], f"HEAD:{CONFIG_FILE}"
    proc = run_git(["config", "-z", *args, "--get-regexp", KEY_REGEXP], cwd=top, ok_codes=(0, 1, 128))
    if proc.returncode == 128:
        detail = proc.stderr.decode(errors="replace").strip()
        if path.is_file():
            raise ConfigError(origin, f"cannot be parsed ({detail}); fix its git-config syntax")
        return []
    return parse_entries(proc.stdout, origin=origin)


def parse_size(text: str) -> int:
    """`16m`, `16M`, `16MiB`, `16MB`, `1g`, `65536`: binary multiples, as git's own size options."""
    m = _SIZE.match(text)
    if not m or (m.group(3) and not m.group(2) and m.group(3).lower() != "b"):
        raise ValueError(f"{text!r} is not a size; write e.g. 16m, 16MiB or 16777216")
    return int(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()]


def parse_bool(text: str | None) -> bool:
    """Git's booleans: true/yes/on/1 (or the bare key), false/no/off/0."""
    value = "" if text is None else text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; write true or false")


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def parse_keyfile(text: str, base: Path) -> str:
    """A path; `~` expands and a relative path is taken from the repository top."""
    if not text.strip():
        raise ValueError("is empty; write the path of the keyfile (see `gitmld keygen`)")
    path = Path(os.path.expanduser(text.strip()))
    return str(path if path.is_absolute() else base / path)


def convert(field: str, text: str | None, base: Path) -> Any:
    """One git-config string -> the typed RemoteConfig field value (ValueError if malformed)."""
    if field == "path_style":
        return parse_bool(text)
    if text is None:
        raise ValueError("has no value")
    if field == "keyfile":
        return parse_keyfile(text, base)
    if field == "pack_size":
        return parse_size(text)
    if field in ("compression_level", "concurrency"):
        return parse_int(text)
    if not text.strip():
        raise ValueError("is empty; remove the key or give it a value")
    if field == "url":
        return normalise_url(text.strip())
    return text.strip()


def normalise_url(url: str) -> str:
    """One spelling per remote (`s3://b/p/` is `s3://b/p`): the daemon shares a store per URL."""
    stripped = url.rstrip("/")
    for scheme in ("s3://", "file://"):
        if url.startswith(scheme) and len(stripped) > len(scheme):
            return stripped
    return url


def resolve(entries: Sequence[Entry], base: Path) -> dict[str, Any]:
    """Validated RemoteConfig fields from entries in ascending precedence (the last one wins).

    Each value is checked on its own by RemoteConfig itself (one set of limits, in proto), so
    the error can name the key and the file that set it.
    """
    last: dict[str, Entry] = {entry.key: entry for entry in entries}
    fields: dict[str, Any] = {}
    for key, entry in last.items():
        field = KEYS[key]
        try:
            value = convert(field, entry.value, base)
            if field == "url":
                parse_url(value)
            else:
                RemoteConfig(url="file:///", **{field: value})
        except ValueError as e:
            reason = str(e).removeprefix(f"{field}: ").removeprefix("url: ")
            raise ConfigError(entry.origin, f"bad value {entry.value!r}: {reason}", key) from None
        fields[field] = value
    return fields


FETCH_TIMEOUT_KEY = "gitmld.fetchTimeout"
DEFAULT_FETCH_TIMEOUT = 600.0  # seconds without progress before a delayed smudge fails


def parse_fetch_timeout(text: str) -> float:
    """Seconds (a whole or decimal number, >= 0; 0 turns the deadline off)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} must be a number of seconds >= 0 (0: no deadline)")
    return value


def load_fetch_timeout(cwd: str | Path | None = None) -> float:
    """gitmld.fetchTimeout from git config (local, global, system, `git -c`), not from the
    committed `.gitmldconfig`: how long to wait is the user's call. ConfigError if malformed."""
    proc = run_git(["config", "--get", FETCH_TIMEOUT_KEY], cwd=cwd, ok_codes=(0, 1))
    text = proc.stdout.decode(errors="replace").strip()
    if proc.returncode == 1 or not text:
        return DEFAULT_FETCH_TIMEOUT
    try:
        return parse_fetch_timeout(text)
    except ValueError as e:
        raise ConfigError("git config", str(e), FETCH_TIMEOUT_KEY) from None


def load_remote_config(top: Path | None = None, *, cwd: str | Path | None = None) -> RemoteConfig:
    """The RemoteConfig for the repository at `top` (found with `git rev-parse` when not given).

    Without `gitmld.url` the remote is the embedded directory remote
    (`paths.default_remote_url()`). Without `gitmld.keyfile` the keyfile stays unset and the
    daemon uses its own default: the daemon owns the keys, and on a shared node its
    environment, not each job's, says where they are. Other options keep RemoteConfig's defaults.
    """
    if top is None:
        top = repo_top(cwd)
    fields = resolve(read_sources(top, cwd), top or Path(cwd or os.getcwd()))
    fields.setdefault("url", paths.default_remote_url())
    return RemoteConfig(**fields)
