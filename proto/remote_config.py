"""`RemoteConfig`: the remote and its options, resolved from git config, as sent to the daemon.

It travels in every wire request (`"remote": cfg.to_json()`), so `from_json` validates
everything a client could get wrong and names the offending key.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

DEFAULT_COMPRESSION_LEVEL = 3
DEFAULT_PACK_SIZE = 16 << 20
DEFAULT_CONCURRENCY = 8
_KEYS = (
    "url",
    "endpoint",
    "region",
    "path_style",
    "keyfile",
    "compression_level",
    "pack_size",
    "concurrency",
)


def parse_url(url: str) -> tuple[str, str, str]:
    """Split a remote URL: s3://bucket/prefix -> ("s3", bucket, prefix);
    file:///abs/path -> ("file", "/abs/path", "")."""
    if not isinstance(url, str) or not url:
        raise ValueError("url: must be a non-empty string like s3://bucket/prefix or file:///path")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"url: {url!r} must not have a query or fragment")
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not bucket or "@" in bucket or ":" in bucket:
            raise ValueError(f"url: {url!r} needs a bucket name: s3://bucket/prefix")
        prefix = parts.path.strip("/")
        if "//" in prefix:
            raise ValueError(f"url: {url!r} has an empty path segment in its prefix")
        return "s3", bucket, prefix
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"url: {url!r} must be file:///absolute/path (no host)")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"url: {url!r} must be an absolute path: file:///absolute/path")
        return "file", path.rstrip("/") or "/", ""
    raise ValueError(f"url: scheme of {url!r} is not supported (use s3://bucket/prefix or file:///path)")


def _int(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key}: {value} is outside {low}..{high}")
    return value


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    url: str
    endpoint: str | None = None  # S3-compatible endpoint, e.g. http://127.0.0.1:8333
    region: str | None = None
    path_style: bool | None = None  # None: True when an endpoint is set, else False
    keyfile: str | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    pack_size: int = DEFAULT_PACK_SIZE
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        # Validate by round-tripping the same checks from_json applies.
        RemoteConfig._validate(self._raw())
        if self.path_style is None:
            object.__setattr__(self, "path_style", self.endpoint is not None)

    def _raw(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _KEYS}

    @property
    def scheme(self) -> str:
        return parse_url(self.url)[0]

    def to_json(self) -> dict[str, Any]:
        """A JSON object with every key present (None for unset options)."""
        return self._raw()

    @classmethod
    def from_json(cls, data: Any) -> RemoteConfig:
        if not isinstance(data, dict):
            raise ValueError(f"remote: must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown remote option")
        cls._validate(data)
        return cls(**{k: data[k] for k in _KEYS if k in data})

    @staticmethod
    def _validate(data: dict[str, Any]) -> None:
        parse_url(data.get("url"))  # type: ignore[arg-type]
        endpoint = _opt_str(data, "endpoint")
        if endpoint is not None:
            ep = urllib.parse.urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise ValueError(f"endpoint: {endpoint!r} must be an http(s):// URL")
        _opt_str(data, "region")
        _opt_str(data, "keyfile")
        path_style = data.get("path_style")
        if path_style is not None and not isinstance(path_style, bool):
            raise ValueError(f"path_style: must be true or false, got {path_style!r}")
        _int(data, "compression_level", DEFAULT_COMPRESSION_LEVEL, 1, 22)
        _int(data, "pack_size", DEFAULT_PACK_SIZE, 1 << 20, 1 << 30)
        _int(data, "concurrency", DEFAULT_CONCURRENCY, 1, 256)
