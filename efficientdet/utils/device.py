"""Which device and which autocast dtype a run uses: training, evaluation and prediction choose them the same way."""

from __future__ import annotations

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


def amp_mode(amp: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether to autocast, and to which dtype. fp16 needs CUDA (and a gradient scaler); bf16 runs anywhere."""
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise DeviceError(f"--amp must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "auto":
        if device.type != "cuda":
            return False, torch.float32
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise DeviceError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    return amp != "off", {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[amp]
