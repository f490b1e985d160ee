"""torch's intra-op thread count for one block of code, the caller's count restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block on ``count`` torch intra-op threads (``None`` or 0: as it is), then restore the caller's count.

    Under OpenMP (torch's CPU builds on Linux, Windows and macOS) the count belongs to the calling thread, so other
    threads of the process keep theirs.
    """
    previous = torch.get_num_threads()
    if not count or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = ["torch_threads"]
