"""Training targets: match anchors to ground-truth boxes, vectorised over anchors and boxes.

Official matching: IoU >= 0.5 positive, < 0.5 negative, and every ground-truth box is force-matched to its best
anchor. Crowd boxes never become targets; anchors that would match one are ignored (no loss at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .anchors import encode_boxes

MATCH_IOU = 0.5  # the official matcher: positive at IoU >= 0.5, negative below (no ignore band)
NEGATIVE = -1  # class target of a background anchor
IGNORE = -2  # class target of an anchor that contributes no loss


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[len(a), len(b)]`` of x1y1x2y2 boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


@dataclass
class Targets:
    """Per-anchor targets for a batch: ``cls`` [B, A] (class, NEGATIVE or IGNORE), ``box`` [B, A, 4] codes."""

    cls: torch.Tensor
    box: torch.Tensor
    num_positives: torch.Tensor  # [B]


class AnchorLabeler:
    """Assigns each anchor a class target and a box regression target."""

    def __init__(self, anchors_yxyx: torch.Tensor, match_iou: float = MATCH_IOU) -> None:
        self.anchors_yxyx = anchors_yxyx
        self.anchors_xyxy = anchors_yxyx[:, [1, 0, 3, 2]]
        self.match_iou = match_iou

    def label_image(
        self, boxes: torch.Tensor, labels: torch.Tensor, iscrowd: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Targets for one image. ``boxes`` x1y1x2y2 input pixels, ``labels`` 0-based."""
        n = self.anchors_xyxy.shape[0]
        device = self.anchors_xyxy.device
        cls = torch.full((n,), NEGATIVE, dtype=torch.long, device=device)
        box = torch.zeros((n, 4), dtype=torch.float32, device=device)
        crowd = torch.zeros(len(boxes), dtype=torch.bool, device=device) if iscrowd is None else iscrowd.bool()
        real = ~crowd
        if crowd.any():
            crowd_iou = box_iou(self.anchors_xyxy, boxes[crowd]).amax(1)
            cls[crowd_iou >= self.match_iou] = IGNORE
        boxes, labels = boxes[real], labels[real]
        if len(boxes) == 0:
            return cls, box, 0
        iou = box_iou(self.anchors_xyxy, boxes)  # [A, G]
        best_iou, best_gt = iou.max(1)
        positive = best_iou >= self.match_iou
        # force-match: each box takes its best anchor. An anchor that is the best of several boxes goes to the
        # first of them, as in the official matcher (argmax over a one-hot of the forced matches). The smallest
        # box index per anchor is taken explicitly: an indexed assignment with repeated indices has no defined order.
        forced = iou.argmax(0)  # [G]
        num_boxes = len(boxes)
        first_box = torch.full((n,), num_boxes, dtype=torch.long, device=device)
        first_box.scatter_reduce_(0, forced, torch.arange(num_boxes, device=device), reduce="amin")
        is_forced = first_box < num_boxes
        best_gt = torch.where(is_forced, first_box, best_gt)
        positive |= is_forced
        cls[positive] = labels[best_gt[positive]]
        matched = boxes[best_gt[positive]][:, [1, 0, 3, 2]]  # to y1x1y2x2 for the coder
        box[positive] = encode_boxes(matched, self.anchors_yxyx[positive])
        return cls, box, int(positive.sum())

    def __call__(self, targets: list[dict[str, torch.Tensor]]) -> Targets:
        """Batch of per-image dicts with ``boxes``, ``labels`` and optionally ``iscrowd``."""
        cls, box, npos = zip(*(self.label_image(t["boxes"], t["labels"], t.get("iscrowd")) for t in targets))
        return Targets(torch.stack(cls), torch.stack(box), torch.tensor(npos, dtype=torch.float32))
