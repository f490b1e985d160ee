"""Which device and which autocast dtype a run uses: training, evaluation and prediction choose them the same way."""

from __future__ import annotations

import functools

import torch


class DeviceError(ValueError):
    """A ``--device`` or ``--amp`` choice this machine cannot run."""


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; any other name through :func:`parse_device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return parse_device(name)


def as_device(device: str | torch.device) -> torch.device:
    """``device`` itself when it is a ``torch.device`` (the Python API's callers), else the name resolved by
    :func:`resolve_device` (``auto`` included), so that every entry point checks a name the same way."""
    return device if isinstance(device, torch.device) else resolve_device(str(device))


def parse_device(name: str) -> torch.device:
    """The device ``name`` names, checked before any work: a name torch does not know, or a device this machine
    lacks (CUDA, a CUDA index past the last GPU, MPS, XPU ...), is a :class:`DeviceError` naming ``--device``
    instead of torch's error deep inside the first model call (bench's was an AssertionError)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device torch knows (auto, cpu, cuda, cuda:1, mps ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
        is_available = getattr(backend, "is_available", None)
        if is_available is not None and not is_available():
            raise DeviceError(f"--device {name}: {device.type.upper()} is not available on this machine")
    return device


NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute in bf16
VNNI_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 int8 dot products that accumulate without saturating


def _cpu_flags() -> list[str] | None:
    """The x86 feature flags of Linux's ``/proc/cpuinfo`` (an empty list where it has no ``flags`` line, as on
    ARM), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX; Linux ``/proc/cpuinfo``).

    There oneDNN's bf16 convolutions run faster than fp32 (this project's raccoon runs at 448 px trained in bf16 on
    such a CPU at 11-15 img/s); elsewhere bf16 is emulated and slower than fp32, so ``--amp auto`` stays in fp32.
    """
    return any(flag in (_cpu_flags() or []) for flag in NATIVE_BF16_CPU_FLAGS)


@functools.cache
def x86_cpu_without_vnni() -> bool:
    """Whether this is an x86 CPU known to lack VNNI (its flags read, with AVX2 and no VNNI flag).

    There onnxruntime's u8 x s8 int8 kernels multiply with VPMADDUBSW, whose int16 pair sums can saturate; False
    where the flags cannot be read (other systems, other architectures): nothing known to warn about.
    """
    flags = _cpu_flags()
    return bool(flags) and "avx2" in flags and not any(flag in flags for flag in VNNI_CPU_FLAGS)


def amp_mode(amp: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether to autocast, and to which dtype. fp16 needs CUDA (and a gradient scaler); bf16 runs anywhere.

    ``auto``: bf16 (or fp16 where bf16 is missing) on CUDA; bf16 on a CPU that computes it natively; else fp32.
    """
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise DeviceError(f"--amp must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "auto":
        if device.type != "cuda":
            native = device.type == "cpu" and cpu_has_native_bf16()
            return native, torch.bfloat16 if native else torch.float32
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise DeviceError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    return amp != "off", {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[amp]
