"""gitmld: Git for machine-learning models."""

from gitmld.proto.version import __version__

__all__ = ["__version__"]
