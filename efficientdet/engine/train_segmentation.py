"""Training and evaluation of the segmentation variant: per-pixel cross-entropy, mIoU after every epoch.

The loop is the detector's (:class:`efficientdet.engine.Trainer`: the paper's recipe, EMA, AMP, torchrun DDP,
SyncBN, gradient checkpointing, frozen backbone stages, exact resume); what is particular to segmentation is
:class:`efficientdet.engine.tasks.segmentation.SegmentationTask`. This module keeps the public entry points
(``train_segmentation(SegTrainConfig(...))``, ``resume_segmentation_config``).
"""

from __future__ import annotations

from typing import Any

from ..evaluation.segmentation import DEFAULT_IGNORE_INDEX, evaluate_segmentation
from .recipe import BASE_BATCH, CLIP_NORM, DEFAULT_LR_PER_64, EMA_DECAY, MAX_BAD_STEPS, MOMENTUM, WEIGHT_DECAY
from .tasks.segmentation import (
    SegmentationTask,
    SegTrainConfig,
    build_segmentation_model,
    resolve_class_weights,
    segmentation_loss,
)
from .trainer import resume_settings, run_training


def train_segmentation(cfg: SegTrainConfig) -> dict[str, Any]:
    """Train (or resume) and return the summary: best mIoU, the last evaluation's metrics, checkpoint paths.

    Under ``torchrun`` every process calls this and they train as one DDP job, as detection does.
    """
    return run_training(cfg, SegmentationTask)


def resume_segmentation_config(path: str, **changes: Any) -> SegTrainConfig:
    """The settings of the run saved in ``path`` (a segmentation ``last.pt``), with ``changes``."""
    return SegTrainConfig(**resume_settings(path, "segmentation", **changes))


__all__ = [
    "BASE_BATCH",
    "CLIP_NORM",
    "DEFAULT_IGNORE_INDEX",
    "DEFAULT_LR_PER_64",
    "EMA_DECAY",
    "MAX_BAD_STEPS",
    "MOMENTUM",
    "WEIGHT_DECAY",
    "SegTrainConfig",
    "build_segmentation_model",
    "evaluate_segmentation",
    "resolve_class_weights",
    "resume_segmentation_config",
    "segmentation_loss",
    "train_segmentation",
]
