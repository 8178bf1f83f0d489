"""Tensor-level work on safetensors models for `gitmld diff` and the merge driver.

Run as its own program, `python -m gitmld.model` (it needs numpy; client/ must stay
standard-library only, so `gitmld diff` and `gitmld merge-driver` exec it). Reads go through
the daemon as ranged `get`s, so only the headers and the tensors that differ are read; a
merged file is written with the `compose` op.
"""
