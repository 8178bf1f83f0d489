"""The error type of commands: a failure the user can act on."""

from __future__ import annotations


class CommandError(Exception):
    """A command failed for a reason the user can act on; the message says how."""
