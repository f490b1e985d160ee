"""A detection confusion matrix: which class each ground-truth box was found as, and what was never there.

COCO AP says *how much* a detector misses; the confusion matrix says *what*: a true class found as another class
(label mix-ups, look-alike classes), boxes never found (last column: missed) and detections with no object under
them (last row: false alarms). Detections above a score threshold are matched to ground-truth boxes one to one
at IoU >= 0.5, largest IoU first, whatever their classes, so a box found with the wrong label is a confusion, not a
miss plus a false alarm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.records import ImageRecord

CONFUSION_IOU = 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of x1y1x2y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (gt, detection) pairs at IoU >= ``threshold``, taken in order of decreasing IoU."""
    gi, di = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[gi, di], kind="stable")
    used_g, used_d, pairs = set(), set(), []
    for g, d in zip(gi[order], di[order]):
        if g not in used_g and d not in used_d:
            used_g.add(g)
            used_d.add(d)
            pairs.append((int(g), int(d)))
    return pairs


def confusion_matrix(
    records: Sequence[ImageRecord],
    detections: Sequence[dict],
    num_classes: int,
    score_threshold: float,
    iou_threshold: float = CONFUSION_IOU,
) -> np.ndarray:
    """Counts ``[K + 1, K + 1]``: row = true class, column = predicted class; index K is background.

    ``[t, p]`` counts ground-truth boxes of class t matched by a detection of class p; ``[t, K]`` boxes of class t
    that no detection matched (missed); ``[K, p]`` detections of class p that matched no box (false alarms).
    Crowd regions are neither boxes to find nor false alarms: detections on them are left out, as COCO does.
    ``detections`` are per record, in the records' pixels (``boxes``, ``scores``, 0-based ``labels``).
    """
    if len(detections) != len(records):
        raise ValueError(f"{len(detections)} detection entries for {len(records)} images")
    k = num_classes
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    for record, det in zip(records, detections):
        scores = _numpy(det["scores"], np.float64).reshape(-1)
        keep = scores >= score_threshold
        boxes = _numpy(det["boxes"], np.float64).reshape(-1, 4)[keep]
        labels = _numpy(det["labels"], np.int64).reshape(-1)[keep]
        crowd = np.asarray(record.iscrowd, dtype=bool).reshape(-1)
        if len(crowd) != len(record.labels):
            crowd = np.zeros(len(record.labels), dtype=bool)
        gt_boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
        if crowd.any() and len(boxes):  # detections on a crowd region count neither way
            on_crowd = (_iou(boxes, gt_boxes[crowd]) >= iou_threshold).any(1)
            boxes, labels = boxes[~on_crowd], labels[~on_crowd]
        gt_boxes, gt_labels = gt_boxes[~crowd], gt_labels[~crowd]
        pairs = _match(_iou(gt_boxes, boxes), iou_threshold) if len(gt_boxes) and len(boxes) else []
        for g, d in pairs:
            matrix[gt_labels[g], labels[d]] += 1
        found = {g for g, _ in pairs}
        used = {d for _, d in pairs}
        for g, label in enumerate(gt_labels):
            if g not in found:
                matrix[label, k] += 1
        for d, label in enumerate(labels):
            if d not in used:
                matrix[k, label] += 1
    return matrix
