"""Semantic segmentation as a training task: per-pixel cross-entropy, mIoU as the metric (paper section 5.2).

What differs from detection is only here: the loss (cross-entropy over valid pixels, the ignore index and the
augmentation padding excluded, optionally class-weighted), the augmentation (flip + scale jitter + crop applied to
image and mask together) and the metric (mIoU, pixel accuracy and per-class IoU; ``best.pt`` is the best mIoU).
The loop, recipe, DDP, SyncBN, gradient checkpointing, frozen stages, EMA and AMP are the engine's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...data.segmentation import (
    DEFAULT_SCALE_RANGE,
    IGNORE,
    SegmentationData,
    SegmentationDataset,
    check_masks,
    loader_kwargs,
    mask_ids,
    mask_statistics,
    read_segmentation_split,
)
from ...evaluation.segmentation import DEFAULT_IGNORE_INDEX, evaluate_segmentation
from ...evaluation.segmentation_metrics import format_metrics
from ...models.segmenter import (
    EfficientDetSegmentation,
    SegmentationConfig,
    create_segmentation_model,
    get_segmentation_config,
)
from ...models.weights import CheckpointError, load_weights, read_checkpoint
from ...utils.distributed import DistEnv, all_reduce_sum
from ...utils.fields import increasing_pair, int_at_least, option, optional_int
from ...viz.plot import plot_segmentation_metrics
from ..recipe import RecipeConfig
from ..trainer import Task
from ..utils import TrainingError, shared_images_line

LOG = logging.getLogger(__name__)


@dataclass
class SegTrainConfig(RecipeConfig):
    """Every option of `efficientdet train --task segmentation`."""

    model: str = "efficientdet-seg-lite0"
    data: str | None = field(
        default=None,
        metadata=option(
            "a VOC root (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/) or a folder of train/ + "
            "trainannot/, val/ + valannot/; or give --train-images/--train-masks (--resume: the run's own data at "
            "a new path)",
            resume=True,
        ),
    )
    num_classes: int | None = field(  # required unless resuming or the data's class names say it
        default=None,
        metadata=option(
            "number of classes (ids 0..K-1 in the masks)",
            int_at_least(1, optional=True),
            default_text="from the data's class names",
        ),
    )
    ignore_index: int | None = field(
        default=DEFAULT_IGNORE_INDEX,
        metadata=option(
            "mask value excluded from loss and metrics ('none': every id is a class; CamVid: 11)", parse=optional_int
        ),
    )
    train_images: str | None = field(default=None, metadata=option("folder of training images (paired by stem)"))
    train_masks: str | None = field(default=None, metadata=option("folder of training label PNGs (class id/pixel)"))
    val_images: str | None = field(default=None, metadata=option("folder of validation images"))
    val_masks: str | None = field(default=None, metadata=option("folder of validation label PNGs"))
    class_names: list[str] | None = field(default=None, metadata=option("class names", cli=False))
    # The CamVid benchmark's settings (chosen on CamVid val, README): 80 epochs from the ImageNet backbone with
    # median-frequency class weights (53.4% against 45.2% mIoU at 20 epochs with plain cross-entropy)
    epochs: int = field(default=80, metadata=int_at_least(1))
    # img_size: longer side at evaluation / scale 1 (default: the model's own)
    crop_size: int | None = field(
        default=None,
        metadata=option("training crop", int_at_least(1, optional=True), default_text="--img-size"),
    )
    output: str = "runs/segment"
    scale_range: tuple[float, float] = field(default=DEFAULT_SCALE_RANGE, metadata=increasing_pair(0.0))
    # Per-class loss weights: None (plain cross-entropy), "median-freq" (SegNet's median frequency balancing,
    # computed from the training masks) or one weight per class. Rare, thin classes (poles, signs) otherwise
    # contribute almost nothing to the loss and to what the model learns, and they weigh as much as roads in mIoU.
    class_weights: str | list[float] | None = field(
        default="median-freq",
        metadata=option(
            "loss weight per class: 'median-freq' (SegNet's median frequency balancing, from the "
            "training masks), 'none' or K comma-separated numbers",
            metavar="SPEC",
        ),
    )
    pretrained_backbone: bool = True
    eval_batch_size: int | None = field(
        default=None,
        metadata=option("images per evaluation batch", int_at_least(1, optional=True), default_text="--batch-size"),
    )


# --------------------------------------------------------------------------------------------- loss


def pixel_weight(targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss normaliser before clamping: the valid pixels, or their summed class weights."""
    valid = targets != IGNORE
    if class_weights is None:
        return valid.sum()
    return class_weights[targets[valid]].sum()


