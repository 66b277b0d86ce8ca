"""The ``tidings`` command line."""

from tidings.cli.main import app, main

__all__ = ["app", "main"]
