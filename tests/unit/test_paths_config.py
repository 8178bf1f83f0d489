"""Where things live (XDG + GITMLD_* overrides) and RemoteConfig validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gitmld.proto import paths
from gitmld.proto.remote_config import RemoteConfig, parse_url

XDG = ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
OVERRIDES = ("GITMLD_SOCKET", "GITMLD_CACHE_DIR", "GITMLD_KEYFILE")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in XDG + OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_defaults_without_xdg(clean_env: Path) -> None:
    home = clean_env / "home"
    assert paths.socket_path() == Path(f"/tmp/gitmld-{os.getuid()}/daemon.sock")
    assert paths.cache_dir() == home / ".cache" / "gitmld"
    assert paths.config_dir() == home / ".config" / "gitmld"
    assert paths.data_dir() == home / ".local" / "share" / "gitmld"
    assert paths.default_keyfile() == home / ".config" / "gitmld" / "keyfile"
    assert paths.default_remote_url() == (home / ".local/share/gitmld/remote").as_uri()
    assert paths.default_remote_url().startswith("file:///")


def test_xdg_locations(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in XDG:
        monkeypatch.setenv(name, str(clean_env / name.lower()))
    assert paths.socket_path() == clean_env / "xdg_runtime_dir" / "gitmld" / "daemon.sock"
    assert paths.cache_dir() == clean_env / "xdg_cache_home" / "gitmld"
    assert paths.config_dir() == clean_env / "xdg_config_home" / "gitmld"
    assert paths.data_dir() == clean_env / "xdg_data_home" / "gitmld"
    assert paths.default_remote_url() == (clean_env / "xdg_data_home/gitmld/remote").as_uri()


def test_relative_xdg_values_are_ignored(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert paths.cache_dir() == clean_env / "home" / ".cache" / "gitmld"
    assert paths.socket_path().parent == Path(f"/tmp/gitmld-{os.getuid()}")


def test_gitmld_overrides_win(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(clean_env / "run"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "cache"))
    monkeypatch.setenv("GITMLD_SOCKET", str(clean_env / "s.sock"))
    monkeypatch.setenv("GITMLD_CACHE_DIR", str(clean_env / "c"))
    monkeypatch.setenv("GITMLD_KEYFILE", str(clean_env / "k"))
    assert paths.socket_path() == clean_env / "s.sock"
    assert paths.cache_dir() == clean_env / "c"
    assert paths.default_keyfile() == clean_env / "k"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/some/prefix", ("s3", "bucket", "some/prefix")),
        ("s3://bucket/some/prefix/", ("s3", "bucket", "some/prefix")),
        ("s3://bucket", ("s3", "bucket", "")),
        ("file:///srv/models", ("file", "/srv/models", "")),
        ("file:///srv/my%20models/", ("file", "/srv/my models", "")),
        ("file://localhost/srv", ("file", "/srv", "")),
        ("file:///", ("file", "/", "")),
    ],
)
def test_parse_url(url: str, expected: tuple[str, str, str]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "non-empty"),
        ("http://example.com/x", "not supported"),
        ("s3:///prefix", "bucket"),
        ("s3://user@bucket/p", "bucket"),
        ("s3://bucket/a//b", "empty path segment"),
        ("file://host/path", "no host"),
        ("file:relative/path", "absolute"),
        ("s3://bucket/p?x=1", "query"),
        ("/just/a/path", "not supported"),
    ],
)
def test_parse_url_rejects(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_url(url)


def test_defaults_and_json_round_trip() -> None:
    cfg = RemoteConfig(url="s3://b/p")
    assert cfg.path_style is False
    assert (cfg.compression_level, cfg.pack_size, cfg.concurrency) == (3, 16 << 20, 8)
    assert cfg.scheme == "s3"
    doc = cfg.to_json()
    assert set(doc) == {
        "url", "endpoint", "region", "path_style", "keyfile", "compression_level", "pack_size", "concurrency"
    }
    assert RemoteConfig.from_json(doc) == cfg
    with_endpoint = RemoteConfig(url="s3://b", endpoint="http://127.0.0.1:8333", region="us-east-1")
    assert with_endpoint.path_style is True
    assert RemoteConfig(url="s3://b", endpoint="https://s3.example", path_style=False).path_style is False
    assert RemoteConfig.from_json(with_endpoint.to_json()) == with_endpoint
    assert RemoteConfig.from_json({"url": "file:///x"}) == RemoteConfig(url="file:///x")


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "remote: must be a JSON object"),
        ({}, "url"),
        ({"url": 5}, "url"),
        ({"url": "ftp://x"}, "url: scheme"),
        ({"url": "s3://b", "endpoint": "localhost:9000"}, "endpoint"),
        ({"url": "s3://b", "region": ""}, "region"),
        ({"url": "s3://b", "path_style": "yes"}, "path_style"),
        ({"url": "s3://b", "keyfile": 3}, "keyfile"),
        ({"url": "s3://b", "compression_level": 0}, "compression_level"),
        ({"url": "s3://b", "compression_level": 23}, "compression_level"),
        ({"url": "s3://b", "compression_level": "3"}, "compression_level"),
        ({"url": "s3://b", "pack_size": 1000}, "pack_size"),
        ({"url": "s3://b", "concurrency": True}, "concurrency"),
        ({"url": "s3://b", "concurrency": 0}, "concurrency"),
        ({"url": "s3://b", "colour": "blue"}, "colour: unknown"),
    ],
)
def test_from_json_names_the_bad_key(doc: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RemoteConfig.from_json(doc)


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        RemoteConfig(url="s3://b", concurrency=-1)
    with pytest.raises(AttributeError):
        RemoteConfig(url="s3://b").url = "s3://c"
