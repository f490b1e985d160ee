"""The training loop: the paper's recipe (SPEC 6-7) with checkpoints that survive a crash.

SGD (momentum 0.9) with the learning rate scaled from 0.08 per 64 images, linear warm-up then cosine decay,
weight decay on conv/linear weights only, gradient-norm clipping, EMA weights for evaluation, focal + Huber loss.
``last.pt`` is written atomically every epoch and holds everything ``--resume`` needs to continue exactly.

Under ``torchrun`` every process runs :func:`train`; they form one DistributedDataParallel job whose W processes
with batch b compute what one process with batch W*b computes (``efficientdet.distributed`` says how), and rank 0
alone logs and writes files. Without torchrun nothing of that is switched on.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .anchors import anchors_for_config
from .atomic import atomic_open
from .config import ModelConfig, get_config, list_models
from .data.dataset import Batch, DetectionDataset, loader_kwargs
from .data.images import ImageReadError, load_image
from .data.readers import read_dataset
from .data.records import DetectionData, ImageRecord
from .data_check import data_summary
from .distributed import (
    DistEnv,
    GlobalBatchSampler,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_state,
    convert_sync_batchnorm,
    distributed_session,
)
from .draw import draw_batch, draw_detections
from .eval_plots import write_evaluation_plots
from .evaluate import CocoEvaluation, format_metrics
from .factory import checkpoint_labels, config_for_checkpoint, load_pretrained_backbone, save_model
from .fields import check_fields, increasing_pair, int_at_least, number_in, one_of
from .finetune import describe_mapping, shared_classes, transfer_state
from .hub import detection_weights_file, resolve_weights
from .labeler import AnchorLabeler
from .losses import BOX_LOSS_WEIGHT, detection_loss
from .nn.detector import EfficientDet
from .plot import plot_training_metrics
from .postprocess import flatten_outputs
from .progress import progress_bar
from .tensorboard_log import TensorBoardLogger
from .validate import evaluate_model, predict_records
from .weights import CheckpointError, load_weights, read_checkpoint, read_file

LOG = logging.getLogger(__name__)

BASE_BATCH = 64  # learning rates are quoted per 64 images and scaled linearly with the batch
# SPEC 7 (COCO, 300 epochs) uses 0.08 per 64 images (`--lr 0.08*B/64`); `efficientdet train` defaults to 3x that.
# Fine-tuning a fresh BiFPN and heads on a small dataset for tens of epochs learns too slowly at the COCO rate:
# on raccoon this gave AP 0.506 against 0.387 (with jitter 0.5-1.5 against 0.1-2.0; benchmarks/raccoon.py).
DEFAULT_LR_PER_64 = 0.24
# Default jitter of `efficientdet train` (the paper's 0.1-2.0 is `--scale-range 0.1 2.0`): milder for small data.
DEFAULT_TRAIN_SCALE_RANGE = (0.5, 1.5)
WARMUP_START = 0.1  # SPEC 7: warm-up from 0.008 = 0.1 x 0.08
MOMENTUM = 0.9
WEIGHT_DECAY = 4e-5
CLIP_NORM = 10.0
EMA_DECAY = 0.9998
MAX_BAD_STEPS = 20  # consecutive non-finite steps before training stops
TENSORBOARD_DIR = "tensorboard"  # under the output folder
PLOTS_DIR = "plots"  # under the output folder: PR curves, F1 curve and confusion matrix of the final evaluation
TENSORBOARD_IMAGES = 4  # validation images drawn with the EMA model's detections at each evaluation
TENSORBOARD_SCORE_THRESHOLD = 0.3  # as `efficientdet predict` draws: lower scores only clutter the picture


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, no data)."""


