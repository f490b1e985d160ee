"""What every subcommand does the same way."""

from __future__ import annotations

import logging

from ..utils.allocator import retain_freed_memory


def setup_logging() -> None:
    """INFO lines from the library (``LEVEL module: message``), as training and evaluation report progress."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def retain_memory_for_batches(batch_size: int | None) -> None:
    """Keep freed memory in the process (utils/allocator.py) when a command runs batches of several images.

    Measured on a 2-core CPU (docs/speed.md, "Page faults"): batched Lite0 passes 1.4-1.5x faster, evaluation of
    raccoon `test` ~8% faster; one image at a time gained nothing (Lite0) or ran ~4% slower (D0), so a batch of one
    (``predict``'s default on a CPU) keeps glibc's own malloc.
    """
    if batch_size is not None and batch_size > 1:
        retain_freed_memory()
