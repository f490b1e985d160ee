"""Keep freed memory in the process instead of handing it back to the kernel after every large tensor (glibc).

glibc's malloc serves a request above its mmap threshold (128 KiB, raised as large blocks are freed, to 32 MiB at
most) with fresh pages from ``mmap`` and unmaps them again on ``free``; freed memory at the top of its heap goes back
to the kernel too (``M_TRIM_THRESHOLD``). torch's CPU tensors come from malloc, and a training step or a batched
forward pass allocates and frees the same activation-sized blocks every step: every step the kernel maps them anew
and zero-fills them, one page fault per 4 KiB page. Keeping freed blocks for reuse (no mmap for large blocks, no
trimming) is what torch's CUDA caching allocator does on a GPU. On a 2-core CPU it made the small-data recipe's
training step 18% faster and batched Lite0 inference 1.4x (docs/speed.md, "Page faults"); the cost is that the
process keeps its peak memory until it exits. One image at a time gains nothing (D0's batch of one ran ~4% slower).

Applied by training (command line or Python) and by ``eval``, ``predict`` and ``bench`` when they run batches of
several images; Python users of ``Detector`` can call :func:`retain_freed_memory` themselves. It changes nothing
where the C library is not glibc, when ``EFFICIENTDET_RETAIN_MEMORY=0`` is set, or when the user tuned glibc's
malloc through its own environment variables.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

OPT_OUT_ENV = "EFFICIENTDET_RETAIN_MEMORY"  # "0": leave glibc's malloc as it is
# glibc's mallopt parameters (malloc.h); -1 as a trim threshold disables trimming (mallopt(3))
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NO_TRIMMING = -1
NO_MMAP = 0
# how users tune glibc's malloc themselves; their setting wins
USER_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
USER_TUNABLES_ENV = "GLIBC_TUNABLES"

_retained = False


def on_glibc() -> bool:
    """Whether this process runs on Linux with glibc, the only C library whose malloc this module tunes."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _may_apply() -> bool:
    """Not where the user opted out or tuned glibc's malloc through the environment, nor off glibc."""
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in os.environ for name in USER_MALLOC_ENV) or "glibc.malloc" in os.environ.get(USER_TUNABLES_ENV, ""):
        return False
    return on_glibc()


def retain_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (no mmap for large requests, no trimming); whether it now does.

    Process-wide and idempotent. Blocks already mapped keep their old fate; every later allocation follows the
    policy. Returns False, changing nothing, where :func:`_may_apply` says no or ``mallopt`` refuses.
    """
    global _retained
    if _retained:
        return True
    if not _may_apply():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; set the trim threshold first so a refused mmap setting leaves a harmless state
    _retained = bool(mallopt(M_TRIM_THRESHOLD, NO_TRIMMING)) and bool(mallopt(M_MMAP_MAX, NO_MMAP))
    return _retained


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` has applied the policy in this process."""
    return _retained


__all__ = ["OPT_OUT_ENV", "freed_memory_retained", "on_glibc", "retain_freed_memory"]
