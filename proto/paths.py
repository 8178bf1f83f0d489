"""Where gitmld keeps things on this host: XDG locations with `GITMLD_*` overrides.

Functions, not constants: the environment is read at call time so tests and tools that set
variables after import see their effect.
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_path(name: str) -> Path | None:
    """An absolute path from the environment; XDG says relative values are to be ignored."""
    value = os.environ.get(name, "")
    return Path(value) if value and os.path.isabs(value) else None


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def socket_path() -> Path:
    """The daemon's Unix socket: GITMLD_SOCKET, else the per-user runtime dir, else /tmp."""
    override = os.environ.get("GITMLD_SOCKET", "")
    if override:
        return Path(override)
    runtime = _env_path("XDG_RUNTIME_DIR")
    if runtime is not None:
        return runtime / "gitmld" / "daemon.sock"
    return Path(f"/tmp/gitmld-{os.getuid()}") / "daemon.sock"


def cache_dir() -> Path:
    """The host cache (index, segments, daemon.log): GITMLD_CACHE_DIR or XDG cache."""
    override = os.environ.get("GITMLD_CACHE_DIR", "")
    if override:
        return Path(override)
    base = _env_path("XDG_CACHE_HOME") or _home() / ".cache"
    return base / "gitmld"


def config_dir() -> Path:
    base = _env_path("XDG_CONFIG_HOME") or _home() / ".config"
    return base / "gitmld"


def data_dir() -> Path:
    base = _env_path("XDG_DATA_HOME") or _home() / ".local" / "share"
    return base / "gitmld"


def default_remote_url() -> str:
    """The remote used when none is configured: a directory on this host (works offline)."""
    return (data_dir() / "remote").resolve().as_uri()


def default_keyfile() -> Path:
    override = os.environ.get("GITMLD_KEYFILE", "")
    return Path(override) if override else config_dir() / "keyfile"
