"""Segmentation metrics from one confusion matrix: per-class IoU, mean IoU and pixel accuracy.

The standard protocol (Pascal VOC, Cityscapes, CamVid): a ``K x K`` confusion matrix accumulated over every valid
pixel of the split (ignored pixels are skipped), then ``IoU_c = TP / (TP + FP + FN)``. A class that appears in
neither the predictions nor the ground truth has no IoU (NaN): it is left out of the mean instead of counting as
0 or 1, so a split that lacks a class is not penalised or flattered for it. A class predicted but absent from the
ground truth has IoU 0 and does count.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data.segmentation import IGNORE


class ConfusionMatrix:
    """Accumulates ``counts[target, prediction]`` over batches (int64, on the device of the first update)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction`` and ``target``: class ids of the same shape; target pixels equal to IGNORE are skipped."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        valid = target != IGNORE
        t = target[valid].long()
        p = prediction[valid].long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(f"target ids must be in 0..{self.num_classes - 1} or {IGNORE} (ignored)")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.num_classes):
            raise ValueError(f"predicted ids must be in 0..{self.num_classes - 1}")
        k = self.num_classes
        binned = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        self.counts = self.counts.to(binned.device) + binned

    def compute(self) -> dict[str, Any]:
        return metrics_from_confusion(self.counts)


def metrics_from_confusion(counts: torch.Tensor) -> dict[str, Any]:
    """``{"mIoU", "pixel_acc", "per_class_iou"}``; NaN where a value is undefined (see the module docstring)."""
    c = counts.double().cpu()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp  # FP + FN + TP
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    total = c.sum()
    return {
        "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": [float(v) for v in iou],
    }


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN -> None (JSON ``null``): ``json.dumps`` would otherwise write ``NaN``, which strict parsers reject."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in metrics.items()}


def format_metrics(metrics: dict[str, Any], class_names: list[str] | None = None) -> str:
    """One line: mIoU, pixel accuracy and the per-class IoUs (``-`` for a class absent from the split)."""
    ious = metrics["per_class_iou"]
    names = class_names if class_names and len(class_names) == len(ious) else [str(i) for i in range(len(ious))]
    per_class = " ".join(f"{n}={'-' if math.isnan(v) else f'{100 * v:.1f}'}" for n, v in zip(names, ious))
    return f"mIoU {100 * metrics['mIoU']:.2f}%  pixel acc {100 * metrics['pixel_acc']:.2f}%  | {per_class}"
