"""Repository keys and the keyfile that protects them (the restic model).

Each repository has random master keys (:class:`RepoKeys`), stored in the bucket wrapped by a
key-encryption key (KEK) that lives only in a local keyfile (``gitmld keygen`` makes one). A
leaked bucket without the keyfile reveals nothing; a lost keyfile loses the repository, which
is why the keyfile says so and why :func:`create_keyfile` never overwrites one.

Keyfile (text, mode 0600)::

    # comment lines
    gitmld-kek-v1:<64 hex digits: the 32-byte KEK>

Wrapped keys (the object ``keys/<kek_id>`` in the bucket; integers little-endian)::

    offset  size  field
    0       4     magic b"GMLK"
    4       1     version = 1
    5       8     KEK id (proto/keyfile.py: first 8 bytes of SHA-256("gitmld kek id v1\\0" + KEK))
    13      12    nonce (random)
    25      113   AES-256-GCM(wrap key, nonce, RepoKeys v1, AAD = b"gitmld/repo-keys\\0" + bytes 0..13)
                  = 97 bytes of ciphertext + 16-byte tag; wrap key = BLAKE3
                  derive_key("gitmld kek wrap v1", KEK)

RepoKeys v1 (97 bytes): version = 1, data_key[32], id_key[32], name_key[32].

Keys never appear in messages or reprs; the KEK id is public (it names the object).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gitmld.proto.keyfile import (
    KEY_LEN,
    KEYFILE_ENV,
    KeyFileError,
    create_keyfile,
    default_keyfile_path,
    kek_id,
    load_kek,
)

__all__ = [
    "KEYFILE_ENV",
    "KEY_LEN",
    "CorruptKeys",
    "KeyFileError",
    "KeysError",
    "RepoKeys",
    "UnsupportedKeysVersion",
    "WrongKey",
    "create_keyfile",
    "default_keyfile_path",
    "kek_id",
    "load_kek",
    "unwrap_keys",
    "wrap_keys",
]

_REPO_KEYS_VERSION = 1
_WRAP_MAGIC = b"GMLK"
_WRAP_VERSION = 1
_WRAP_HEADER = 13  # magic + version + KEK id
_WRAP_AAD_LABEL = b"gitmld/repo-keys\0"
_WRAP_CONTEXT = "gitmld kek wrap v1"


class KeysError(Exception):
    """Base of the key errors; messages say what to do and never contain key bytes."""


class WrongKey(KeysError):
    """The repository's keys were wrapped with another KEK than the one tried."""

    def __init__(self, tried_id: str, wrapped_id: str) -> None:
        super().__init__(
            f"the repository's keys are wrapped with key {wrapped_id}, but the keyfile holds key "
            f"{tried_id}: the repository's keys were made with another keyfile. Use that keyfile "
            f"(put it at the default path or set {KEYFILE_ENV} to its path)."
        )
        self.tried_id = tried_id
        self.wrapped_id = wrapped_id


class CorruptKeys(KeysError):
    """The wrapped-keys object is damaged or is not one."""


class UnsupportedKeysVersion(KeysError):
    """The wrapped-keys object was written by a newer gitmld."""


@dataclass(frozen=True, repr=False)
class RepoKeys:
    """The repository master keys: random, wrapped in the bucket by a KEK."""

    data_key: bytes  # AES-256-GCM for chunks and metadata blobs
    id_key: bytes  # keyed BLAKE3 for chunk ids
    name_key: bytes  # keyed BLAKE3 for object names of manifests

    def __post_init__(self) -> None:
        for field in ("data_key", "id_key", "name_key"):
            value = getattr(self, field)
            if not isinstance(value, bytes) or len(value) != KEY_LEN:
                raise ValueError(f"RepoKeys.{field} must be {KEY_LEN} bytes")

    def __repr__(self) -> str:
        return "RepoKeys(<secret>)"

    @classmethod
    def generate(cls) -> RepoKeys:
        return cls(secrets.token_bytes(KEY_LEN), secrets.token_bytes(KEY_LEN), secrets.token_bytes(KEY_LEN))

    def object_name(self, ident: bytes) -> str:
        """Hex keyed hash of ``ident``: bucket names reveal no plaintext hash."""
        return blake3.blake3(ident, key=self.name_key).hexdigest()

    def to_bytes(self) -> bytes:
        return bytes([_REPO_KEYS_VERSION]) + self.data_key + self.id_key + self.name_key

    @classmethod
    def from_bytes(cls, data: bytes) -> RepoKeys:
        if len(data) != 1 + 3 * KEY_LEN:
            raise CorruptKeys(f"repository keys have {len(data)} bytes, expected {1 + 3 * KEY_LEN}")
        if data[0] != _REPO_KEYS_VERSION:
            raise UnsupportedKeysVersion(
                f"repository keys have version {data[0]}; this gitmld reads version "
                f"{_REPO_KEYS_VERSION}: upgrade gitmld"
            )
        k = KEY_LEN
        return cls(data[1 : 1 + k], data[1 + k : 1 + 2 * k], data[1 + 2 * k :])


# -- wrapping --------------------------------------------------------------------------------


def _wrap_key(kek: bytes) -> bytes:
    if len(kek) != KEY_LEN:
        raise ValueError(f"a KEK is {KEY_LEN} bytes")
    return blake3.blake3(kek, derive_key_context=_WRAP_CONTEXT).digest()


def wrap_keys(keys: RepoKeys, kek: bytes) -> bytes:
    """Encrypt the repository keys under the KEK, for storage in the bucket."""
    header = _WRAP_MAGIC + bytes([_WRAP_VERSION]) + bytes.fromhex(kek_id(kek))
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_wrap_key(kek)).encrypt(nonce, keys.to_bytes(), _WRAP_AAD_LABEL + header)
    return header + nonce + sealed


def unwrap_keys(blob: bytes, kek: bytes) -> RepoKeys:
    """Decrypt wrapped keys; :class:`WrongKey` when they were wrapped with another KEK."""
    if len(blob) < _WRAP_HEADER + 12 + 16 or blob[:4] != _WRAP_MAGIC:
        raise CorruptKeys(f"the repository's wrapped keys ({len(blob)} bytes) are not a gitmld key object")
    if blob[4] != _WRAP_VERSION:
        raise UnsupportedKeysVersion(
            f"the repository's wrapped keys have version {blob[4]}; this gitmld reads version "
            f"{_WRAP_VERSION}: upgrade gitmld"
        )
    header, nonce, sealed = blob[:_WRAP_HEADER], blob[_WRAP_HEADER : _WRAP_HEADER + 12], blob[_WRAP_HEADER + 12 :]
    wrapped_id, tried_id = header[5:].hex(), kek_id(kek)
    if wrapped_id != tried_id:
        raise WrongKey(tried_id, wrapped_id)
    try:
        plain = AESGCM(_wrap_key(kek)).decrypt(nonce, sealed, _WRAP_AAD_LABEL + header)
    except InvalidTag:
        raise CorruptKeys(
            f"the repository's keys wrapped with key {wrapped_id} fail authentication: the key object "
            f"is damaged; restore it from a backup of the bucket"
        ) from None
    return RepoKeys.from_bytes(plain)