@dataclass
class TrainConfig:
    """Every option of `efficientdet train` (the CLI maps its flags one to one onto these fields)."""

    model: str = field(default="efficientdet-lite0", metadata=one_of(list_models()))
    data: str | None = None
    format: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    epochs: int = field(default=60, metadata=int_at_least(1))
    batch_size: int = field(default=8, metadata=int_at_least(1))  # per process: global = world_size * batch_size
    img_size: int | None = field(default=None, metadata=int_at_least(1, optional=True))  # None: the model's own
    output: str = "runs/train"
    # None: DEFAULT_LR_PER_64 * global batch / 64 (the paper's COCO rule: 0.08 per 64)
    lr: float | None = field(default=None, metadata=number_in(0, low_open=True, optional=True))
    warmup_epochs: float = field(default=1.0, metadata=number_in(0))
    weight_decay: float = field(default=WEIGHT_DECAY, metadata=number_in(0))
    scale_range: tuple[float, float] = field(default=DEFAULT_TRAIN_SCALE_RANGE, metadata=increasing_pair(0.0))
    hflip: float = field(default=0.5, metadata=number_in(0, 1))
    ema_decay: float = field(default=EMA_DECAY, metadata=number_in(0, 1, high_open=True))
    clip_norm: float = field(default=CLIP_NORM, metadata=number_in(0, low_open=True))
    # Weight of the Huber box loss against the focal class loss (the paper: 50). Higher asks for tighter boxes.
    box_loss_weight: float = field(default=BOX_LOSS_WEIGHT, metadata=number_in(0))
    # ImageNet backbone weights for a fresh start (packaged for Lite0-2, else downloaded once): a detector trained
    # from a random backbone on a small dataset is a trap nobody asks for. Unused with checkpoint / pretrained.
    pretrained_backbone: bool = True
    checkpoint: str | None = None  # fine-tune from this file (or URL)
    pretrained: bool = False  # fine-tune from the model's published COCO weights (efficientdet.hub)
    resume: str | None = None
    freeze_backbone: bool = False
    # With freeze_backbone: the conv weights of the backbone's last N stages train all the same (its BN layers,
    # statistics and affine, stay frozen everywhere, as torchvision's trainable_backbone_layers with FrozenBN).
    trainable_stages: int = field(default=0, metadata=int_at_least(0))
    workers: int = field(default=2, metadata=int_at_least(0))
    seed: int = 0
    device: str = "auto"
    # "auto" (bf16/fp16 on CUDA, off on CPU), "off", "bf16" (CPU too), "fp16" (CUDA)
    amp: str = field(default="auto", metadata=one_of(("auto", "off", "bf16", "fp16")))
    eval_interval: int = field(default=1, metadata=int_at_least(1))
    # stop after this many optimiser steps in total (tests, smoke runs)
    max_steps: int | None = field(default=None, metadata=int_at_least(1, optional=True))
    sync_bn: bool = False  # under torchrun: BN statistics over the global batch (the paper's setting)
    grad_checkpoint: bool = False  # recompute backbone / BiFPN activations in backward: less memory, slower steps
    # NHWC tensors: oneDNN runs the forward and the frozen-backbone backward ~1.5x faster on CPU (EfficientNet-Lite0,
    # 320-448 px, measured on this project's machine); the weights and the checkpoints are the same either way.
    channels_last: bool = True
    # TensorBoard logs in OUTPUT/tensorboard (rank 0): losses and lr per step, the metrics.csv row per epoch,
    # validation images with the EMA model's detections
    tensorboard: bool = False
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scale_range = tuple(self.scale_range)  # type: ignore[assignment]  # lists from JSON / old checkpoints
        check_fields(self)
        if self.pretrained and self.checkpoint:
            raise ValueError("give --checkpoint or --pretrained (the published weights), not both")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scale_range"] = list(self.scale_range)
        return d


# --------------------------------------------------------------------------------------------- pieces


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from 0.1 x peak, then cosine decay to 0 (per optimiser step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (WARMUP_START + (1 - WARMUP_START) * step / warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, progress)))


def default_lr(global_batch: int) -> float:
    """Peak learning rate when ``--lr`` is not given: DEFAULT_LR_PER_64 per 64 images of the *global* batch.

    Under DDP the global batch is ``world_size * batch_size``: 8 GPUs x 8 images train at 8x the rate of one.
    """
    return DEFAULT_LR_PER_64 * global_batch / BASE_BATCH


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: not on BN, biases or fusion weights (SPEC 6)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine")
    return device


