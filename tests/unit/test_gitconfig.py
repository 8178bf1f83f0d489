"""client.gitconfig: `.gitmldconfig` < git config precedence, value parsing, clear errors.

Real git in temporary repositories; HOME and the XDG directories point into tmp_path so the
user's own configuration never leaks in. The `gitenv` fixture and `git` helper are shared
with the other client tests (they import `gitenv_fixture`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from gitmld.client import gitconfig
from gitmld.client.gitconfig import ConfigError, load_remote_config, parse_size
from gitmld.proto import paths


def git(*args: str, cwd: Path | str | None = None, input: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, check=True)
    return proc.stdout.decode()


@pytest.fixture(name="gitenv")
def gitenv_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh repository as the current directory, with a private HOME, XDG dirs and socket."""
    for name in list(os.environ):
        if name.startswith(("GIT_", "GITMLD_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    env = {
        "HOME": home,
        "XDG_CONFIG_HOME": tmp_path / "xdg-config",
        "XDG_CACHE_HOME": tmp_path / "xdg-cache",
        "XDG_DATA_HOME": tmp_path / "xdg-data",
        "XDG_RUNTIME_DIR": tmp_path / "xdg-run",
    }
    for name, value in env.items():
        value.mkdir()
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GITMLD_NO_AUTOSTART", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    repo = tmp_path / "repo"
    git("init", "-q", "-b", "main", str(repo))
    monkeypatch.chdir(repo)
    return repo


def write_committed(repo: Path, text: str) -> Path:
    path = repo / ".gitmldconfig"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_remote_and_the_daemons_keyfile(gitenv: Path) -> None:
    config = load_remote_config()
    assert config.url == paths.default_remote_url()
    assert config.url.startswith("file://" + os.environ["XDG_DATA_HOME"])
    assert config.keyfile is None  # the daemon's default applies
    assert config.endpoint is None


def test_committed_file_sets_every_option(gitenv: Path) -> None:
    write_committed(
        gitenv,
        "[gitmld]\n"
        "\turl = s3://models/team/\n"
        "\tendpoint = http://127.0.0.1:8333\n"
        "\tregion = eu-west-1\n"
        "\tpathStyle\n"  # a bare key is true, as in git
        "\tkeyfile = keys/kek\n"
        "\tcompressionLevel = 9\n"
        "\tpackSize = 32MiB\n"
        "\tconcurrency = 4\n",
    )
    config = load_remote_config()
    assert config.url == "s3://models/team"  # one spelling per remote
    assert config.endpoint == "http://127.0.0.1:8333"
    assert config.region == "eu-west-1"
    assert config.path_style is True
    assert config.keyfile == str(gitenv / "keys" / "kek")  # relative to the repository top
    assert (config.compression_level, config.pack_size, config.concurrency) == (9, 32 << 20, 4)


def test_local_config_wins_over_committed_file(gitenv: Path) -> None:
    write_committed(gitenv, "[gitmld]\n\turl = s3://committed/x\n\tconcurrency = 4\n")
    git("config", "gitmld.url", "file:///srv/override")
    config = load_remote_config()
    assert config.url == "file:///srv/override"
    assert config.concurrency == 4  # keys the local config does not set still come from the file


def test_global_config_wins_over_committed_file(gitenv: Path) -> None:
    write_committed(gitenv, "[gitmld]\n\tregion = committed\n")
    git("config", "--global", "gitmld.region", "from-global")
    assert load_remote_config().region == "from-global"


def test_found_from_a_subdirectory(gitenv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_committed(gitenv, "[gitmld]\n\turl = s3://bucket/sub\n")
    (gitenv / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(gitenv / "a" / "b")
    assert load_remote_config().url == "s3://bucket/sub"


def test_committed_file_is_read_from_head_when_not_checked_out(gitenv: Path) -> None:
    write_committed(gitenv, "[gitmld]\n\turl = s3://from-head/p\n")
    git("add", ".gitmldconfig")
    git("commit", "-q", "-m", "config")
    (gitenv / ".gitmldconfig").unlink()
    assert load_remote_config().url == "s3://from-head/p"


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("packSize", "lots", "not a size"),
        ("packSize", "1k", "outside"),
        ("compressionLevel", "99", "outside"),
        ("concurrency", "many", "whole number"),
        ("pathStyle", "maybe", "boolean"),
        ("url", "http://example.com/x", "not supported"),
        ("endpoint", "127.0.0.1:8333", "http"),
    ],
)
def test_bad_committed_value_names_key_and_file(gitenv: Path, key: str, value: str, words: str) -> None:
    path = write_committed(gitenv, f"[gitmld]\n\t{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_remote_config()
    message = str(info.value)
    assert f"gitmld.{key}" in message
    assert str(path) in message
    assert words in message


def test_bad_local_value_names_the_local_config(gitenv: Path) -> None:
    git("config", "gitmld.concurrency", "0")
    with pytest.raises(ConfigError, match=r"gitmld\.concurrency in \.git/config: bad value '0'"):
        load_remote_config()


def test_a_good_local_value_masks_a_bad_committed_one(gitenv: Path) -> None:
    write_committed(gitenv, "[gitmld]\n\tpackSize = nonsense\n")
    git("config", "gitmld.packSize", "8m")
    assert load_remote_config().pack_size == 8 << 20


def test_unparseable_committed_file_is_named(gitenv: Path) -> None:
    write_committed(gitenv, "[gitmld\n")
    with pytest.raises(ConfigError, match=r"\.gitmldconfig: cannot be parsed"):
        load_remote_config()


def test_unknown_keys_are_ignored(gitenv: Path) -> None:
    write_committed(gitenv, "[gitmld]\n\tfutureOption = 1\n\turl = s3://b/p\n")
    assert load_remote_config().url == "s3://b/p"


def test_outside_a_repository_uses_git_config_only(tmp_path: Path, gitenv: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    git("config", "--global", "gitmld.url", "s3://global/only")
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert gitconfig.repo_top() is None
    assert load_remote_config().url == "s3://global/only"


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("16m", 16 << 20), ("16M", 16 << 20), ("16MiB", 16 << 20), ("16mb", 16 << 20),
     ("1g", 1 << 30), ("512k", 512 << 10), ("10b", 10)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "m", "1.5m", "16 furlongs", "16i", "-1m"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_parse_entries_keeps_origins_and_bare_keys() -> None:
    raw = b"file:.git/config\0gitmld.url\ns3://a/b\0command line:\0gitmld.pathstyle\0"
    entries = gitconfig.parse_entries(raw)
    assert entries == [
        gitconfig.Entry("gitmld.url", "s3://a/b", ".git/config"),
        gitconfig.Entry("gitmld.pathStyle", None, "command line:"),
    ]


def test_fetch_timeout_defaults_and_comes_from_git_config_only(gitenv: Path) -> None:
    assert gitconfig.load_fetch_timeout() == gitconfig.DEFAULT_FETCH_TIMEOUT == 600.0
    write_committed(gitenv, "[gitmld]\n\tfetchTimeout = 5\n")  # the repository does not decide it
    assert gitconfig.load_fetch_timeout() == 600.0
    git("config", "gitmld.fetchTimeout", "2.5")
    assert gitconfig.load_fetch_timeout() == 2.5
    git("config", "gitmld.fetchTimeout", "0")
    assert gitconfig.load_fetch_timeout() == 0.0  # no deadline
    assert load_remote_config().url.startswith("file://")  # an unknown key to the remote config


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_bad_fetch_timeout_names_the_key(gitenv: Path, value: str) -> None:
    git("config", "gitmld.fetchTimeout", value)
    with pytest.raises(ConfigError, match=r"gitmld\.fetchTimeout") as info:
        gitconfig.load_fetch_timeout()
    assert repr(value) in str(info.value)
