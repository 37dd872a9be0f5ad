"""The ``streamrec`` command line, one module per command group (main.py assembles them)."""

from streamrec.cli.main import cli, main

__all__ = ["cli", "main"]