def amp_mode(amp: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether to autocast, and to which dtype. fp16 needs CUDA (and a gradient scaler); bf16 runs anywhere."""
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise TrainingError(f"--amp must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "auto":
        if device.type != "cuda":
            return False, torch.float32
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise TrainingError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    return amp != "off", {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[amp]


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


# --------------------------------------------------------------------------------------------- model set-up


def build_model(cfg: TrainConfig, class_names: list[str], category_ids: list[int] | None = None) -> EfficientDet:
    """A model for ``class_names``: fresh, from ImageNet backbone weights, or fine-tuned from a checkpoint.

    A checkpoint (``checkpoint``, or ``pretrained``: the published COCO weights) gives everything but the rows of
    the class head for classes it does not know by name, which start afresh (:mod:`efficientdet.finetune`); the
    mapping is logged. ``category_ids``: the dataset's ids of the classes (COCO JSON), kept with the model.
    """
    num_classes = len(class_names)
    overrides = dict(cfg.model_overrides)
    if cfg.img_size:
        overrides["image_size"] = cfg.img_size
    start = resolve_weights(cfg.checkpoint) if cfg.checkpoint else None
    if cfg.pretrained:
        start = str(detection_weights_file(cfg.model))
    if start:
        ckpt = read_checkpoint(start)
        settings = config_for_checkpoint(get_config(cfg.model), ckpt, start)
        source_classes = get_config(cfg.model).replace(**settings).num_classes
        source_names, _ = checkpoint_labels(ckpt, source_classes)
        settings.update(overrides, num_classes=num_classes)
        model = EfficientDet(get_config(cfg.model).replace(**settings))
        if source_names is None and source_classes == num_classes:
            rows = {i: i for i in range(num_classes)}  # names unknown, same count: the classes in their order
        else:
            rows = shared_classes(source_names, class_names)
        state, kept = transfer_state(ckpt.state_dict, model, rows, source_classes)
        load_weights(model, state, source=start)
        LOG.info("fine-tuning from %s: %d classes -> %d: %s", start, source_classes, num_classes,
                 describe_mapping(kept, source_names, class_names))  # fmt: skip
    else:
        model = EfficientDet(get_config(cfg.model, num_classes=num_classes, **overrides))
        if cfg.pretrained_backbone and not cfg.resume:  # a resumed run loads its own weights over these
            load_pretrained_backbone(model)
    model.class_names = list(class_names)
    model.category_ids = [int(i) for i in category_ids] if category_ids is not None else None
    return model


def _freeze_backbone(model: nn.Module, trainable_stages: int = 0) -> None:
    """Freeze ``model.backbone`` (detector or segmentation model); the convs of its last ``trainable_stages``
    stages still train (BN stays frozen)."""
    stages = list(model.backbone.blocks)
    if not 0 <= trainable_stages <= len(stages):
        raise TrainingError(f"trainable_stages is {trainable_stages}; this backbone has {len(stages)} stages")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for stage in stages[len(stages) - trainable_stages :]:
        for m in stage.modules():
            if isinstance(m, nn.Conv2d):
                for p in m.parameters():
                    p.requires_grad_(True)


def _set_train_mode(model: nn.Module, freeze_backbone: bool, net: nn.Module | None = None) -> None:
    (net if net is not None else model).train()  # ``net``: the DDP wrapper, when there is one
    if freeze_backbone:
        model.backbone.eval()  # frozen BN statistics too


# --------------------------------------------------------------------------------------------- the loop


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per epoch, atomically; columns are the union of the rows' keys (evaluation ones appear later)."""
    if not rows:
        return
    fields = list(rows[0])
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _report_fixes(name: str, fixes: dict[str, int]) -> None:
    done = {k: v for k, v in fixes.items() if v}
    if done:
        LOG.warning(
            "%s split: fixed while reading: %s", name, ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in done.items())
        )


