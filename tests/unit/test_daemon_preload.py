"""A restarted daemon preloads the S3 client only on a host cache that has used S3 before."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from gitmld.daemon import server
from gitmld.daemon.store.repository import known_remote_urls

from tests.unit.test_store_support import config, keyfile_env, open_store  # noqa: F401  (autouse fixture)


async def test_the_offline_copy_names_its_remote(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = await open_store(cfg, tmp_path / "cache")
    await store.close()
    assert known_remote_urls(tmp_path / "cache") == [cfg.url]


def test_unreadable_or_older_copies_are_skipped(tmp_path: Path) -> None:
    copies = tmp_path / "remotes"
    copies.mkdir()
    (copies / "a.json").write_text("{not json")
    (copies / "b.json").write_text(json.dumps({"kek_id": "x", "keys": "", "config": ""}))  # before urls were kept
    (copies / "c.json").write_text(json.dumps(["a", "list"]))
    (copies / "d.json").write_text(json.dumps({"url": "s3://bucket/p"}))
    assert known_remote_urls(tmp_path) == ["s3://bucket/p"]
    assert known_remote_urls(tmp_path / "nowhere") == []


def test_preload_only_where_s3_was_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []

    class FakeS3:
        @staticmethod
        def warm_up() -> None:
            imported.append("warm")

    monkeypatch.setattr(server.importlib, "import_module", lambda name: imported.append(name) or FakeS3)
    (tmp_path / "remotes").mkdir()
    (tmp_path / "remotes" / "dir.json").write_text(json.dumps({"url": "file:///srv/models"}))
    assert server.preload_remote_modules(tmp_path) is False
    assert imported == []
    (tmp_path / "remotes" / "s3.json").write_text(json.dumps({"url": "s3://bucket/models"}))
    assert server.preload_remote_modules(tmp_path) is True
    assert imported == ["gitmld.daemon.remote.s3", "warm"]


def test_warm_up_parses_the_s3_model_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    from gitmld.daemon.remote import s3

    s3.warm_up()
    first, second = s3.new_session(), s3.new_session()
    loader = first.get_component("data_loader")
    assert second.get_component("data_loader") is loader  # parsed once, shared
    assert loader.load_service_model("s3", "service-2")["metadata"]["serviceId"] == "S3"
    assert first is not second  # credentials stay per session
    assert "aiobotocore" in sys.modules
