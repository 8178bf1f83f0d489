"""Errors of the content store, one per thing a user or the daemon's service must tell apart.

Each carries `wire_code` (the wire ERROR code of docs/ARCHITECTURE.md, which daemon/errors.py
reads) and `object` (the oid or remote object it is about), and a message that names the file
or object, what went wrong and what to do. Messages never contain keys.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class: something in the store failed."""

    wire_code = "internal"

    def __init__(self, message: str, *, object: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.object = object

    @property
    def code(self) -> str:
        return self.wire_code

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.object))


def _rebuild(cls: type[StoreError], message: str, obj: str | None) -> StoreError:
    return cls(message, object=obj)


class NotFound(StoreError):
    """The file (oid) is neither in the host cache nor in the remote."""

    wire_code = "not_found"


class InvalidRequest(StoreError):
    """The caller passed something malformed (e.g. an oid that is not sha256:<hex>)."""

    wire_code = "bad_request"


class CorruptObject(StoreError):
    """Bytes read from the remote (or a whole file) failed verification."""

    wire_code = "corrupt"


class UnsupportedFormat(StoreError):
    """An object or the repository was written by a newer gitmld (unknown format version)."""

    wire_code = "corrupt"


class RepositoryKeyError(StoreError):
    """The keyfile is missing, unreadable or does not open this repository."""

    wire_code = "key"


class NotDurable(StoreError):
    """flush could not make the requested files durable (missing data or objects)."""

    wire_code = "remote"

    def __init__(self, message: str, *, object: str | None = None, missing: list[str] | None = None) -> None:
        super().__init__(message, object=object)
        self.missing = list(missing or [])


class CacheBusy(StoreError):
    """Another process holds this host cache (one daemon per host owns it)."""

    wire_code = "internal"
