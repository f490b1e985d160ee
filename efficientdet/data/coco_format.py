"""COCO's JSON conventions for boxes and classes: [x, y, w, h] boxes, category ids, result entries.

Shared by evaluation (pycocotools reads these) and prediction (``detections.json`` is a COCO results file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def category_ids_for(num_classes: int, category_ids: Sequence[int] | None) -> list[int]:
    """COCO category id per class index: the dataset's own ids when known, else ``label + 1`` (COCO ids start at 1).

    A negative id marks a class the split's annotation file does not define (``DetectionData.with_class_names``
    writes -1 there); such classes get unused ids above the largest known one so categories stay distinct. They
    have no ground truth in the split, so pycocotools leaves them out of the averages.
    """
    if category_ids is None:
        return list(range(1, num_classes + 1))
    ids = [int(c) for c in category_ids]
    if len(ids) != num_classes:
        raise ValueError(f"category_ids has {len(ids)} entries but there are {num_classes} classes")
    known = [c for c in ids if c >= 0]
    if len(set(known)) != len(known):
        raise ValueError(f"category_ids must be unique, got {ids}")
    spare = iter(range(max(known, default=0) + 1, max(known, default=0) + 1 + num_classes))
    return [c if c >= 0 else next(spare) for c in ids]


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """COCO stores boxes as (x, y, width, height); ours are (x1, y1, x2, y2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def to_numpy(value: Any) -> np.ndarray:
    """Accept torch tensors (any device, with or without grad) as well as arrays and lists."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def detections_to_coco(
    image_ids: Sequence[int], detections: Sequence[dict], category_ids: Sequence[int] | None = None
) -> list[dict]:
    """COCO result entries for per-image detections (``boxes`` x1y1x2y2, ``scores``, 0-based ``labels``).

    Boxes are rounded to 0.01 px to keep result files small (far below any IoU that matters); scores keep full
    precision because rounding them would create ties that reorder the precision/recall curve.
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids but {len(detections)} detection entries")
    if category_ids is not None:
        category_ids = category_ids_for(len(category_ids), category_ids)
    results: list[dict] = []
    for image_id, det in zip(image_ids, detections):
        labels = to_numpy(det["labels"]).astype(np.int64).reshape(-1)
        xywh = xyxy_to_xywh(to_numpy(det["boxes"]))
        scores = to_numpy(det["scores"]).astype(np.float64).reshape(-1)
        if not len(xywh) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: boxes, scores and labels differ in length")
        for box, score, category in zip(xywh, scores, label_categories(labels, category_ids)):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": category,
                    "bbox": [round(float(v), 2) for v in box],
                    "score": float(score),
                }
            )
    return results


def label_categories(labels: np.ndarray, category_ids: Sequence[int] | None) -> list[int]:
    """Map 0-based labels to COCO category ids (``label + 1`` when the dataset has no ids of its own)."""
    if len(labels) and labels.min() < 0:
        raise ValueError(f"negative label {labels.min()}")
    if category_ids is None:
        return [int(label) + 1 for label in labels]
    if len(labels) and labels.max() >= len(category_ids):
        raise ValueError(f"label {labels.max()} has no entry in category_ids (length {len(category_ids)})")
    return [int(category_ids[label]) for label in labels]
