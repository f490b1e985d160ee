"""``efficientdet train`` for detection: the paper's recipe with checkpoints that survive a crash.

SGD (momentum 0.9) with the learning rate scaled from 0.08 per 64 images, linear warm-up then cosine decay,
weight decay on conv/linear weights only, gradient-norm clipping, EMA weights for evaluation, focal + Huber loss.
``last.pt`` is written atomically every epoch and holds everything ``--resume`` needs to continue exactly.

The loop is :class:`efficientdet.engine.Trainer`, shared with segmentation; what is particular to detection is
:class:`efficientdet.engine.tasks.detection.DetectionTask`. This module keeps the public entry points
(``train(TrainConfig(...))``, ``resume_config``) and re-exports the names that used to live here.
"""

from __future__ import annotations

from typing import Any

from ..ops.losses import detection_loss
from .components import write_metrics_csv
from .recipe import (
    BASE_BATCH,
    CLIP_NORM,
    DEFAULT_LR_PER_64,
    EMA_DECAY,
    MAX_BAD_STEPS,
    MOMENTUM,
    TENSORBOARD_DIR,
    WARMUP_START,
    WEIGHT_DECAY,
    default_lr,
    lr_at,
    param_groups,
)
from .tasks.detection import (
    DEFAULT_TRAIN_SCALE_RANGE,
    PLOTS_DIR,
    TENSORBOARD_IMAGES,
    TENSORBOARD_SCORE_THRESHOLD,
    DetectionTask,
    TrainConfig,
    build_model,
)
from .trainer import resume_settings, run_training
from .utils import (
    ModelEma,
    TrainingError,
    amp_mode,
    freeze_backbone,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    set_train_mode,
)

# the names other modules imported from here before the engine existed
_freeze_backbone = freeze_backbone
_set_train_mode = set_train_mode


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) and return the final summary: best AP, metrics of the last evaluation, paths.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), every process calls this and they train as one DDP job: gloo on
    CPU, NCCL on CUDA (device ``cuda:LOCAL_RANK``). All ranks return the same summary.
    """
    return run_training(cfg, DetectionTask)


def resume_config(path: str, **changes: Any) -> TrainConfig:
    """The settings of the run saved in ``path`` (a ``last.pt``), with ``changes`` (e.g. more ``epochs``).

    Output defaults to the checkpoint's folder. Model, data and recipe come from the checkpoint so that the
    resumed run is the same run.
    """
    return TrainConfig(**resume_settings(path, "detection", **changes))


__all__ = [
    "BASE_BATCH",
    "CLIP_NORM",
    "DEFAULT_LR_PER_64",
    "DEFAULT_TRAIN_SCALE_RANGE",
    "EMA_DECAY",
    "MAX_BAD_STEPS",
    "MOMENTUM",
    "PLOTS_DIR",
    "TENSORBOARD_DIR",
    "TENSORBOARD_IMAGES",
    "TENSORBOARD_SCORE_THRESHOLD",
    "WARMUP_START",
    "WEIGHT_DECAY",
    "ModelEma",
    "TrainConfig",
    "TrainingError",
    "amp_mode",
    "build_model",
    "default_lr",
    "detection_loss",
    "lr_at",
    "param_groups",
    "resolve_device",
    "resume_config",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "train",
    "write_metrics_csv",
]