def _clamped(weight: torch.Tensor, weighted: bool) -> torch.Tensor:
    return weight.clamp(min=1e-12) if weighted else weight.clamp(min=1)


def segmentation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    normaliser: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the valid pixels of the batch (0 when none is valid, instead of 0/0 = NaN).

    With ``class_weights`` the mean is weighted: each pixel counts with its class's weight, in the sum and in
    the normaliser (as ``F.cross_entropy(weight=...)``'s mean), so the loss's scale does not depend on the weights.
    ``normaliser``: the :func:`pixel_weight` of the global batch under DDP (default: of ``targets``).
    """
    loss = F.cross_entropy(logits.float(), targets, weight=class_weights, ignore_index=IGNORE, reduction="sum")
    if normaliser is None:
        normaliser = pixel_weight(targets, class_weights)
    return loss / _clamped(normaliser, class_weights is not None)


def resolve_class_weights(
    spec: str | list[float] | None, counts: Any, present_pixels: Any, class_names: list[str] | None = None
) -> torch.Tensor | None:
    """The loss weights that ``SegTrainConfig.class_weights`` names, from the training masks' statistics.

    ``"median-freq"`` is SegNet's median frequency balancing (Badrinarayanan et al., after Eigen & Fergus):
    ``freq_c = pixels of c / pixels of the images where c occurs`` and ``w_c = median(freq) / freq_c``. A class
    absent from the training masks gets weight 1 (it has no pixels to weigh). With an even number of classes
    present, the median is the lower of the two middle frequencies (``torch.median``), not their mean.
    """
    k = len(counts)
    name = spec.lower() if isinstance(spec, str) else None
    if spec is None or name == "none":
        return None
    if name == "median-freq":
        counts_t = torch.as_tensor(counts, dtype=torch.float64)
        present_t = torch.as_tensor(present_pixels, dtype=torch.float64)
        seen = counts_t > 0
        if not bool(seen.any()):
            raise ValueError("class weights 'median-freq': the training masks have no labelled pixel")
        freq = counts_t[seen] / present_t[seen]
        weights = torch.ones(k, dtype=torch.float64)
        weights[seen] = freq.median() / freq
        return weights.float()
    if isinstance(spec, str):
        try:
            spec = [float(x) for x in spec.replace(",", " ").split()]
        except ValueError:
            raise ValueError(
                f"class weights {spec!r}: expected 'median-freq', 'none' or {k} numbers separated by commas"
            ) from None
    if len(spec) != k or any(not math.isfinite(w) or w < 0 for w in spec) or not any(w > 0 for w in spec):
        names = f" ({', '.join(class_names)})" if class_names else ""
        raise ValueError(f"class weights {list(spec)}: need {k} finite weights >= 0, not all 0, one per class{names}")
    return torch.tensor([float(w) for w in spec], dtype=torch.float32)


# --------------------------------------------------------------------------------------------- model and data


def build_segmentation_model(cfg: SegTrainConfig, num_classes: int) -> EfficientDetSegmentation:
    """Fresh, from ImageNet backbone weights, or from a checkpoint (another class count: a fresh head output)."""
    overrides = dict(cfg.model_overrides)
    if cfg.img_size:
        overrides["image_size"] = cfg.img_size
    if not cfg.checkpoint:
        return create_segmentation_model(
            cfg.model, num_classes=num_classes, pretrained_backbone=cfg.pretrained_backbone, **overrides
        )
    ckpt = read_checkpoint(cfg.checkpoint)
    if ckpt.config is None or "head_channels" not in ckpt.config:
        raise CheckpointError(f"{cfg.checkpoint}: not an efficientdet segmentation checkpoint")
    stored = SegmentationConfig.from_dict(ckpt.config)
    settings = stored.to_dict()
    settings.pop("paper_flops", None)
    settings.update(overrides)
    model = EfficientDetSegmentation(get_segmentation_config(stored.name).replace(**settings))
    load_weights(model, ckpt.state_dict, source=str(cfg.checkpoint))
    if stored.num_classes != num_classes:
        LOG.info("%s: %d classes -> %d: head output re-initialised", cfg.checkpoint, stored.num_classes, num_classes)
        model.reset_head(num_classes)
    return model


def _class_count_hint(ids: list[int], ignore_index: int | None) -> str:
    """What the training masks' ids say about ``--num-classes``: the count they imply, and the other reading when the
    last id may mark unlabelled pixels (CamVid's void is 11, after its 11 classes)."""
    aside = f" ({ignore_index}, the ignore index, aside)" if ignore_index in ids else ""
    ids = [i for i in ids if i != ignore_index]
    if not ids:
        return f"the training masks hold no id but the ignore index {ignore_index}"
    contiguous = len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1))
    shown = f"ids {ids[0]}-{ids[-1]}" if contiguous else f"id{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
    hint = f"the training masks hold {shown}{aside}; --num-classes {ids[-1] + 1} trains each as a class"
    if len(ids) > 1:
        last = ids[-1]
        hint += (f", or, if {last} marks unlabelled pixels (as CamVid's void does), --num-classes {last} "
                 f"--ignore-index {last}")  # fmt: skip
    return hint


