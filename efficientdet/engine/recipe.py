"""The training recipe both tasks share: its constants, the learning-rate schedule, and the options of a run.

The paper (Tan, Pang, Le, CVPR 2020, section 5.1) trains with SGD, momentum 0.9, weight decay 4e-5, a learning rate
warmed up linearly from 0 to 0.16 (batch 128) then annealed by cosine decay, and an exponential moving average of
the weights with decay 0.9998; the official code (google/automl efficientdet) clips the gradient norm at 10 and
starts the warm-up at 0.008 for a peak of 0.08 per 64 images. Detection and segmentation use these same numbers:
each is defined here once.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..utils.fields import (
    check_fields,
    increasing_pair,
    int_at_least,
    number_in,
    one_of,
    option,
    optional_text,
    resume_changeable,
)

BASE_BATCH = 64  # learning rates are quoted per 64 images and scaled linearly with the batch
# The paper's COCO rate is 0.08 per 64 images (`--lr 0.08*B/64`); `efficientdet train` defaults to 3x that.
# Fine-tuning a fresh BiFPN and heads on a small dataset for tens of epochs learns too slowly at the COCO rate:
# on raccoon this gave AP 0.506 against 0.387 (with jitter 0.5-1.5 against 0.1-2.0; benchmarks/raccoon.py).
DEFAULT_LR_PER_64 = 0.24
# AdamW (Loshchilov & Hutter, ICLR 2019: Adam with weight decay decoupled from the gradient), the optimiser many
# fine-tuning recipes for small detection sets use. Its rate is ~30x below SGD's (1e-3 at batch 8, the common
# fine-tuning value) and its decay is a fraction of the weights per step times the rate, hence 0.05 (the usual
# AdamW value) where SGD's L2 penalty is 4e-5.
OPTIMIZERS = ("sgd", "adamw")
ADAMW_LR_PER_64 = 0.008
ADAMW_WEIGHT_DECAY = 0.05
WARMUP_START = 0.1  # official code: warm-up from 0.008 = 0.1 x 0.08
MOMENTUM = 0.9  # paper, section 5.1
WEIGHT_DECAY = 4e-5  # paper, section 5.1
CLIP_NORM = 10.0  # official code: gradient norm clipped at 10
EMA_DECAY = 0.9998  # paper, section 5.1 (with ModelEma's warm-up so that short runs work)
LR_SCALE = "lr_scale"  # an optimiser group's multiplier of the schedule's rate
MAX_BAD_STEPS = 20  # consecutive non-finite steps before training stops
EVAL_SHARE = 0.10  # --eval-interval left open: validation kept to about this share of the training time
EVAL_CADENCE_EPOCH = 2  # ... measured on this epoch (the first one's passes include one-off set-up)
TENSORBOARD_DIR = "tensorboard"  # under the output folder
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
# Data-loading processes. On a CPU with few cores a worker process takes a core from the training step's intra-op
# threads whenever it decodes a batch, and every op then waits for its slowest thread: on this project's 2-core
# machine (Lite0, 448 px, frozen backbone, bf16) one or two workers gave 16-18 img/s, loading in the training process
# itself 23-24 img/s with the same losses, while loading needs ~5% of the CPU time. Elsewhere workers keep the
# decoding off the critical path (a GPU, or a CPU whose step is fast enough for serial loading to show).
DEFAULT_WORKERS = 2
SMALL_CPU_CORES = 4
SMALL_CPU_WORKERS = 0


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from 0.1 x peak, then cosine decay to 0 (per optimiser step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (WARMUP_START + (1 - WARMUP_START) * step / warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, progress)))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """``--workers`` when not given: none on a CPU of at most SMALL_CPU_CORES cores, else DEFAULT_WORKERS."""
    if device.type == "cpu" and available_cpus() <= SMALL_CPU_CORES:
        return SMALL_CPU_WORKERS
    return DEFAULT_WORKERS


def default_lr(global_batch: int, optimizer: str = "sgd") -> float:
    """Peak learning rate when ``--lr`` is not given: DEFAULT_LR_PER_64 (SGD) or ADAMW_LR_PER_64 per 64 images of
    the *global* batch.

    Under DDP the global batch is ``world_size * batch_size``: 8 GPUs x 8 images train at 8x the rate of one.
    """
    per_64 = ADAMW_LR_PER_64 if optimizer == "adamw" else DEFAULT_LR_PER_64
    return per_64 * global_batch / BASE_BATCH


def default_weight_decay(optimizer: str) -> float:
    """``--weight-decay`` when not given: the paper's L2 4e-5 for SGD, ADAMW_WEIGHT_DECAY (decoupled) for AdamW."""
    return ADAMW_WEIGHT_DECAY if optimizer == "adamw" else WEIGHT_DECAY


