"""Tensor-level work on safetensors models for `gitmld diff` and the merge driver.

Imported lazily by those CLI commands only (it needs numpy; the filter must stay
standard-library only). Reads go through the daemon as ranged `get`s, so only the headers
and the tensors that differ are read; a merged file is written with the `compose` op.
"""