def _save_batch_preview(batch: Batch, path: Path, config: ModelConfig, class_names: list[str]) -> None:
    """``train_batch0.jpg``: the first batch as the network gets it (augmented), with its target boxes.

    Wrong labels, boxes shifted by a bad format guess or lost by augmentation show at a glance, before hours of
    training. A file that cannot be written is a warning, never a reason to stop the run.
    """
    try:
        picture = draw_batch(batch.images, batch.targets, config.mean, config.std, class_names)
        with atomic_open(path, "wb") as f:
            picture.save(f, format="JPEG", quality=90)
    except OSError as e:
        LOG.warning("could not write %s: %s", path, e)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) and return the final summary: best AP, metrics of the last evaluation, paths.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), every process calls this and they train as one DDP job: gloo on
    CPU, NCCL on CUDA (device ``cuda:LOCAL_RANK``). All ranks return the same summary.
    """
    with distributed_session(cfg.device, resolve_device) as (env, device):
        quiet = logging.getLogger("efficientdet")
        level = quiet.level
        if not env.is_main:  # one copy of each message: rank 0 speaks for the job
            quiet.setLevel(logging.WARNING)
        # rank 0 alone writes TensorBoard logs; the event file is opened on the first write
        tb = TensorBoardLogger(Path(cfg.output) / TENSORBOARD_DIR) if cfg.tensorboard and env.is_main else None
        try:
            return _train(cfg, env, device, tb)
        finally:
            if tb is not None:
                tb.close()
            quiet.setLevel(level)


def _log_epoch(
    tb: TensorBoardLogger,
    row: dict[str, Any],
    model: EfficientDet,
    val_data: DetectionData | None,
    device: torch.device,
) -> None:
    """The epoch's metrics.csv row under ``epoch/`` (x: the epoch); after an evaluation (``val_data`` given) also the
    first validation images with ``model``'s detections, the same images every time so one sees them improve."""
    epoch = int(row["epoch"])
    tb.scalars("epoch", {k: v for k, v in row.items() if k != "epoch"}, epoch)
    if val_data is not None:
        tb.images("val/predictions", _draw_predictions(model, val_data.records[:TENSORBOARD_IMAGES], device), epoch)
    tb.flush()


def _draw_predictions(model: EfficientDet, records: list[ImageRecord], device: torch.device) -> list[np.ndarray]:
    """Each readable image of ``records`` with ``model``'s detections drawn (HxWx3 uint8).

    Predicted as validation predicts (``predict_records``: batches in the model's own memory layout; a
    channels-last model fed NCHW images, as ``inference.Detector`` feeds them, runs several times slower on CPU).
    """
    dets, _ = predict_records(model, records, device=device, score_threshold=TENSORBOARD_SCORE_THRESHOLD)
    drawn = []
    for record, det in zip(records, dets):
        try:
            image = load_image(record.path)
        except ImageReadError:
            continue  # validation has already reported it
        picture = draw_detections(image, det["boxes"], det["labels"], det["scores"], model.class_names)
        drawn.append(np.asarray(picture))
    return drawn


def _log_pr_curves(tb: TensorBoardLogger, evaluation: CocoEvaluation, epoch: int) -> None:
    """Each class's validation PR curve at IoU 0.5 (pycocotools' interpolated precision), under ``val/pr/``."""
    t = evaluation.iou_index(0.5)
    for k, name in enumerate(evaluation.class_names):
        tb.pr_curve(f"val/pr/{name}", evaluation.precision[t, :, k], evaluation.recall_thresholds, epoch)
    tb.flush()


def _check_validation_split(cfg: TrainConfig, val_data: Any, speak: bool) -> None:
    """An empty validation split is a mistake worth stopping for; one without boxes scores AP -1 (undefined)."""
    if not len(val_data):
        raise TrainingError(
            f"{cfg.data}: validation split {cfg.val_split!r} has no images; "
            "name another with --val-split, or --val-split none to train without evaluation"
        )
    if speak and not any(len(r.boxes) for r in val_data.records):
        LOG.warning(
            "validation split %r has %d images but no boxes: AP is undefined (-1) at every evaluation",
            cfg.val_split, len(val_data),
        )  # fmt: skip


