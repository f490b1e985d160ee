"""From raw network outputs to detections: top-k over anchor x class, box decoding, per-class NMS (SPEC 8).

Plain torch; torchvision's NMS kernel is used when it is importable (same results, faster).
"""

from __future__ import annotations

import torch

from .anchors import decode_boxes

try:  # optional accelerator, never required
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # noqa: BLE001 - any import problem just means "not available"
    _tv_batched_nms = None

TOPK_CANDIDATES = 5000  # SPEC 8: top 5000 (anchor, class) scores
MAX_DETECTIONS = 100  # SPEC 8: 100 detections kept per image
NMS_IOU = 0.5  # effdet's default hard-NMS threshold


def flatten_outputs(
    class_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level NCHW outputs -> ``[B, anchors, num_classes]`` logits and ``[B, anchors, 4]`` box codes.

    Anchor order is level, y, x, anchor: the order of :func:`efficientdet.anchors.generate_anchors`.
    """
    b = class_outputs[0].shape[0]
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1, num_classes) for c in class_outputs], 1)
    box = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in box_outputs], 1)
    return cls, box


def to_original_pixels(boxes: torch.Tensor, scale: float = 1.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Undo the pre-processing resize (``scale`` = input px per original px) and clip to the image (H, W).

    A size of 0 or ``None`` (unknown) clips only at 0.
    """
    boxes = boxes / scale
    h, w = size if size is not None else (None, None)
    x = boxes[:, 0::2].clamp(0, w or None)
    y = boxes[:, 1::2].clamp(0, h or None)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def box_iou_one_to_many(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one (x1, y1, x2, y2) box against ``[N, 4]`` boxes (areas as torchvision computes them)."""
    x1 = torch.maximum(box[0], boxes[:, 0])
    y1 = torch.maximum(box[1], boxes[:, 1])
    x2 = torch.minimum(box[2], boxes[:, 2])
    y2 = torch.minimum(box[3], boxes[:, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    iou_threshold: float = NMS_IOU,
    max_keep: int | None = None,
) -> torch.Tensor:
    """Greedy hard NMS within each class; indices of kept boxes in decreasing score order.

    A box is suppressed by a higher-scoring kept box of the same class with IoU > ``iou_threshold``.
    Stops once ``max_keep`` boxes are kept, so the cost is O(kept x N) without an N x N matrix.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if _tv_batched_nms is not None:
        keep = _tv_batched_nms(boxes.float(), scores.float(), classes, iou_threshold)
        return keep if max_keep is None else keep[:max_keep]
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, classes = boxes[order].float(), classes[order]
    alive = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    limit = len(order) if max_keep is None else max_keep
    while len(keep) < limit:
        candidates = torch.nonzero(alive)
        if candidates.numel() == 0:
            break
        i = int(candidates[0, 0])
        keep.append(i)
        alive[i] = False
        overlap = box_iou_one_to_many(boxes[i], boxes) > iou_threshold
        alive &= ~(overlap & (classes == classes[i]))
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def postprocess(
    class_outputs: list[torch.Tensor],
    box_outputs: list[torch.Tensor],
    anchors: torch.Tensor,
    num_classes: int,
    topk: int = TOPK_CANDIDATES,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    score_threshold: float = 0.0,
) -> list[dict[str, torch.Tensor]]:
    """Detections per image: ``boxes`` (x1, y1, x2, y2, input pixels), ``scores``, ``labels`` (0-based)."""
    cls, box = flatten_outputs(class_outputs, box_outputs, num_classes)
    results = []
    for logits, codes in zip(cls, box):
        k = min(topk, logits.numel())
        top_logits, flat_idx = torch.topk(logits.reshape(-1), k)
        anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
        labels = flat_idx % num_classes
        scores = torch.sigmoid(top_logits.float())
        boxes = decode_boxes(codes[anchor_idx].float(), anchors[anchor_idx].to(codes.device))
        if score_threshold > 0:
            mask = scores >= score_threshold
            boxes, scores, labels = boxes[mask], scores[mask], labels[mask]
        keep = batched_nms(boxes, scores, labels, iou_threshold, max_det)
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results
