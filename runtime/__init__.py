"""The server: HTTP app, CLI, store and call sessions."""

__version__ = "0.1.0"
