"""COCO-protocol box metrics (AP, AP50, AP75, APs, APm, APl) computed by pycocotools.

The numbers are pycocotools' own so they can be compared with published results; this module only converts our
records and detections to COCO's JSON shapes, silences pycocotools' printing, and covers the inputs it cannot
take (an empty result list). Categories without ground truth keep pycocotools' ``-1`` meaning "undefined".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .atomic import atomic_open
from .data.records import DetectionData, ImageRecord

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _category_ids(num_classes: int, category_ids: Sequence[int] | None) -> list[int]:
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


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """COCO stores boxes as (x, y, width, height); ours are (x1, y1, x2, y2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _to_numpy(value: Any) -> np.ndarray:
    """Accept torch tensors (any device, with or without grad) as well as arrays and lists."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _record_annotations(record: ImageRecord, cat_ids: list[int], first_id: int) -> list[dict]:
    """One image's ground truth as COCO annotations; ids are consecutive from ``first_id``."""
    xywh = _xyxy_to_xywh(record.boxes)
    labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
    crowd = np.asarray(record.iscrowd, dtype=bool).reshape(-1)
    if len(crowd) == 0:  # a reader that leaves iscrowd empty means "nothing is crowd"
        crowd = np.zeros(len(labels), dtype=bool)
    if not len(xywh) == len(labels) == len(crowd):
        raise ValueError(f"image {record.image_id}: boxes, labels and iscrowd differ in length")
    annotations = []
    for i, (box, label, is_crowd) in enumerate(zip(xywh, labels, crowd)):
        x, y, w, h = (float(v) for v in box)
        annotations.append(
            {
                "id": first_id + i,
                "image_id": int(record.image_id),
                "category_id": cat_ids[int(label)],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": int(is_crowd),
            }
        )
    return annotations


def coco_ground_truth(
    records: Sequence[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int] | None = None
) -> dict:
    """A COCO-format ground-truth dict for ``records``, ready for ``COCO().dataset``.

    Annotation ids start at 1 because COCOeval uses id 0 to mean "unmatched". ``area`` is the box area (there
    are no masks), which is what decides the small/medium/large split.
    """
    cat_ids = _category_ids(len(class_names), category_ids)
    image_ids = [int(r.image_id) for r in records]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique across records")
    images = [
        {"id": int(r.image_id), "width": int(r.width), "height": int(r.height), "file_name": os.path.basename(r.path)}
        for r in records
    ]
    annotations: list[dict] = []
    for record in records:
        annotations += _record_annotations(record, cat_ids, first_id=len(annotations) + 1)
    categories = [{"id": cid, "name": str(name)} for cid, name in zip(cat_ids, class_names)]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


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
        category_ids = _category_ids(len(category_ids), category_ids)
    results: list[dict] = []
    for image_id, det in zip(image_ids, detections):
        labels = _to_numpy(det["labels"]).astype(np.int64).reshape(-1)
        xywh = _xyxy_to_xywh(_to_numpy(det["boxes"]))
        scores = _to_numpy(det["scores"]).astype(np.float64).reshape(-1)
        if not len(xywh) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: boxes, scores and labels differ in length")
        for box, score, category in zip(xywh, scores, _label_categories(labels, category_ids)):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": category,
                    "bbox": [round(float(v), 2) for v in box],
                    "score": float(score),
                }
            )
    return results


def _label_categories(labels: np.ndarray, category_ids: Sequence[int] | None) -> list[int]:
    """Map 0-based labels to COCO category ids (``label + 1`` when the dataset has no ids of its own)."""
    if len(labels) and labels.min() < 0:
        raise ValueError(f"negative label {labels.min()}")
    if category_ids is None:
        return [int(label) + 1 for label in labels]
    if len(labels) and labels.max() >= len(category_ids):
        raise ValueError(f"label {labels.max()} has no entry in category_ids (length {len(category_ids)})")
    return [int(category_ids[label]) for label in labels]


def _empty_results(coco_gt: COCO) -> COCO:
    """A result set with no detections; ``COCO.loadRes`` cannot build one (it indexes the first result)."""
    res = COCO()
    res.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}
    res.createIndex()
    return res


def coco_metrics(gt: dict, results: list[dict]) -> dict[str, float]:
    """The six headline COCO box metrics (``METRIC_KEYS``, from ``COCOeval.stats[0:6]``) of ``results`` on ``gt``.

    pycocotools reports ``-1.0`` for a metric that is undefined because no ground truth falls in it (e.g. APs on a
    dataset without small objects); it is kept as ``-1.0`` so the numbers match pycocotools and published tables.
    With no results at all every defined metric is ``0.0``: the empty result set still goes through COCOeval so the
    ``-1.0`` cases stay the same as for any other result list. Printing is captured, not shown.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        # COCOeval adds an "ignore" key to GT annotations and loadRes adds id/area/segmentation to results:
        # both get copies so the caller's dicts stay as they were (e.g. for writing them out afterwards)
        coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(evaluator.stats[i]) for i, key in enumerate(METRIC_KEYS)}


def _write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON atomically so readers never see half a file."""
    with atomic_open(path, "w") as f:
        json.dump(payload, f)


def evaluate_detections(
    data: DetectionData,
    detections: Sequence[dict],
    json_path: str | os.PathLike | None = None,
    detections_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """COCO metrics of ``detections`` (one dict per record, in record order) on ``data``; optionally saved.

    ``detections_path`` receives the COCO result list (what the COCO evaluation server takes); ``json_path``
    receives the metrics plus ``"detections"``: the path of that list, or null. The result list is written first,
    so a metrics file never points at a missing file. Category ids come from ``data.category_ids`` when the reader
    provides them, so results line up with the original annotation file.
    """
    if len(detections) != len(data.records):
        raise ValueError(f"{len(detections)} detection entries for {len(data.records)} images")
    category_ids = getattr(data, "category_ids", None)
    gt = coco_ground_truth(data.records, data.class_names, category_ids)
    results = detections_to_coco([r.image_id for r in data.records], detections, category_ids)
    metrics = coco_metrics(gt, results)
    if detections_path is not None:
        _write_json_atomic(detections_path, results)
    if json_path is not None:
        saved_path = None if detections_path is None else str(detections_path)
        _write_json_atomic(json_path, {**metrics, "detections": saved_path})
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """One log line in ``METRIC_KEYS`` order, e.g. ``AP 0.612 | AP50 0.921 | ... | APl 0.650``."""
    return " | ".join(f"{key} {float(metrics[key]):.3f}" for key in METRIC_KEYS if key in metrics)
