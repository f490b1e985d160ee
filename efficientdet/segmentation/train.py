"""Training and evaluation of the segmentation variant: per-pixel cross-entropy, mIoU after every epoch.

The recipe is the detector's (SPEC 7, ``efficientdet.train``): SGD with momentum 0.9, linear warm-up then cosine
decay, weight decay on conv/linear weights only, gradient clipping, EMA weights for evaluation and checkpoints,
optional bf16/fp16 autocast. What differs is the loss (cross-entropy over valid pixels, the ignore index and the
augmentation padding excluded), the augmentation (flip + scale jitter + crop applied to image and mask together)
and the metric (mIoU, pixel accuracy and per-class IoU; ``best.pt`` is the best mIoU). ``last.pt`` is written
atomically every epoch with everything ``--resume`` needs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..factory import save_model
from ..fields import check_fields, increasing_pair, int_at_least, number_in, one_of
from ..plot import plot_segmentation_metrics
from ..progress import progress_bar
from ..tensorboard_log import TensorBoardLogger
from ..train import (
    TENSORBOARD_DIR,
    ModelEma,
    TrainingError,
    _freeze_backbone,
    _set_train_mode,
    amp_mode,
    lr_at,
    param_groups,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    write_metrics_csv,
)
from ..weights import CheckpointError, load_weights, read_checkpoint, read_file
from .data import (
    DEFAULT_SCALE_RANGE,
    IGNORE,
    SegmentationData,
    SegmentationDataset,
    check_masks,
    loader_kwargs,
    mask_statistics,
    read_segmentation_split,
)
from .metrics import ConfusionMatrix, format_metrics
from .model import EfficientDetSegmentation, SegmentationConfig, create_segmentation_model, get_segmentation_config

LOG = logging.getLogger(__name__)

BASE_BATCH = 64
# Peak learning rate per 64 images: the detector's default (3x the paper's 0.08, i.e. 0.03 at batch 8), which
# measured best for fine-tuning a fresh BiFPN and head over tens of epochs (README, raccoon). Not tuned separately
# for segmentation; the dense per-pixel loss is, if anything, the more stable of the two.
DEFAULT_LR_PER_64 = 0.24
MOMENTUM = 0.9
WEIGHT_DECAY = 4e-5  # SPEC 6
CLIP_NORM = 10.0  # SPEC 7
EMA_DECAY = 0.9998  # SPEC 7, with ModelEma's warm-up so that short runs work
MAX_BAD_STEPS = 20
DEFAULT_IGNORE_INDEX = 255  # VOC's convention and the most common one; CamVid (SegNet) uses 11


@dataclass
class SegTrainConfig:
    """Every option of `efficientdet train --task segmentation`."""

    model: str = "efficientdet-seg-lite0"
    num_classes: int | None = None  # required unless resuming or the data's class names say it
    ignore_index: int | None = DEFAULT_IGNORE_INDEX  # None: every id is a class
    train_images: str | None = None
    train_masks: str | None = None
    val_images: str | None = None
    val_masks: str | None = None
    data: str | None = None  # a VOC root (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)
    train_split: str = "train"
    val_split: str | None = "val"
    class_names: list[str] | None = None
    epochs: int = field(default=50, metadata=int_at_least(1))
    batch_size: int = field(default=8, metadata=int_at_least(1))
    # longer side at evaluation / scale 1 (default: the model's own)
    img_size: int | None = field(default=None, metadata=int_at_least(1, optional=True))
    crop_size: int | None = field(default=None, metadata=int_at_least(1, optional=True))  # default: img_size
    output: str = "runs/segment"
    # None: DEFAULT_LR_PER_64 * batch_size / 64
    lr: float | None = field(default=None, metadata=number_in(0, low_open=True, optional=True))
    warmup_epochs: float = field(default=1.0, metadata=number_in(0))
    weight_decay: float = field(default=WEIGHT_DECAY, metadata=number_in(0))
    scale_range: tuple[float, float] = field(default=DEFAULT_SCALE_RANGE, metadata=increasing_pair(0.0))
    hflip: float = field(default=0.5, metadata=number_in(0, 1))
    # Per-class loss weights: None (plain cross-entropy), "median-freq" (SegNet's median frequency balancing,
    # computed from the training masks) or one weight per class. Rare, thin classes (poles, signs) otherwise
    # contribute almost nothing to the loss and to what the model learns, and they weigh as much as roads in mIoU.
    class_weights: str | list[float] | None = None
    ema_decay: float = field(default=EMA_DECAY, metadata=number_in(0, 1, high_open=True))
    clip_norm: float = field(default=CLIP_NORM, metadata=number_in(0, low_open=True))
    pretrained_backbone: bool = False
    checkpoint: str | None = None
    resume: str | None = None
    freeze_backbone: bool = False
    workers: int = field(default=2, metadata=int_at_least(0))
    seed: int = 0
    device: str = "auto"
    amp: str = field(default="auto", metadata=one_of(("auto", "off", "bf16", "fp16")))
    eval_interval: int = field(default=1, metadata=int_at_least(1))
    eval_batch_size: int | None = field(default=None, metadata=int_at_least(1, optional=True))  # default: batch_size
    # NHWC tensors: oneDNN's depthwise convs run ~1.5-2x faster in training on CPU (measured on this project's
    # machine, EfficientNet-Lite0 at 320 px); the weights and the checkpoints are the same either way.
    channels_last: bool = True
    max_steps: int | None = field(default=None, metadata=int_at_least(1, optional=True))
    tensorboard: bool = False  # scalars in OUTPUT/tensorboard: loss and lr per step, the metrics.csv row per epoch
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scale_range = tuple(self.scale_range)  # type: ignore[assignment]  # lists from JSON / old checkpoints
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scale_range"] = list(self.scale_range)
        return d


# --------------------------------------------------------------------------------------------- pieces


def segmentation_loss(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the valid pixels of the batch (0 when none is valid, instead of 0/0 = NaN).

    With ``class_weights`` the mean is weighted: each pixel counts with its class's weight, in the sum and in
    the normaliser (as ``F.cross_entropy(weight=...)``'s mean), so the loss's scale does not depend on the weights.
    """
    loss = F.cross_entropy(logits.float(), targets, weight=class_weights, ignore_index=IGNORE, reduction="sum")
    valid = targets != IGNORE
    if class_weights is None:
        return loss / valid.sum().clamp(min=1)
    return loss / class_weights[targets[valid]].sum().clamp(min=1e-12)


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


