"""Map exceptions from the store, codec, keys and remotes to wire error codes and messages.

Matching is by class name along the MRO, so the layers below need not import anything from
the daemon to say what kind of failure they raise, and a subclass inherits its parent's code.
A class may also declare its code directly with a `wire_code` attribute.
"""

from __future__ import annotations

WIRE_CODES: dict[str, str] = {
    "NotFound": "not_found",
    "RemoteNotFound": "not_found",
    "CorruptObject": "corrupt",
    "CorruptChunk": "corrupt",
    "CorruptBlob": "corrupt",
    "UnsupportedVersion": "corrupt",
    "KeyFileError": "key",
    "WrongKey": "key",
    "RemoteError": "remote",
    "RemoteUnavailable": "remote",
    "StoreError": "internal",
    "OSError": "io",  # local disk: full, read-only, permissions; str() names the path and errno
}


def classify(exc: BaseException) -> tuple[str, str]:
    """The wire error code for exc and a message that never leaks internals beyond str(exc)."""
    code = getattr(exc, "wire_code", None)
    if not isinstance(code, str):
        code = next((WIRE_CODES[c.__name__] for c in type(exc).__mro__ if c.__name__ in WIRE_CODES), "internal")
    message = str(exc) or type(exc).__name__
    if code == "internal":
        message = f"internal error in the gitmld daemon ({type(exc).__name__}: {message}); see the daemon log"
    return code, message
