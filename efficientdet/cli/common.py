"""What every subcommand does the same way."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """INFO lines from the library (``LEVEL module: message``), as training and evaluation report progress."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
