"""Repository keys, the keyfile and wrapping: round trips, clear errors, and no key in any message."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import blake3
import pytest
from gitmld.daemon.store import keys
from gitmld.daemon.store.keys import (
    CorruptKeys,
    KeyFileError,
    KeysError,
    RepoKeys,
    UnsupportedKeysVersion,
    WrongKey,
)


def secrets_of(k: RepoKeys) -> list[str]:
    return [x.hex() for x in (k.data_key, k.id_key, k.name_key)]


def test_generate_and_serialise() -> None:
    a, b = RepoKeys.generate(), RepoKeys.generate()
    assert a != b and len({a.data_key, a.id_key, a.name_key}) == 3
    assert RepoKeys.from_bytes(a.to_bytes()) == a
    with pytest.raises(CorruptKeys):
        RepoKeys.from_bytes(a.to_bytes()[:-1])
    with pytest.raises(UnsupportedKeysVersion):
        RepoKeys.from_bytes(b"\x02" + a.to_bytes()[1:])
    with pytest.raises(ValueError):
        RepoKeys(b"short", a.id_key, a.name_key)


def test_repr_hides_keys() -> None:
    k = RepoKeys.generate()
    for text in (repr(k), str(k), f"{k}", repr([k])):
        assert all(s not in text and s[:8] not in text for s in secrets_of(k))


def test_object_name_is_a_keyed_hash() -> None:
    k = RepoKeys.generate()
    name = k.object_name(b"sha256-of-a-file")
    assert name == k.object_name(b"sha256-of-a-file") and len(name) == 64
    assert name != blake3.blake3(b"sha256-of-a-file").hexdigest()
    assert name != RepoKeys.generate().object_name(b"sha256-of-a-file")
    assert name != k.object_name(b"sha256-of-another")


def test_wrap_roundtrip_and_kek_id() -> None:
    k, kek = RepoKeys.generate(), os.urandom(32)
    blob = keys.wrap_keys(k, kek)
    assert keys.unwrap_keys(blob, kek) == k
    assert keys.wrap_keys(k, kek) != blob  # random nonce
    kid = keys.kek_id(kek)
    assert len(kid) == 16 and kid == keys.kek_id(kek) and kid not in kek.hex()
    assert kid != keys.kek_id(os.urandom(32))
    assert all(s not in blob.hex() for s in secrets_of(k))


def test_wrong_kek_names_both_key_ids() -> None:
    k, kek, other = RepoKeys.generate(), os.urandom(32), os.urandom(32)
    with pytest.raises(WrongKey) as e:
        keys.unwrap_keys(keys.wrap_keys(k, kek), other)
    msg = str(e.value)
    assert keys.kek_id(other) in msg and keys.kek_id(kek) in msg and "another keyfile" in msg
    assert other.hex() not in msg and kek.hex() not in msg
    assert e.value.tried_id == keys.kek_id(other)


def test_every_bit_flip_fails_cleanly() -> None:
    k, kek = RepoKeys.generate(), os.urandom(32)
    blob = keys.wrap_keys(k, kek)
    for i in range(len(blob)):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            expected: type[KeysError] = (
                CorruptKeys if i < 4 else UnsupportedKeysVersion if i == 4 else WrongKey if i < 13 else CorruptKeys
            )
            with pytest.raises(expected):
                keys.unwrap_keys(bytes(bad), kek)
    for n in range(len(blob)):
        with pytest.raises(KeysError):
            keys.unwrap_keys(blob[:n], kek)


# -- the keyfile --------------------------------------------------------------------------------


def test_create_and_load_keyfile(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "gitmld" / "keyfile"
    kek = keys.create_keyfile(path)
    assert len(kek) == 32 and keys.load_kek(path) == kek
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert keys.kek_id(kek) in path.read_text()  # the public id, to tell keyfiles apart
    assert [p.name for p in path.parent.iterdir()] == ["keyfile"]  # no temp file left


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keyfile"
    kek = keys.create_keyfile(path)
    with pytest.raises(KeyFileError, match="refusing to overwrite") as e:
        keys.create_keyfile(path)
    assert str(path) in str(e.value) and keys.load_kek(path) == kek


def test_missing_keyfile_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "keyfile"
    with pytest.raises(KeyFileError) as e:
        keys.load_kek(path)
    assert str(path) in str(e.value) and "gitmld keygen" in str(e.value) and e.value.path == path


def test_open_keyfile_is_refused_with_the_chmod(tmp_path: Path) -> None:
    path = tmp_path / "keyfile"
    kek = keys.create_keyfile(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as e:
        keys.load_kek(path)
    msg = str(e.value)
    assert "0644" in msg and f"chmod 600 {path}" in msg and kek.hex() not in msg
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="0640"):
        keys.load_kek(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"gitmld-kek-v1:abcd\n",
        b"gitmld-kek-v1:" + b"zz" * 32 + b"\n",
        b"\xff\xfe",
        b"gitmld-kek-v1:" + b"00" * 32 + b"\ngitmld-kek-v1:" + b"11" * 32 + b"\n",
        b"#" * 5000,
    ],
)
def test_malformed_keyfile(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keyfile"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a gitmld keyfile") as e:
        keys.load_kek(path)
    assert str(path) in str(e.value)


def test_keyfile_tolerates_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "keyfile"
    path.write_text("# mine\n\n  gitmld-kek-v1:" + "ab" * 32 + "  \n\n")
    path.chmod(0o600)
    assert keys.load_kek(path) == bytes.fromhex("ab" * 32)


def test_keyfile_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        keys.load_kek(tmp_path)


def test_default_keyfile_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GITMLD_KEYFILE", str(tmp_path / "k"))
    assert keys.default_keyfile_path() == tmp_path / "k"
    monkeypatch.delenv("GITMLD_KEYFILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.default_keyfile_path() == tmp_path / "xdg" / "gitmld" / "keyfile"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.default_keyfile_path() == tmp_path / "home" / ".config" / "gitmld" / "keyfile"
