"""What every safetensors header reader here agrees on (the chunker's layout, the describer,
`gitmld diff` and the merge driver each parse headers for their own needs and errors)."""

from __future__ import annotations

from typing import Any

MAX_HEADER_LEN = 100_000_000  # the safetensors library's own limit on the JSON header


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a key given twice is an error (ValueError), never a silent overwrite."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the header repeats the key {key[:64]!r}")  # a hostile key may be megabytes long
        out[key] = value
    return out