def _rank_rng_state(env: DistEnv) -> list[dict[str, Any]] | None:
    """Every rank's RNG state (stochastic depth draws differ per rank), for an exact ``--resume`` under DDP."""
    return all_gather_objects(rng_state()) if env.distributed else None


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device, tb: TensorBoardLogger | None = None) -> dict[str, Any]:
    # every input is read and checked before the output folder exists: a failed start leaves nothing behind
    out = Path(cfg.output)
    seed_everything(cfg.seed)
    if cfg.data is None:
        raise TrainingError("no --data given (run `efficientdet demo` for a synthetic dataset)")
    train_data = read_dataset(cfg.data, cfg.format, cfg.train_split)
    if not len(train_data):
        raise TrainingError(f"{cfg.data}: split {cfg.train_split!r} has no images")
    if env.is_main:
        _report_fixes(cfg.train_split, train_data.fixes)
    val_data = read_dataset(cfg.data, cfg.format, cfg.val_split) if cfg.val_split else None
    if val_data is not None:
        _check_validation_split(cfg, val_data, env.is_main)
        if env.is_main:
            _report_fixes(cfg.val_split, val_data.fixes)
        val_data = val_data.with_class_names(train_data.class_names)

    model = build_model(cfg, train_data.class_names, train_data.category_ids).to(device)
    model.grad_checkpoint = cfg.grad_checkpoint
    if cfg.trainable_stages and not cfg.freeze_backbone:
        raise TrainingError("trainable_stages only applies with freeze_backbone (without it every stage trains)")
    if cfg.freeze_backbone:
        _freeze_backbone(model, cfg.trainable_stages)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]
    model_cfg = model.config
    size = model_cfg.image_size
    anchors = anchors_for_config(model_cfg, (size, size)).to(device)
    labeler = AnchorLabeler(anchors)
    if env.is_main:
        LOG.info(data_summary(train_data, cfg.train_split, model_cfg, size))

    dataset = DetectionDataset(
        train_data.records, size, model_cfg.mean, model_cfg.std, train=True, scale_range=tuple(cfg.scale_range),
        hflip=cfg.hflip, seed=cfg.seed,
    )  # fmt: skip
    if len(dataset) < env.world_size:
        raise TrainingError(f"{len(dataset)} training images for {env.world_size} processes: each needs one at least")
    global_batch = cfg.batch_size * env.world_size
    steps_per_epoch = max(1, len(dataset) // global_batch)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    peak_lr = cfg.lr if cfg.lr is not None else default_lr(global_batch)
    ema = ModelEma(model, cfg.ema_decay)  # plain BN: the EMA only ever evaluates
    if cfg.sync_bn and env.distributed:
        model = convert_sync_batchnorm(model, device)  # shares parameters and buffers with the EMA's source
    elif cfg.sync_bn:
        LOG.info("--sync-bn: a single process already normalises over its whole batch; nothing to synchronise")
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=peak_lr, momentum=MOMENTUM)
    use_amp, amp_dtype = amp_mode(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if env.is_main:  # inputs, model and options are fine: now the run may leave files
        out.mkdir(parents=True, exist_ok=True)
    if env.rank > 0:  # rank 0 keeps the single-process stream; the others draw their own stochastic depth masks
        seed_everything(cfg.seed + 100_003 * env.rank)

    start_epoch, step, best_ap, history, bad_total = 0, 0, -1.0, [], 0
    if cfg.resume:
        saved = read_file(cfg.resume)
        state = saved["train_state"]
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(saved["state_dict"])  # the file's main weights are the EMA weights
        ema.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best_ap = state["epoch"], state["step"], state["best_ap"]
        history, bad_total = list(state["history"]), state["skipped_steps"]
        saved_batch = state.get("global_batch", state["train_config"]["batch_size"])
        if saved_batch != global_batch:
            step = start_epoch * steps_per_epoch  # the schedule is per step: place it by epochs instead
            LOG.warning(
                "resuming with a global batch of %d (saved run: %d): the schedule continues at epoch %d, step %d",
                global_batch, saved_batch, start_epoch, step,
            )  # fmt: skip
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == env.world_size:
            set_rng_state(per_rank[env.rank])
        elif env.is_main:
            set_rng_state(state["rng"])
        else:
            seed_everything(cfg.seed + 100_003 * env.rank + start_epoch)
        LOG.info("resumed from %s at epoch %d (step %d)", cfg.resume, start_epoch, step)

    # DDP averages gradients over ranks; each rank's loss is its share of the global-batch loss (the normaliser
    # is global), so the loss is scaled by world_size to make the average the gradient of the global-batch loss.
    net: nn.Module = model
    if env.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    metrics_csv, last_path, best_path = out / "metrics.csv", out / "last.pt", out / "best.pt"
    last_metrics: dict[str, float] = {}
    class_names = train_data.class_names
    bad_streak = 0  # consecutive non-finite steps, across epoch boundaries
    preview = out / "train_batch0.jpg" if env.is_main and not cfg.resume else None  # a fresh run's first batch
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=GlobalBatchSampler(len(dataset), cfg.batch_size, env.rank, env.world_size, cfg.seed, epoch),
            # the loader draws its workers' base seed from this generator, not from the global RNG (whose stream
            # stochastic depth uses)
            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
            **loader_kwargs(cfg.workers),
        )
        _set_train_mode(model, cfg.freeze_backbone, net)
        sums = {"loss": 0.0, "cls_loss": 0.0, "box_loss": 0.0}
        n_steps, n_images, skipped_images = 0, 0, 0
        t0 = time.time()
        bar = progress_bar(loader, f"epoch {epoch + 1}/{cfg.epochs}", enabled=env.is_main, leave=False)
        for batch in bar:
            skipped_images += batch.skipped
            if not len(batch) and not env.distributed:
                continue
            if preview is not None and len(batch):
                _save_batch_preview(batch, preview, model_cfg, class_names)
                preview = None
            targets = labeler([{k: v.to(device) for k, v in t.items()} for t in batch.targets]) if len(batch) else None
            if env.distributed:
                # every rank takes part in every step or none does; the loss normaliser counts all ranks' positives
                positives = float(targets.num_positives.sum()) if targets is not None else 0.0
                local = torch.tensor([float(len(batch) > 0), positives], dtype=torch.float64)
                together = all_reduce_sum(local.to(device))
                if int(together[0]) < env.world_size:
                    continue  # some rank has no readable image in this step: all skip it
                targets = replace(targets, num_positives=together[1:].to(torch.float32))
            lr = lr_at(step, total_steps, warmup_steps, peak_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = batch.images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                cls_out, box_out = net(images)
            cls_flat, box_flat = flatten_outputs(cls_out, box_out, model_cfg.num_classes)
            losses = detection_loss(cls_flat, box_flat, targets, model_cfg.num_classes, box_weight=cfg.box_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(losses["loss"]))
            backward_done = False
            if finite or env.distributed:  # under DDP every rank runs backward (its collectives), then all decide
                loss = losses["loss"] * env.world_size if env.distributed else losses["loss"]
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                finite = finite and bool(torch.isfinite(grad_norm))
                backward_done = True
            parts = [losses[k].detach().float() for k in sums]
            step_images = len(batch)
            if env.distributed:  # one decision for all ranks, and the global-batch loss for the log
                stats = all_reduce_sum(torch.stack([torch.tensor(float(not finite), device=device), *parts,
                                                    torch.tensor(float(len(batch)), device=device)]))  # fmt: skip
                finite = float(stats[0]) == 0.0
                parts, step_images = list(stats[1:4]), int(stats[4])
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                if scaler.is_enabled() and backward_done:
                    scaler.update()  # fp16 overflow: the scaler lowers its scale and the step is skipped
                bad_streak += 1
                bad_total += 1
                if bad_streak >= MAX_BAD_STEPS:
                    raise TrainingError(
                        f"loss or gradients were NaN/inf for {bad_streak} consecutive steps (epoch {epoch + 1}); "
                        f"training stopped. Try a lower --lr, check the data for degenerate boxes, or --amp off."
                    )
                continue
            bad_streak = 0
            scaler.step(optimizer)
            scaler.update()
            ema.update(model)
            step += 1
            n_steps += 1
            n_images += step_images
            for k, v in zip(sums, parts):
                sums[k] += v.item()
            if tb is not None:  # train/loss, train/cls_loss, train/box_loss (global batch) and train/lr per step
                tb.scalars("train", {**{k: float(v) for k, v in zip(sums, parts)}, "lr": lr}, step)
            rate = n_images / max(1e-9, time.time() - t0)
            bar.set_postfix(loss=f"{sums['loss'] / n_steps:.4f}", cls=f"{sums['cls_loss'] / n_steps:.4f}",
                            box=f"{sums['box_loss'] / n_steps:.5f}", lr=f"{lr:.4g}", img_s=f"{rate:.1f}")  # fmt: skip
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        bar.close()
        elapsed = time.time() - t0
        if env.distributed:
            skipped_images = int(all_reduce_sum(torch.tensor([skipped_images], device=device))[0])
            # without SyncBN each rank's BN statistics follow its own images: the job's EMA is rank 0's
            broadcast_state(ema.module, buffers_only=True)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / max(1, n_steps),
            "train_cls_loss": sums["cls_loss"] / max(1, n_steps),
            "train_box_loss": sums["box_loss"] / max(1, n_steps),
            "lr": lr_at(max(0, step - 1), total_steps, warmup_steps, peak_lr),
            "images_per_s": n_images / max(1e-9, elapsed),
            "skipped_images": skipped_images,
            "skipped_steps": bad_total,
            "epoch_time_s": elapsed,
        }
        stop = cfg.max_steps is not None and step >= cfg.max_steps
        evaluate_now = val_data is not None and (
            (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs or stop
        )
        evaluation = None
        if evaluate_now:
            evaluation = evaluate_model(
                ema.module, val_data, size, cfg.batch_size, cfg.workers, device, distributed=env.distributed
            )
            last_metrics = evaluation.metrics
            row.update(last_metrics)
        history.append(row)
        summary = (
            f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f} (cls {row['train_cls_loss']:.4f}, "
            f"box {row['train_box_loss']:.5f})  lr {row['lr']:.4g}  {row['images_per_s']:.1f} img/s  {elapsed:.0f}s"
        )
        if skipped_images:
            summary += f"  skipped {skipped_images} unreadable image(s)"
        if evaluate_now:
            summary += "  | " + format_metrics(last_metrics)
        if env.is_main:
            print(summary, flush=True)
        improved = evaluate_now and last_metrics["AP"] > best_ap
        if improved:
            best_ap = last_metrics["AP"]
        rank_rngs = _rank_rng_state(env)
        if env.is_main:
            train_state = {
                "model": model.state_dict(),  # the raw weights; the EMA weights are the file's state_dict
                "ema_updates": ema.updates,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "best_ap": best_ap,
                "history": history,
                "skipped_steps": bad_total,
                "rng": rng_state(),
                "world_size": env.world_size,
                "global_batch": global_batch,
                "train_config": cfg.to_dict(),
            }
            if rank_rngs is not None:
                train_state["rng_per_rank"] = rank_rngs
            save_model(ema.module, last_path, class_names, train_state=train_state)
            if improved or (val_data is None and epoch + 1 == cfg.epochs):
                save_model(ema.module, best_path, class_names, metrics=dict(last_metrics))
            write_metrics_csv(metrics_csv, history)
            plot_training_metrics(str(metrics_csv), str(out / "metrics.png"))
            if tb is not None:
                _log_epoch(tb, row, ema.module, val_data if evaluate_now else None, device)
                if evaluation is not None:
                    _log_pr_curves(tb, evaluation.coco, epoch + 1)
            last_epoch = stop or epoch + 1 == cfg.epochs
            if evaluation is not None and last_epoch:  # why the final weights score what they score
                write_evaluation_plots(evaluation.coco, val_data, evaluation.detections, out / PLOTS_DIR)
        if stop:
            break
    if env.is_main and not best_path.exists():
        save_model(ema.module, best_path, class_names, metrics=dict(last_metrics))
    barrier()  # no rank returns before rank 0's files are there
    return {
        "best_ap": best_ap,
        "metrics": last_metrics,
        "last": str(last_path),
        "best": str(best_path),
        "epochs_done": len(history),
        "steps": step,
        "skipped_steps": bad_total,
    }


def resume_config(path: str, **changes: Any) -> TrainConfig:
    """The settings of the run saved in ``path`` (a ``last.pt``), with ``changes`` (e.g. more ``epochs``).

    Output defaults to the checkpoint's folder. Model, data and recipe come from the checkpoint so that the
    resumed run is the same run.
    """
    obj = read_file(path)
    if not isinstance(obj, dict) or "train_state" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint (no train_state); use --checkpoint to fine-tune")
    saved = dict(obj["train_state"]["train_config"])
    saved["scale_range"] = tuple(saved["scale_range"])
    saved["output"] = str(Path(path).parent)
    saved.update(changes, resume=str(path))
    return TrainConfig(**saved)


__all__ = ["TrainConfig", "TrainingError", "default_lr", "lr_at", "param_groups", "resume_config", "train"]
