"""The gitmld version, in proto/ so the standard-library-only client can read it cheaply."""

__version__ = "0.1.0"
