"""The `Remote` interface every storage backend implements, its counters, errors and factory.

The store talks to S3 and to a plain directory through this one interface, so that the
backends are interchangeable in tests and a cluster tier can later slot in behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gitmld.daemon.remote.retry import RetryPolicy


@dataclass(slots=True)
class RemoteStats:
    """Request counters of one remote; the daemon's status and metrics read them."""

    gets: int = 0
    get_bytes: int = 0
    puts: int = 0
    put_bytes: int = 0
    lists: int = 0
    retries: int = 0

    def snapshot(self) -> dict[str, int]:
        """A copy that later requests do not change (for status documents and test deltas)."""
        return asdict(self)


class RemoteError(Exception):
    """A remote operation failed; the message names the remote, the object and what to do."""

    hint = "check the remote URL (gitmld.url), the endpoint (gitmld.endpoint) and your permissions"

    def __init__(
        self, remote_url: str, object_name: str | None, cause: BaseException | str, *, hint: str | None = None
    ) -> None:
        self.remote_url = remote_url
        self.object_name = object_name
        self.cause = cause
        if hint is not None:
            self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"object {self.object_name!r} in remote {self.remote_url}" if self.object_name else (
            f"remote {self.remote_url}"
        )
        return f"{what}: {self.cause_text}; {self.hint}"

    @property
    def cause_text(self) -> str:
        return self.cause if isinstance(self.cause, str) else _describe(self.cause)

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the exception picklable (thread pools, multiprocessing) despite the keyword init.
        return (_rebuild, (type(self), self.remote_url, self.object_name, self.cause_text, self.hint))


class RemoteNotFound(RemoteError):
    """The object does not exist in the remote."""

    hint = "it was never uploaded or was deleted: check gitmld.url and that `git push` finished on the source"


class RemoteUnavailable(RemoteError):
    """The remote did not answer usefully after every retry (refused, timeouts, throttling, 5xx)."""

    hint = "check the network and gitmld.endpoint, then try again; the daemon keeps what it has locally"


def _rebuild(cls: type[RemoteError], url: str, name: str | None, cause: str, hint: str) -> RemoteError:
    return cls(url, name, cause, hint=hint)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


Progress = Callable[[int], None]  # bytes more done


@runtime_checkable
class Remote(Protocol):
    """Object storage with S3 semantics: whole-object puts, ranged gets, prefix listing."""

    url: str  # for messages, never with credentials
    stats: RemoteStats

    # Make the place for a new repository: a directory remote creates its root (it never does
    # on an ordinary write, so a share that is not mounted fails instead of filling the empty
    # mountpoint); an S3 bucket must already exist.
    async def prepare_new_repository(self) -> None: ...
    async def put_bytes(self, name: str, data: bytes) -> None: ...
    # large: multipart on S3; progress(n) as parts complete (possibly from a worker thread)
    async def put_file(self, name: str, path: Path, *, progress: Progress | None = None) -> None: ...
    async def get_bytes(self, name: str) -> bytes: ...  # raises RemoteNotFound
    async def get_range(self, name: str, offset: int, length: int) -> bytes: ...
    async def exists(self, name: str) -> bool: ...
    async def list(self, prefix: str) -> list[str]: ...  # names relative to the remote root
    async def delete(self, name: str) -> None: ...
    # One quick request, no retries (`gitmld status` asks "is it reachable now?"): whether name
    # exists; RemoteError when the remote does not answer usefully.
    async def probe(self, name: str) -> bool: ...
    async def close(self) -> None: ...


class RemoteSettings(Protocol):
    """What `open_remote` reads from a `gitmld.proto.remote_config.RemoteConfig`."""

    @property
    def url(self) -> str: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def path_style(self) -> bool | None: ...  # None: path style exactly when an endpoint is set
    @property
    def concurrency(self) -> int: ...


def open_remote(config: RemoteSettings, *, retry: RetryPolicy | None = None) -> Remote:
    """The backend for config.url (`s3://bucket/prefix` or `file:///abs/path`); connects lazily."""
    scheme = urlsplit(config.url).scheme.lower()
    if scheme == "file":
        from gitmld.daemon.remote.directory import DirectoryRemote

        return DirectoryRemote(config.url)
    if scheme == "s3":
        from gitmld.daemon.remote.s3 import S3Remote

        endpoint = config.endpoint or None
        return S3Remote(
            config.url,
            endpoint=endpoint,
            region=config.region or None,
            path_style=endpoint is not None if config.path_style is None else bool(config.path_style),
            concurrency=config.concurrency,
            retry=retry,
        )
    raise RemoteError(
        config.url, None, f"unsupported URL scheme {scheme or '(none)'!r}",
        hint="set gitmld.url to s3://bucket/prefix or file:///absolute/path",
    )
