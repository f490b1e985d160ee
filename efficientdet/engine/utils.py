"""Helpers of the training loop: RNG state, the EMA, frozen backbones (device and AMP choice: ``utils.device``).

They lived in ``efficientdet.train`` (which still re-exports them); here they sit below both tasks, so neither
task's module imports the other's private names.
"""

from __future__ import annotations

import copy
import os
import random
from typing import Any

import torch
from torch import nn

from ..utils.device import DeviceError, amp_mode, resolve_device
from .recipe import EMA_DECAY


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, no data, an option this task does not support)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The RNG states a resumed run must restore to continue exactly (torch, Python, CUDA when present)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (lists from a checkpoint back to the tuples ``random`` wants)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class ModelEma:
    """Exponential moving average of the weights, with the TF-style warm-up ``min(decay, (1+n)/(10+n))``.

    Without the warm-up, a 0.9998 average of a short run would still be mostly the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = EMA_DECAY) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                ema_v.copy_(v)


def freeze_backbone(model: nn.Module, trainable_stages: int = 0) -> None:
    """Freeze ``model.backbone`` (detector or segmentation model); the convs of its last ``trainable_stages``
    stages still train (BN stays frozen)."""
    stages = list(model.backbone.blocks)
    if not 0 <= trainable_stages <= len(stages):
        raise TrainingError(f"--trainable-stages is {trainable_stages}; this backbone has {len(stages)} stages")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for stage in stages[len(stages) - trainable_stages :]:
        for m in stage.modules():
            if isinstance(m, nn.Conv2d):
                for p in m.parameters():
                    p.requires_grad_(True)


def unfreeze_backbone_convs(model: nn.Module) -> list[nn.Parameter]:
    """Let every conv of ``model.backbone`` train (its BN layers stay frozen); the parameters that were frozen."""
    woken = []
    for m in model.backbone.modules():
        if isinstance(m, nn.Conv2d):
            for p in m.parameters():
                if not p.requires_grad:
                    p.requires_grad_(True)
                    woken.append(p)
    return woken


def set_train_mode(model: nn.Module, frozen_backbone: bool, net: nn.Module | None = None) -> None:
    """Train mode for ``net`` (the DDP wrapper, when there is one), with a frozen backbone's BN kept in eval."""
    (net if net is not None else model).train()
    if frozen_backbone:
        model.backbone.eval()  # frozen BN statistics too


def shared_images_line(val_label: str, val_files: list[str], train_label: str, train_files: list[str]) -> str | None:
    """A warning when validation images are training images too (VOC's ``val`` inside ``trainval``, one folder
    given for both): their score overstates, and ``best.pt`` is chosen on what the model has seen. Worth a warning,
    not a stop. Paths are compared as written, made absolute (no system calls: COCO has 118k images)."""
    trained = {os.path.abspath(f) for f in train_files}
    shared = sum(os.path.abspath(f) in trained for f in val_files)
    if not shared:
        return None
    return (f"{val_label} shares {shared} of {len(val_files)} images with {train_label}: its score overstates what "
            "new images would score, and best.pt is chosen on images the model trained on")  # fmt: skip


__all__ = [
    "DeviceError",
    "ModelEma",
    "TrainingError",
    "amp_mode",
    "freeze_backbone",
    "resolve_device",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "set_train_mode",
    "shared_images_line",
    "unfreeze_backbone_convs",
]
