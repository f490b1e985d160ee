"""One OpenVINO ``Core`` per process, and the thread's signal stack kept valid around NNCF.

OpenVINO's CPU plugin (``ov::intel_cpu::Plugin``, OpenVINO 2024-2026) installs an alternate signal stack on the
thread that creates it (``sigaltstack``; larger than glibc's default, for AMX register state) and, when it is
destroyed, puts back the stack it found *only if its own is still the current one*, then unmaps its own. Plugins
destroyed in any order but the reverse of their creation therefore leave the thread's alternate stack pointing at
unmapped memory: the next signal whose handler runs on that stack (Python installs every handler with SA_ONSTACK;
DataLoader workers exiting send SIGCHLD) kills the process with SIGSEGV, without a Python traceback. Two
``ov.Core().compile_model(...)`` calls freed first-in-first-out are enough (tests/test_quantize.py reproduces it).

Every plugin is owned by a ``Core``, so the project makes exactly one (:func:`openvino_core`, alive until the
process ends) and runs NNCF, which makes its own, inside :func:`preserved_signal_stack`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import sys
from collections.abc import Iterator
from typing import Any

SS_DISABLE = 2  # <signal.h>: the thread has no alternate stack


OPENVINO_HINT = 'pip install "efficientdet[openvino]"'


def require_openvino() -> Any:
    """The ``openvino`` module, or an ImportError saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ImportError(f"OpenVINO is not installed: {OPENVINO_HINT}") from e
    return openvino


class SignalStack(ctypes.Structure):
    """``stack_t`` of <signal.h> (Linux)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """The process's ``openvino.Core``: its CPU plugin is created once and never freed before exit."""
    return require_openvino().Core()


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def current_signal_stack() -> SignalStack | None:
    """The calling thread's alternate signal stack (None where there is no ``sigaltstack``)."""
    if not sys.platform.startswith("linux"):
        return None
    stack = SignalStack()
    if _libc().sigaltstack(None, ctypes.byref(stack)) != 0:
        return None
    return stack


def set_signal_stack(stack: SignalStack) -> None:
    """Make ``stack`` (from :func:`current_signal_stack`) the calling thread's alternate signal stack again."""
    wanted = SignalStack(stack.ss_sp, stack.ss_flags & SS_DISABLE, stack.ss_size)
    if _libc().sigaltstack(ctypes.byref(wanted), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaltstack failed")


@contextlib.contextmanager
def preserved_signal_stack() -> Iterator[None]:
    """Run a block that may create and free OpenVINO Cores (NNCF does), then give the thread back the alternate
    signal stack it had before, after freeing what the block left unreferenced.

    A plugin freed later sees another stack than its own as current and leaves it alone, so the restored one,
    which outlives the block, stays in place.
    """
    before = current_signal_stack()
    try:
        yield
    finally:
        gc.collect()
        if before is not None:
            set_signal_stack(before)