def make_optimizer(groups: list[dict[str, Any]], optimizer: str, lr: float) -> torch.optim.Optimizer:
    """The run's optimiser over ``groups`` (:func:`param_groups`): SGD with the paper's momentum, or AdamW."""
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM)


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: not on BN, biases or fusion weights (official code's filter).

    With ``backbone_lr_scale`` != 1 the backbone's trainable parameters form groups of their own, whose rate is
    the schedule's times that scale (:func:`scaled_lr`); with 1 there are two groups, as in runs saved before.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr_scale == 1.0:
        return decay_groups(trainable, weight_decay)
    in_backbone = {id(p) for p in model.backbone.parameters()}
    rest = [p for p in trainable if id(p) not in in_backbone]
    backbone = [p for p in trainable if id(p) in in_backbone]
    slowed = decay_groups(backbone, weight_decay, backbone_lr_scale) if backbone else []
    return decay_groups(rest, weight_decay) + slowed


def decay_groups(params: list[nn.Parameter], weight_decay: float, lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """``params`` in two optimiser groups: with weight decay (conv/linear weights) and without (the rest), each
    at ``lr_scale`` times the schedule's rate."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay, LR_SCALE: lr_scale},
        {"params": no_decay, "weight_decay": 0.0, LR_SCALE: lr_scale},
    ]


def scaled_lr(group: dict[str, Any], lr: float) -> float:
    """An optimiser group's rate at schedule rate ``lr`` (groups saved before the scale existed: 1)."""
    return lr * group.get(LR_SCALE, 1.0)


@dataclass
class RecipeConfig:
    """The options every task's training run has; a task's config adds its own (data, loss) and may change defaults.

    ``TrainConfig`` (detection) and ``SegTrainConfig`` (segmentation) subclass this, so an option of the loop
    (EMA, AMP, DDP, resume ...) exists once with one meaning for both. Each field's metadata (:func:`option`) is
    also its command-line flag: help text, check, and whether it may change on ``--resume``.
    """

    model: str = field(default="", metadata=option("model name"))
    # may change on --resume (the data moved, or the run goes on on another machine) when the training images are
    # the run's own: the trainer compares them with the identity last.pt keeps
    data: str | None = field(
        default=None,
        metadata=option("dataset folder or file (--resume: the run's own data at a new path)", resume=True),
    )
    train_split: str = field(default="train", metadata=option("split to train on"))
    val_split: str | None = field(
        default="val",
        metadata=option("split evaluated after each epoch ('none': no evaluation)", parse=optional_text),
    )
    epochs: int = field(default=60, metadata=option("epochs", int_at_least(1), resume=True))
    batch_size: int = field(  # per process: global = world_size * batch_size
        default=8,
        metadata=option("images per step per process; the default lr scales with the global batch", int_at_least(1)),
    )
    img_size: int | None = field(
        default=None,
        metadata=option("input size", int_at_least(1, optional=True), default_text="the model's own"),
    )
    output: str = field(
        default="runs/train",
        metadata=option(
            "folder for last.pt, best.pt, metrics.csv, metrics.png (left out: the default, or the default with 2, "
            "3, ... added when that folder holds a run)",
            resume=True,
        ),
    )
    # An --output that holds a run (last.pt / best.pt) is refused unless this is set: a second run would replace
    # the first one's model at its first epoch (ultralytics' exist_ok is the same switch)
    exist_ok: bool = field(
        default=False, metadata=option("replace the run an --output folder already holds", resume=True)
    )
    # None: default_lr(global batch, optimizer) (the paper's COCO rule: SGD at 0.08 per 64)
    lr: float | None = field(
        default=None,
        metadata=option(
            "peak learning rate",
            number_in(0, low_open=True, optional=True),
            default_text=f"{DEFAULT_LR_PER_64:g} (sgd) or {ADAMW_LR_PER_64:g} (adamw) x global batch / {BASE_BATCH}; "
            f"the paper's COCO rate is 0.08 x batch / {BASE_BATCH}",
        ),
    )
    warmup_epochs: float = field(default=1.0, metadata=option("linear warm-up length in epochs", number_in(0)))
    optimizer: str = field(
        default="sgd",
        metadata=option("sgd (the paper's: momentum 0.9) or adamw (decoupled weight decay)", one_of(OPTIMIZERS)),
    )
    # None: default_weight_decay(optimizer)
    weight_decay: float | None = field(
        default=None,
        metadata=option(
            "weight decay of conv and linear weights",
            number_in(0, optional=True),
            default_text=f"{WEIGHT_DECAY:g} with sgd (the paper's), {ADAMW_WEIGHT_DECAY:g} with adamw",
        ),
    )
    # Camera photos decode several times faster at libjpeg's reduced scales (efficientdet.data.images); the pixels
    # differ from a full decoding's by a fraction of a grey level on average, which --no-reduced-decoding avoids
    reduced_decoding: bool = field(
        default=True,
        metadata=option(
            "decode a training JPEG at 1/2, 1/4 or 1/8 of its resolution where that still covers the input size "
            "times the scale jitter's top (--no-reduced-decoding: always in full; evaluation and prediction decode "
            "to cover the input size either way)",
            resume=True,
        ),
    )
    scale_range: tuple[float, float] = field(
        default=(0.5, 1.5),
        metadata=option(
            "scale-jitter factor range (the paper's COCO setting: 0.1 2.0)",
            increasing_pair(0.0),
            metavar=("MIN", "MAX"),
        ),
    )
    hflip: float = field(default=0.5, metadata=option("probability of a horizontal flip", number_in(0, 1)))
    ema_decay: float = field(
        default=EMA_DECAY,
        metadata=option(
            "decay of the weights' moving average; warmed up as min(decay, (1+n)/(10+n)) after n steps, so a run of "
            "about 1,000 steps ends near 0.99 whatever a higher value asks",
            number_in(0, 1, high_open=True),
        ),
    )
    clip_norm: float = field(default=CLIP_NORM, metadata=option("gradient norm clip", number_in(0, low_open=True)))
    pretrained_backbone: bool = field(
        default=True,
        metadata=option("ImageNet backbone weights for a fresh start (packaged for Lite0-2, else downloaded once)"),
    )
    checkpoint: str | None = field(
        default=None,
        metadata=option(
            "start from these weights, a file or URL (classes it knows by name keep their head rows, "
            "the others start afresh)"
        ),
    )
    resume: str | None = field(
        default=None, metadata=option("continue the run saved in this last.pt exactly where it stopped")
    )
    freeze_backbone: bool = field(default=False, metadata=option("train only the feature network and heads"))
    # With freeze_backbone: the conv weights of the backbone's last N stages train all the same (its BN layers,
    # statistics and affine, stay frozen everywhere, as torchvision's trainable_backbone_layers with FrozenBN).
    trainable_stages: int = field(
        default=0,
        metadata=option(
            "with --freeze-backbone: the convs of the backbone's last N of 7 stages train too, its BN "
            "layers stay frozen",
            int_at_least(0),
            metavar="N",
        ),
    )
    # With freeze_backbone: linear probing then fine-tuning (Kumar et al., "Fine-Tuning can Distort Pretrained
    # Features and Underperform Out-of-Distribution", ICLR 2022): the heads first learn on the frozen features, then
    # every backbone conv trains for the closing epochs, at the low rates the cosine schedule has reached by then.
    unfreeze_epochs: int = field(
        default=0,
        metadata=option(
            "with --freeze-backbone: the last N epochs train every backbone conv too (its BN layers stay frozen), "
            "after the heads have learnt on the frozen features",
            int_at_least(0),
            metavar="N",
        ),
    )
    # The backbone's trainable convs (--trainable-stages, --unfreeze-epochs, an unfrozen backbone) at a fraction of
    # the rate of the freshly initialised BiFPN and heads: pretrained features change slowly (discriminative
    # fine-tuning, Howard and Ruder, ACL 2018)
    backbone_lr_scale: float = field(
        default=1.0,
        metadata=option(
            "the backbone's trainable parameters learn at this multiple of the learning rate",
            number_in(0, low_open=True),
            metavar="F",
        ),
    )
    # None: default_workers(device) once the device is known
    workers: int | None = field(
        default=None,
        metadata=option(
            "data-loading processes",
            int_at_least(0, optional=True),
            resume=True,
            default_text=f"{SMALL_CPU_WORKERS} when training on a CPU with at most {SMALL_CPU_CORES} cores, "
            f"else {DEFAULT_WORKERS}",
        ),
    )
    seed: int = field(default=0, metadata=option("random seed"))
    device: str = field(default="auto", metadata=option("auto, cpu, cuda, cuda:1 ...", resume=True))
    amp: str = field(
        default="auto",
        metadata=option(
            "mixed precision: auto (bf16/fp16 on CUDA; bf16 on a CPU with AVX512-BF16 or AMX, else off), off, "
            "bf16, fp16 (CUDA)",
            one_of(AMP_CHOICES),
        ),
    )
    # Validation changes nothing the run trains (last.pt is the same either way) but costs its time: on a 2-core CPU
    # a pass over BCCD's 87 validation images took 5 s against a 12 s training epoch. Left open, the run evaluates
    # after epochs 1 and 2 and then every N epochs, N the smallest that keeps validation within EVAL_SHARE of the
    # training time, measured on epoch 2 (both passes warm); always after the last epoch.
    eval_interval: int | None = field(
        default=None,
        metadata=option(
            "evaluate every N epochs (and after the last)",
            int_at_least(1, optional=True),
            resume=True,
            metavar="N",
            default_text=f"every N epochs that keep validation within {EVAL_SHARE:.0%} of the training time, "
            f"measured on epoch {EVAL_CADENCE_EPOCH}; every epoch where a pass is that cheap",
        ),
    )
    # Early stopping (ultralytics' --patience, Keras' EarlyStopping): the schedule is planned for --epochs, so a run
    # that stops early ends at a higher learning rate than its schedule's end; best.pt holds the best evaluation.
    patience: int | None = field(
        default=None,
        metadata=option(
            "stop when the validation metric has not improved for N evaluations in a row (best.pt keeps the best)",
            int_at_least(1, optional=True),
            resume=True,
            metavar="N",
            default_text="off",
        ),
    )
    # A wall-clock budget (ultralytics' ``time``): the run ends after the last epoch that fits, its schedule still
    # planned for --epochs. Re-planning the cosine schedule to end within the budget instead (budget-aware decay,
    # Li et al., ICLR 2020) scored lower on validation images in five of five runs (raccoon, BCCD: the EMA weights of
    # a run cut at a high rate did better), and keeping the plan lets --resume with a larger limit continue the run.
    time_limit: float | None = field(
        default=None,
        metadata=option(
            "stop before M minutes of epochs and their validation are spent: the run ends after the last epoch "
            "that fits (the mean epoch so far predicts the next), evaluated and saved; the learning-rate schedule "
            "stays planned for --epochs",
            number_in(0, low_open=True, optional=True),
            resume=True,
            metavar="M",
            default_text="no limit",
        ),
    )
    max_steps: int | None = field(
        default=None,
        metadata=option(
            "stop after N optimiser steps in total (smoke tests; a run cut mid-epoch resumes at the next epoch)",
            int_at_least(1, optional=True),
            resume=True,
            metavar="N",
            default_text="no limit",
        ),
    )
    sync_bn: bool = field(
        default=False,
        metadata=option("under torchrun: BN statistics over the global batch (the paper's setting)", resume=True),
    )
    grad_checkpoint: bool = field(
        default=False,
        metadata=option("recompute backbone/BiFPN activations in backward: less memory, slower steps", resume=True),
    )
    # NHWC tensors: oneDNN runs the forward and the frozen-backbone backward ~1.5x faster on CPU (EfficientNet-Lite0,
    # 320-448 px, measured on this project's machine); the weights and the checkpoints are the same either way.
    channels_last: bool = field(default=True, metadata=option("NHWC tensors in training (faster on CPU)", resume=True))
    # TensorBoard logs in OUTPUT/tensorboard (rank 0): losses and lr per step, the metrics.csv row per epoch, and
    # what the task adds (detection: validation images with the EMA model's detections, PR curves)
    tensorboard: bool = field(
        default=False,
        metadata=option(
            "write TensorBoard logs to OUTPUT/tensorboard: losses and lr per step, metrics per epoch, "
            "what the task draws",
            resume=True,
        ),
    )
    model_overrides: dict[str, Any] = field(default_factory=dict, metadata=option("model config changes", cli=False))

    def __post_init__(self) -> None:
        self.scale_range = tuple(self.scale_range)  # type: ignore[assignment]  # lists from JSON / old checkpoints
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scale_range"] = list(self.scale_range)
        return d


# Options that may differ from the saved run on --resume: where and how fast it runs, not what it computes.
RESUME_CHANGEABLE = resume_changeable(RecipeConfig)


__all__ = [
    "BASE_BATCH",
    "CLIP_NORM",
    "DEFAULT_LR_PER_64",
    "EMA_DECAY",
    "EVAL_CADENCE_EPOCH",
    "EVAL_SHARE",
    "MAX_BAD_STEPS",
    "MOMENTUM",
    "OPTIMIZERS",
    "RESUME_CHANGEABLE",
    "RecipeConfig",
    "WARMUP_START",
    "WEIGHT_DECAY",
    "default_lr",
    "default_weight_decay",
    "lr_at",
    "make_optimizer",
    "param_groups",
    "scaled_lr",
]