def _read_split(cfg: SegTrainConfig, images: str | None, masks: str | None, split: str | None) -> SegmentationData:
    return read_segmentation_split(images, masks, cfg.data if images is None else None, split)


def build_segmentation_model(cfg: SegTrainConfig, num_classes: int) -> EfficientDetSegmentation:
    """Fresh, from ImageNet backbone weights, or from a checkpoint (another class count: head re-initialised)."""
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
    settings.update(overrides, num_classes=num_classes)
    model = EfficientDetSegmentation(get_segmentation_config(stored.name).replace(**settings))
    state = ckpt.state_dict
    if stored.num_classes != num_classes:
        LOG.info("%s: %d classes -> %d: head output re-initialised", cfg.checkpoint, stored.num_classes, num_classes)
        own = model.state_dict()
        state = {k: (own[k] if k.startswith("head.predict.") else v) for k, v in state.items()}
    load_weights(model, state, source=str(cfg.checkpoint))
    return model


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_segmentation(
    model: EfficientDetSegmentation,
    data: SegmentationData,
    num_classes: int | None = None,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    img_size: int | None = None,
    batch_size: int = 4,
    workers: int = 0,
    device: str | torch.device = "cpu",
    amp: str = "off",
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of ``model`` on ``data``, at the masks' own resolution.

    Each image is resized so its longer side is ``img_size`` (default: the model's), the logits are upsampled
    back to the original mask size and compared there, so the score does not depend on the input scale chosen.
    """
    device = torch.device(device)
    k = num_classes if num_classes is not None else model.config.num_classes
    if k != model.config.num_classes:
        raise ValueError(f"the model predicts {model.config.num_classes} classes, the evaluation asks for {k}")
    size = img_size or model.config.image_size
    cfg = model.config
    dataset = SegmentationDataset(data.pairs, k, ignore_index, size, cfg.mean, cfg.std, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_kwargs(workers))
    use_amp, amp_dtype = amp_mode(amp, device)
    confusion = ConfusionMatrix(k)
    was_training = model.training
    model.eval()
    for batch in loader:
        images = batch.images.to(device)
        if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = model(images)
        targets = batch.targets.to(device)
        for i, ((h, w), (th, tw)) in enumerate(zip(batch.sizes, batch.target_sizes)):
            one = logits[i : i + 1, :, :h, :w].float()
            if (h, w) != (th, tw):
                one = F.interpolate(one, size=(th, tw), mode="bilinear", align_corners=False)
            confusion.update(one[0].argmax(0), targets[i, :th, :tw])
    model.train(was_training)
    return confusion.compute()


# --------------------------------------------------------------------------------------------- the loop


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


def train_segmentation(cfg: SegTrainConfig) -> dict[str, Any]:
    """Train (or resume) and return the summary: best mIoU, the last evaluation's metrics, checkpoint paths."""
    tb = TensorBoardLogger(Path(cfg.output) / TENSORBOARD_DIR) if cfg.tensorboard else None
    try:
        return _train_segmentation(cfg, tb)
    finally:
        if tb is not None:
            tb.close()


def _train_segmentation(cfg: SegTrainConfig, tb: TensorBoardLogger | None) -> dict[str, Any]:
    out = Path(cfg.output)  # created once the inputs are read and checked: a failed start leaves nothing behind
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    train_data = _read_split(cfg, cfg.train_images, cfg.train_masks, cfg.train_split)
    val_data = None
    if cfg.val_images is not None or cfg.val_masks is not None or (cfg.data is not None and cfg.val_split):
        val_data = _read_split(cfg, cfg.val_images, cfg.val_masks, cfg.val_split)
    num_classes = cfg.num_classes
    if num_classes is None:
        names = cfg.class_names or train_data.class_names
        if names is None:
            raise TrainingError("give --num-classes (the number of class ids in the masks, the ignore index aside)")
        num_classes = len(names)
    class_names = _class_names(cfg, train_data, num_classes)
    t0 = time.time()
    counts, present_pixels = mask_statistics(train_data, num_classes, cfg.ignore_index)
    if val_data is not None:
        check_masks(val_data, num_classes, cfg.ignore_index)
    LOG.info("checked %d train%s masks in %.1fs; train pixels per class: %s", len(train_data),
             f" + {len(val_data)} val" if val_data is not None else "", time.time() - t0,
             ", ".join(f"{n} {c / max(1, counts.sum()):.1%}" for n, c in zip(class_names, counts)))  # fmt: skip
    class_weights = resolve_class_weights(cfg.class_weights, counts, present_pixels, class_names)
    if class_weights is not None:
        LOG.info("loss weights per class: %s", ", ".join(f"{n} {w:.2f}" for n, w in zip(class_names, class_weights)))
        class_weights = class_weights.to(device)

    model = build_segmentation_model(cfg, num_classes).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]
    model.class_names = class_names
    if cfg.freeze_backbone:
        _freeze_backbone(model)
    mcfg = model.config
    dataset = SegmentationDataset(
        train_data.pairs, num_classes, cfg.ignore_index, mcfg.image_size, mcfg.mean, mcfg.std, train=True,
        crop_size=cfg.crop_size, scale_range=tuple(cfg.scale_range), hflip=cfg.hflip, seed=cfg.seed,
    )  # fmt: skip
    steps_per_epoch = max(1, len(dataset) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    peak_lr = cfg.lr if cfg.lr is not None else DEFAULT_LR_PER_64 * cfg.batch_size / BASE_BATCH
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=peak_lr, momentum=MOMENTUM)
    ema = ModelEma(model, cfg.ema_decay)
    use_amp, amp_dtype = amp_mode(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    out.mkdir(parents=True, exist_ok=True)

    start_epoch, step, best_miou, history, bad_total = 0, 0, -1.0, [], 0
    if cfg.resume:
        saved = read_file(cfg.resume)
        state = saved["train_state"]
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(saved["state_dict"])
        ema.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best_miou = state["epoch"], state["step"], state["best_miou"]
        history, bad_total = list(state["history"]), state["skipped_steps"]
        set_rng_state(state["rng"])
        LOG.info("resumed from %s at epoch %d (step %d)", cfg.resume, start_epoch, step)

    metrics_csv, last_path, best_path = out / "metrics.csv", out / "last.pt", out / "best.pt"
    last_metrics: dict[str, Any] = {}
    extra = {"task": "segmentation", "ignore_index": cfg.ignore_index}
    bad_streak = 0
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) >= cfg.batch_size,
            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch), **loader_kwargs(cfg.workers),
        )  # fmt: skip
        _set_train_mode(model, cfg.freeze_backbone)
        loss_sum, n_steps, n_images = 0.0, 0, 0
        t0 = time.time()
        bar = progress_bar(loader, f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for batch in bar:
            lr = lr_at(step, total_steps, warmup_steps, peak_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = batch.images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            targets = batch.targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(images)
            loss = segmentation_loss(logits, targets, class_weights)
            optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            if finite:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                finite = bool(torch.isfinite(grad_norm))
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                if scaler.is_enabled():
                    scaler.update()
                bad_streak += 1
                bad_total += 1
                if bad_streak >= MAX_BAD_STEPS:
                    raise TrainingError(
                        f"loss or gradients were NaN/inf for {bad_streak} consecutive steps (epoch {epoch + 1}); "
                        f"training stopped. Try a lower --lr or --amp off."
                    )
                continue
            bad_streak = 0
            scaler.step(optimizer)
            scaler.update()
            ema.update(model)
            step += 1
            n_steps += 1
            n_images += len(batch)
            loss_value = loss.item()
            loss_sum += loss_value
            if tb is not None:
                tb.scalars("train", {"loss": loss_value, "lr": lr}, step)
            rate = n_images / max(1e-9, time.time() - t0)
            bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}", lr=f"{lr:.4g}", img_s=f"{rate:.1f}")
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        bar.close()
        elapsed = time.time() - t0
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(1, n_steps),
            "lr": lr_at(max(0, step - 1), total_steps, warmup_steps, peak_lr),
            "images_per_s": n_images / max(1e-9, elapsed),
            "skipped_steps": bad_total,
            "epoch_time_s": elapsed,
        }
        stop = cfg.max_steps is not None and step >= cfg.max_steps
        evaluate_now = val_data is not None and (
            (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs or stop
        )
        summary = (
            f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  lr {row['lr']:.4g}  "
            f"{row['images_per_s']:.1f} img/s  {elapsed:.0f}s"
        )
        if evaluate_now:
            te = time.time()
            last_metrics = evaluate_segmentation(
                ema.module, val_data, num_classes, cfg.ignore_index, None, cfg.eval_batch_size or cfg.batch_size,
                cfg.workers, device, cfg.amp,
            )  # fmt: skip
            row.update({"mIoU": last_metrics["mIoU"], "pixel_acc": last_metrics["pixel_acc"]})
            row.update({f"iou_{n}": v for n, v in zip(class_names, last_metrics["per_class_iou"])})
            row["eval_time_s"] = time.time() - te
            summary += "  | " + format_metrics(last_metrics, class_names)
        history.append(row)
        print(summary, flush=True)
        improved = evaluate_now and math.isfinite(last_metrics["mIoU"]) and last_metrics["mIoU"] > best_miou
        if improved:
            best_miou = last_metrics["mIoU"]
        train_state = {
            "model": model.state_dict(),
            "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "best_miou": best_miou,
            "history": history,
            "skipped_steps": bad_total,
            "rng": rng_state(),
            "train_config": cfg.to_dict(),
        }
        save_model(ema.module, last_path, class_names, train_state=train_state, **extra)  # type: ignore[arg-type]
        if improved or (val_data is None and epoch + 1 == cfg.epochs):
            save_model(ema.module, best_path, class_names, metrics=dict(last_metrics), **extra)  # type: ignore[arg-type]
        write_metrics_csv(metrics_csv, history)
        plot_segmentation_metrics(metrics_csv, out / "metrics.png")
        if tb is not None:
            tb.scalars("epoch", {k: v for k, v in row.items() if k != "epoch"}, epoch + 1)
            tb.flush()
        if stop:
            break
    if not best_path.exists():
        save_model(ema.module, best_path, class_names, metrics=dict(last_metrics), **extra)  # type: ignore[arg-type]
    return {
        "best_miou": best_miou,
        "metrics": last_metrics,
        "last": str(last_path),
        "best": str(best_path),
        "epochs_done": len(history),
        "steps": step,
        "skipped_steps": bad_total,
    }


def resume_segmentation_config(path: str, **changes: Any) -> SegTrainConfig:
    """The settings of the run saved in ``path`` (a segmentation ``last.pt``), with ``changes``."""
    obj = read_file(path)
    if not isinstance(obj, dict) or "train_state" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint (no train_state); use --checkpoint to fine-tune")
    if obj.get("task") != "segmentation":
        raise CheckpointError(f"{path}: a detection training checkpoint; resume it without --task segmentation")
    saved = dict(obj["train_state"]["train_config"])
    saved["scale_range"] = tuple(saved["scale_range"])
    saved["output"] = str(Path(path).parent)
    saved.update(changes, resume=str(path))
    return SegTrainConfig(**saved)


__all__ = [
    "SegTrainConfig",
    "evaluate_segmentation",
    "resume_segmentation_config",
    "resolve_class_weights",
    "segmentation_loss",
    "train_segmentation",
]
