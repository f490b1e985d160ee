"""Which device and which autocast dtype a run uses: training, evaluation and prediction choose them the same way."""

from __future__ import annotations

import functools

import torch


class DeviceError(ValueError):
    """A ``--device`` or ``--amp`` choice this machine cannot run."""


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; a CUDA device on a machine without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available on this machine")
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
