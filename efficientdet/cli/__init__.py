"""The ``efficientdet`` command: one parser, one module per subcommand's options."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
