"""The ``efficientdet`` command: one module per subcommand; ``train`` and ``eval`` options come from the configs."""

from .main import build_parser, main
from .train import anchor_overrides, train_config

__all__ = ["anchor_overrides", "build_parser", "main", "train_config"]