def _read_split(cfg: SegTrainConfig, images: str | None, masks: str | None, split: str | None) -> SegmentationData:
    return read_segmentation_split(images, masks, cfg.data if images is None else None, split)


def _class_names(cfg: SegTrainConfig, data: SegmentationData, num_classes: int) -> list[str]:
    if cfg.class_names is not None:
        names = list(cfg.class_names)
    elif data.class_names is not None and len(data.class_names) == num_classes:
        names = list(data.class_names)
    else:
        if data.class_names is not None:
            LOG.warning("%s: class file lists %d names, but num_classes=%d; numbering the classes instead",
                        data.source, len(data.class_names), num_classes)  # fmt: skip
        names = [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise TrainingError(f"{len(names)} class names given for num_classes={num_classes}")
    return names


class SegmentationTask(Task):
    """Image + mask pairs (folders, or a VOC root); best.pt is the best mIoU of the EMA weights."""

    name = "segmentation"
    metric = "mIoU"

    def __init__(self, cfg: SegTrainConfig, env: DistEnv, device: torch.device) -> None:
        super().__init__(cfg, env, device)
        self.val_data: SegmentationData | None = None
        self.class_weights: torch.Tensor | None = None

    def read_data(self) -> None:
        cfg = self.cfg
        train_data = _read_split(cfg, cfg.train_images, cfg.train_masks, cfg.train_split)
        val_data = None
        if cfg.val_images is not None or cfg.val_masks is not None or (cfg.data is not None and cfg.val_split):
            val_data = _read_split(cfg, cfg.val_images, cfg.val_masks, cfg.val_split)
            shared = shared_images_line(
                f"--val-images {cfg.val_images}" if cfg.val_images else f"validation split {cfg.val_split!r}",
                [pair.image for pair in val_data.pairs],
                f"--train-images {cfg.train_images}" if cfg.train_images else f"the training split {cfg.train_split!r}",
                [pair.image for pair in train_data.pairs],
            )
            if shared and self.env.is_main:
                LOG.warning(shared)
        num_classes = cfg.num_classes
        if num_classes is None:
            names = cfg.class_names or train_data.class_names
            if names is None:
                raise TrainingError("give --num-classes (the number of class ids in the masks, the ignore index "
                                    f"aside): {_class_count_hint(mask_ids(train_data), cfg.ignore_index)}")  # fmt: skip
            num_classes = len(names)
        class_names = _class_names(cfg, train_data, num_classes)
        t0 = time.time()
        counts, present_pixels = mask_statistics(train_data, num_classes, cfg.ignore_index)
        if val_data is not None:
            check_masks(val_data, num_classes, cfg.ignore_index)
        LOG.info("checked %d train%s masks in %.1fs; train pixels per class: %s", len(train_data),
                 f" + {len(val_data)} val" if val_data is not None else "", time.time() - t0,
                 ", ".join(f"{n} {c / max(1, counts.sum()):.1%}" for n, c in zip(class_names, counts)))  # fmt: skip
        weights = resolve_class_weights(cfg.class_weights, counts, present_pixels, class_names)
        if weights is not None:
            LOG.info("loss weights per class: %s", ", ".join(f"{n} {w:.2f}" for n, w in zip(class_names, weights)))
            weights = weights.to(self.device)
        self.train_data, self.val_data, self.class_weights = train_data, val_data, weights
        self.num_classes, self.class_names = num_classes, class_names

    def training_files(self) -> list[str]:
        return [pair.image for pair in self.train_data.pairs]

    def build_model(self) -> nn.Module:
        model = build_segmentation_model(self.cfg, self.num_classes)
        model.class_names = self.class_names
        return model

    def train_dataset(self, model: nn.Module) -> Dataset:
        cfg, mcfg = self.cfg, model.config
        return SegmentationDataset(
            self.train_data.pairs, self.num_classes, cfg.ignore_index, mcfg.image_size, mcfg.mean, mcfg.std,
            train=True, crop_size=cfg.crop_size, scale_range=tuple(cfg.scale_range), hflip=cfg.hflip, seed=cfg.seed,
            reduced_decoding=cfg.reduced_decoding,
        )  # fmt: skip

    def loader_kwargs(self, workers: int) -> dict[str, Any]:
        return loader_kwargs(workers)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"task": "segmentation", "ignore_index": self.cfg.ignore_index}

    def plot(self, csv_path: Path, png_path: Path) -> None:
        plot_segmentation_metrics(csv_path, png_path)

    def prepare(self, batch: Any) -> Any | None:
        images = batch.images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = batch.targets.to(self.device, non_blocking=True)
        normaliser = None
        if self.env.distributed:  # the mean over the global batch's valid pixels: count them on every rank
            normaliser = all_reduce_sum(pixel_weight(targets, self.class_weights).double().reshape(1))[0].float()
        return images, targets, normaliser

    def loss(self, net: nn.Module, prepared: Any, autocast: Callable[[], Any]) -> dict[str, torch.Tensor]:
        images, targets, normaliser = prepared
        with autocast():
            logits = net(images)
        return {"loss": segmentation_loss(logits, targets, self.class_weights, normaliser)}

    def evaluate(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """In float32 whatever the training's --amp, as detection's and `eval`'s: the score best.pt is chosen by and
        stored with is the one `eval` gives it (bf16 moved mIoU by about 0.05 points on a short run)."""
        cfg = self.cfg
        metrics = evaluate_segmentation(
            model, self.val_data, self.num_classes, cfg.ignore_index, None, cfg.eval_batch_size or cfg.batch_size,
            cfg.workers, self.device,
        )  # fmt: skip
        row = {"mIoU": metrics["mIoU"], "pixel_acc": metrics["pixel_acc"]}
        row.update({f"iou_{n}": v for n, v in zip(self.class_names, metrics["per_class_iou"])})
        return metrics, row

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        return format_metrics(metrics, self.class_names)

    def summary(self, best: float) -> dict[str, Any]:
        return {"best_miou": best}


__all__ = [
    "SegTrainConfig",
    "SegmentationTask",
    "build_segmentation_model",
    "pixel_weight",
    "resolve_class_weights",
    "segmentation_loss",
]
