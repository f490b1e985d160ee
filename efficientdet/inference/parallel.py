"""Several frames through the network at once on a CPU: a few threads, each with its share of torch's threads.

On a CPU a small detector's single image does not always keep several cores busy: its many small layers
(depthwise convolutions, the BiFPN's resampling and fusion nodes, 5 feature levels) can leave the intra-op threads
waiting on each other. Measured on a 2-core AVX-512 EPYC (BN-folded, channels-last, as ``predict`` runs it),
frames per second one at a time on both threads against two at a time on one thread each: Lite0 at 320 px 29-31
against 42, D0 at 512 px 13 against 16-17, Lite0 at 448 px between 17 against 27 and 23 against 25 (the gain
varied between runs of the same script, never below 1.05x). For a video, where frames come faster than one at a
time finishes, running them side by side is the better use of the cores; for one image (``bench``, a single photo)
the latency of one image on every thread is what counts.

torch's intra-op thread count is per thread under OpenMP (torch's CPU builds on Linux, Windows and macOS), so each
worker sets its own share without touching the caller's; a build where it is process-wide (all workers end up with
the same count) is noticed and the caller's count restored when the pool closes.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def split_threads(parallel: int, threads: int | None = None) -> int:
    """torch threads for each of ``parallel`` workers sharing ``threads`` (default: torch's current count)."""
    threads = torch.get_num_threads() if threads is None else threads
    return max(1, threads // max(1, parallel))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], parallel: int) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed by ``parallel`` threads (``<= 1``: in the caller's thread).

    At most ``parallel + 1`` items are in flight, so memory stays bounded however long ``items`` runs (a video, a
    camera). Each worker runs torch on :func:`split_threads` threads. An error in ``fn`` is raised here, at its
    item's turn; when the caller stops early (an error, Ctrl-C, ``close()``), items not started are cancelled and
    the ones running finish before this returns.
    """
    if parallel <= 1:
        yield from map(fn, items)
        return
    caller_threads = torch.get_num_threads()
    share = split_threads(parallel, caller_threads)
    pool = concurrent.futures.ThreadPoolExecutor(parallel, "detect", initializer=torch.set_num_threads,
                                                 initargs=(share,))  # fmt: skip
    pending: collections.deque[concurrent.futures.Future[R]] = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > parallel:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if torch.get_num_threads() != caller_threads:  # a build where the count is process-wide
            torch.set_num_threads(caller_threads)


__all__ = ["ordered_map", "split_threads"]
