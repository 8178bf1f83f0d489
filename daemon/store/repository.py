"""Open or create the repository in a remote: `keys/<kek id>` and the sealed `config`.

`keys/<kek id>` holds the repository's master keys wrapped by the KEK in the local keyfile;
`config` (sealed) fixes the format version, the repository id and the chunker parameters,
so every writer chunks alike and dedups against every other. A copy of both is kept in
the host cache so a host can read what it has cached while the remote is unreachable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitmld.daemon.remote.base import Remote, RemoteNotFound, RemoteUnavailable
from gitmld.daemon.store import codec, keys
from gitmld.daemon.store.errors import CorruptObject, RepositoryKeyError, UnsupportedFormat
from gitmld.daemon.store.keys import RepoKeys

log = logging.getLogger(__name__)

REPO_VERSION = 1
CONFIG_NAME = "config"
CONFIG_KIND = b"config"
KEYS_PREFIX = "keys/"
_REPO_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class RepoConfig:
    repo_id: str  # 32 hex: names this repository's directory in every host cache
    chunk_avg_size: int
    version: int = REPO_VERSION

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "id": self.repo_id,
                           "chunker": {"avg_size": self.chunk_avg_size}}, sort_keys=True).encode()

    @classmethod
    def decode(cls, plain: bytes) -> RepoConfig:
        try:
            doc: dict[str, Any] = json.loads(plain)
            version = int(doc["version"])
            if version > REPO_VERSION:
                raise UnsupportedFormat(
                    f"the repository has format version {version}; this gitmld reads up to {REPO_VERSION}:"
                    " upgrade gitmld", object=CONFIG_NAME)
            repo_id = str(doc["id"])
            if not _REPO_ID.fullmatch(repo_id):
                raise ValueError(f"bad repository id {repo_id!r}")
            return cls(repo_id, int(doc["chunker"]["avg_size"]), version)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"repository config is malformed: {exc}", object=CONFIG_NAME) from exc


@dataclass(frozen=True, slots=True)
class Repository:
    keys: RepoKeys
    config: RepoConfig
    keyfile: Path
    kek_id: str
    offline: bool = False  # opened from the host cache's copy: the remote did not answer


def keyfile_path(configured: str | None) -> Path:
    return Path(os.path.expanduser(configured)) if configured else keys.default_keyfile_path()


async def open_repository(remote: Remote, keyfile: Path, *, chunk_avg_size: int,
                          cache_dir: Path) -> Repository:
    """Open the repository at `remote`; create it (and the keyfile) when the remote is new."""
    copy = _OfflineCopy(cache_dir, remote.url)
    kek = _load_kek(keyfile) if keyfile.exists() else None
    try:
        names = await remote.list(KEYS_PREFIX)
    except RemoteUnavailable:
        if kek is None or not copy.exists():
            raise
        log.warning("remote %s unreachable; opening the repository from the host cache's copy", remote.url)
        return copy.load(kek, keyfile)
    if kek is None:
        if names or await remote.exists(CONFIG_NAME):
            raise RepositoryKeyError(
                f"no keyfile at {keyfile}, and the repository at {remote.url} already exists: copy the"
                " keyfile used to create it to this path (mode 0600) or set gitmld.keyfile to it"
                " (`gitmld keygen` makes a new keyfile only for new repositories)", object=KEYS_PREFIX)
        _refuse_to_replace(remote, copy)
        kek = keys.create_keyfile(keyfile)
        log.info("created keyfile %s for the new repository at %s", keyfile, remote.url)
    kid = keys.kek_id(kek)
    key_name = KEYS_PREFIX + kid
    # A listing may lag behind writes on some S3 servers; a HEAD does not. Never create a
    # repository (new keys over old data) on the word of a listing alone.
    if key_name not in names and not await remote.exists(key_name):
        if names or await remote.exists(CONFIG_NAME):
            others = ", ".join(n[len(KEYS_PREFIX):] for n in names) or "(none listed yet)"
            raise RepositoryKeyError(
                f"the repository at {remote.url} was created with another keyfile: {keyfile} has key id"
                f" {kid}, the repository has key id(s) {others}; copy that keyfile here or set"
                " gitmld.keyfile to it", object=key_name)
        _refuse_to_replace(remote, copy)
        await _create(remote, kek, kid, chunk_avg_size)
    repo, wrapped, sealed = await _open(remote, kek, kid, keyfile, chunk_avg_size)
    copy.save(kid, wrapped, sealed)
    return repo


def _refuse_to_replace(remote: Remote, copy: _OfflineCopy) -> None:
    """The remote holds no repository: create one only if this host never used one there. A
    share that is not mounted, or a bucket emptied behind our back, must not get new keys over
    the data this host still has to upload (its packs stay queued until the remote is back)."""
    if copy.exists():
        raise RepositoryKeyError(
            f"the remote {remote.url} holds no repository, but this host has used one there (its keys are"
            f" cached in {copy.path}): if it is a share that is not mounted, mount it; if the bucket or prefix"
            f" changed, fix gitmld.url; to start a new repository there, delete {copy.path}", object=CONFIG_NAME)


def _load_kek(path: Path) -> bytes:
    try:
        return keys.load_kek(path)
    except keys.KeyFileError as exc:
        raise RepositoryKeyError(str(exc), object=str(path)) from exc


def _unwrap(blob: bytes, kek: bytes, keyfile: Path, name: str) -> RepoKeys:
    try:
        return keys.unwrap_keys(blob, kek)
    except keys.UnsupportedKeysVersion as exc:
        raise UnsupportedFormat(f"{name}: {exc}", object=name) from exc
    except keys.KeysError as exc:
        raise RepositoryKeyError(f"{name} does not open with the keyfile {keyfile}: {exc}", object=name) from exc


def _open_config(repo_keys: RepoKeys, blob: bytes) -> RepoConfig:
    try:
        return RepoConfig.decode(codec.open_blob(repo_keys, CONFIG_KIND, blob))
    except codec.UnsupportedVersion as exc:
        raise UnsupportedFormat(f"repository config: {exc}; upgrade gitmld", object=CONFIG_NAME) from exc
    except codec.CorruptBlob as exc:
        raise CorruptObject(
            f"repository config does not verify with the repository keys ({exc}): damaged, or two"
            " hosts created the repository at the same time", object=CONFIG_NAME) from exc


async def _open(remote: Remote, kek: bytes, kid: str, keyfile: Path,
                avg: int) -> tuple[Repository, bytes, bytes]:
    """The repository and the raw key and config objects it was read from."""
    key_name = KEYS_PREFIX + kid
    wrapped = await remote.get_bytes(key_name)
    repo_keys = _unwrap(wrapped, kek, keyfile, key_name)
    try:
        sealed = await remote.get_bytes(CONFIG_NAME)
    except RemoteNotFound:
        # A creation stopped between the key and the config: finish it.
        sealed = codec.seal_blob(repo_keys, CONFIG_KIND, RepoConfig(secrets.token_hex(16), avg).encode())
        await remote.put_bytes(CONFIG_NAME, sealed)
    config = _open_config(repo_keys, sealed)
    return Repository(repo_keys, config, keyfile, kid), wrapped, sealed


async def _create(remote: Remote, kek: bytes, kid: str, avg: int) -> None:
    """Keys first, then config (a config without keys could never be read). The caller
    reads both back: if another host created the repository at the same moment, the
    objects that won are what everyone uses."""
    repo_keys = RepoKeys.generate()
    config = RepoConfig(secrets.token_hex(16), avg)
    await remote.prepare_new_repository()
    await remote.put_bytes(KEYS_PREFIX + kid, keys.wrap_keys(repo_keys, kek))
    await remote.put_bytes(CONFIG_NAME, codec.seal_blob(repo_keys, CONFIG_KIND, config.encode()))
    log.info("created repository %s at %s", config.repo_id, remote.url)


def known_remote_urls(cache_dir: Path) -> list[str]:
    """The URLs of the remotes this host cache has opened before (newer offline copies name
    theirs); unreadable entries are skipped: this only guides the daemon's start-up."""
    urls = []
    for path in sorted((cache_dir / "remotes").glob("*.json")):
        try:
            url = json.loads(path.read_text()).get("url")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(url, str):
            urls.append(url)
    return urls


class _OfflineCopy:
    """`<cache>/remotes/<hash of url>.json`: the wrapped keys and sealed config of a remote."""

    def __init__(self, cache_dir: Path, url: str) -> None:
        self.url = url
        self.path = cache_dir / "remotes" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, kid: str, wrapped: bytes, config: bytes) -> None:
        doc = {"kek_id": kid, "keys": base64.b64encode(wrapped).decode(),
               "config": base64.b64encode(config).decode(), "url": self.url}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)

    def load(self, kek: bytes, keyfile: Path) -> Repository:
        doc = json.loads(self.path.read_text())
        kid = keys.kek_id(kek)
        if doc["kek_id"] != kid:
            raise RepositoryKeyError(
                f"the remote is unreachable and the cached repository keys are for key id {doc['kek_id']},"
                f" not {kid} ({keyfile})", object=str(self.path))
        repo_keys = _unwrap(base64.b64decode(doc["keys"]), kek, keyfile, str(self.path))
        config = _open_config(repo_keys, base64.b64decode(doc["config"]))
        return Repository(repo_keys, config, keyfile, kid, offline=True)
