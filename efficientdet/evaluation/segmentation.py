"""Scoring a segmentation model: mIoU, pixel accuracy and per-class IoU at the masks' own resolution.

Used by training (each evaluation of the EMA weights) and by ``efficientdet eval --task segmentation``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data.segmentation import SegmentationData, SegmentationDataset, loader_kwargs
from ..inference.segmenter import Segmenter
from ..models.segmenter import EfficientDetSegmentation
from ..utils.device import amp_mode, as_device
from .segmentation_metrics import ConfusionMatrix

DEFAULT_IGNORE_INDEX = 255  # VOC's convention and the most common one; CamVid (SegNet) uses 11


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
    The masks are a :class:`~efficientdet.inference.Segmenter`'s (:meth:`Segmenter.predict_tensor`), the ones
    ``efficientdet predict`` writes; this function only reads the data and counts. The model's training mode is
    restored afterwards.
    """
    device = as_device(device)
    k = num_classes if num_classes is not None else model.config.num_classes
    if k != model.config.num_classes:
        raise ValueError(f"the model predicts {model.config.num_classes} classes, the evaluation asks for {k}")
    size = img_size or model.config.image_size
    cfg = model.config
    dataset = SegmentationDataset(data.pairs, k, ignore_index, size, cfg.mean, cfg.std, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_kwargs(workers))
    use_amp, amp_dtype = amp_mode(amp, device)
    confusion = ConfusionMatrix(k)
    was_training = model.training  # the Segmenter puts the model in eval mode
    segmenter = Segmenter(model, device=device, image_size=size, amp_dtype=amp_dtype if use_amp else None)
    try:
        for batch in loader:
            masks = segmenter.predict_tensor(batch.images, batch.sizes, batch.target_sizes)
            targets = batch.targets.to(device)
            for i, (mask, (th, tw)) in enumerate(zip(masks, batch.target_sizes)):
                confusion.update(mask, targets[i, :th, :tw])
    finally:
        model.train(was_training)
    return confusion.compute()


__all__ = ["DEFAULT_IGNORE_INDEX", "evaluate_segmentation"]
