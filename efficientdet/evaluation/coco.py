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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco_format import category_ids_for, detections_to_coco, xyxy_to_xywh  # noqa: F401  (re-exported)
from ..data.records import DetectionData, ImageRecord
from ..utils.atomic import atomic_open

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_MAX_DETECTIONS = 100  # the detections an image COCO's evaluation scores (its maxDets' last entry)
DENSE_MAX_DETECTIONS = (300, 1000, 3000)  # for images holding more objects (300: LVIS' and ultralytics' cap)


def _record_annotations(record: ImageRecord, cat_ids: list[int], first_id: int) -> list[dict]:
    """One image's ground truth as COCO annotations; ids are consecutive from ``first_id``."""
    xywh = xyxy_to_xywh(record.boxes)
    labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
    crowd = np.asarray(record.iscrowd, dtype=bool).reshape(-1)
    if len(crowd) == 0:  # a reader that leaves iscrowd empty means "nothing is crowd"
        crowd = np.zeros(len(labels), dtype=bool)
    if not len(xywh) == len(labels) == len(crowd):
        raise ValueError(f"image {record.image_id}: boxes, labels and iscrowd differ in length")
    areas = xywh[:, 2] * xywh[:, 3]
    if record.areas is not None:
        if len(record.areas) != len(labels):
            raise ValueError(f"image {record.image_id}: {len(record.areas)} areas for {len(labels)} boxes")
        areas = np.asarray(record.areas, dtype=np.float64)
    annotations = []
    for i, (box, label, is_crowd, area) in enumerate(zip(xywh, labels, crowd, areas)):
        x, y, w, h = (float(v) for v in box)
        annotations.append(
            {
                "id": first_id + i,
                "image_id": int(record.image_id),
                "category_id": cat_ids[int(label)],
                "bbox": [x, y, w, h],
                "area": float(area),
                "iscrowd": int(is_crowd),
            }
        )
    return annotations


def coco_ground_truth(
    records: Sequence[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int] | None = None
) -> dict:
    """A COCO-format ground-truth dict for ``records``, ready for ``COCO().dataset``.

    Annotation ids start at 1 because COCOeval uses id 0 to mean "unmatched". ``area``, which decides the
    small/medium/large split, is the annotation's own where the dataset has one (COCO: the mask's area, as the
    official evaluation uses), else the box area.
    """
    cat_ids = category_ids_for(len(class_names), category_ids)
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


def _empty_results(coco_gt: COCO) -> COCO:
    """A result set with no detections; ``COCO.loadRes`` cannot build one (it indexes the first result)."""
    res = COCO()
    res.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}
    res.createIndex()
    return res


# COCOeval's accumulated arrays are indexed [iou threshold, recall point, category, area range, max detections];
# area range 0 is "all" and the last max-detections entry is 100, the setting of the headline AP
_AREA_ALL = 0
_MAX_DETS_100 = -1


@dataclass
class CocoEvaluation:
    """pycocotools' verdict on one split: the headline metrics, a per-class table and the accumulated arrays.

    Everything per class is read from ``COCOeval.eval`` after ``accumulate()`` (the same arrays ``summarize()``
    averages), so the per-class numbers are pycocotools' own and the headline AP is their mean over defined classes.
    ``precision`` and ``scores`` are ``[iou threshold, recall point, class]`` in ``class_names`` order at area "all"
    and ``max_dets`` detections per image: the precision reached at each recall point and the score threshold that
    reaches it; -1 marks points that are undefined (no ground truth) or not reached.
    """

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    class_names: list[str]
    precision: np.ndarray
    scores: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    max_dets: int = COCO_MAX_DETECTIONS  # detections an image scored

    def iou_index(self, iou: float) -> int:
        """Position of the IoU threshold ``iou`` (0.5, 0.55, ..., 0.95) in the arrays."""
        hits = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
        if not len(hits):
            raise ValueError(f"IoU {iou} is not one of the evaluated thresholds {self.iou_thresholds.tolist()}")
        return int(hits[0])


def recall_key(max_dets: int) -> str:
    """The per-class recall's name: COCO's ``AR100``, or ``AR300`` ... where more detections an image are scored."""
    return f"AR{max_dets}"


def _mean_defined(values: np.ndarray) -> float:
    """pycocotools' average: over the entries that are not -1, or -1 when there are none."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _per_class_table(
    evaluator: COCOeval, gt: dict, results: list[dict], class_names: Sequence[str], cat_ids: list[int]
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Per-class AP, AP50, AP75, AR (``AR100``: at maxDets' last entry, ``AR<n>`` when that is not 100) and box
    counts, plus the precision/score arrays in class order."""
    params = evaluator.params
    column = {cid: i for i, cid in enumerate(params.catIds)}
    order = [column[cid] for cid in cat_ids]
    precision = evaluator.eval["precision"][:, :, order, _AREA_ALL, _MAX_DETS_100]
    scores = evaluator.eval["scores"][:, :, order, _AREA_ALL, _MAX_DETS_100]
    recall = evaluator.eval["recall"][:, order, _AREA_ALL, _MAX_DETS_100]
    t50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.75))[0])
    gt_boxes = Counter(a["category_id"] for a in gt["annotations"] if not a.get("iscrowd", 0))
    detections = Counter(r["category_id"] for r in results)
    table = []
    for k, (name, cid) in enumerate(zip(class_names, cat_ids)):
        table.append(
            {
                "class": str(name),
                "category_id": int(cid),
                "AP": _mean_defined(precision[:, :, k]),
                "AP50": _mean_defined(precision[t50, :, k]),
                "AP75": _mean_defined(precision[t75, :, k]),
                recall_key(params.maxDets[-1]): _mean_defined(recall[:, k]),
                "gt_boxes": int(gt_boxes.get(cid, 0)),
                "detections": int(detections.get(cid, 0)),
            }
        )
    return table, precision, scores


def coco_evaluation(gt: dict, results: list[dict], max_dets: int = COCO_MAX_DETECTIONS) -> CocoEvaluation:
    """Run pycocotools on ``results`` against ``gt``: headline metrics, per-class table and arrays.

    ``max_dets``: the detections an image that count, COCO's 100 by default; a dataset whose images hold more objects
    needs more (pycocotools' third ``maxDets`` entry, which its AP and AR headline read).

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
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {key: float(evaluator.stats[i]) for i, key in enumerate(METRIC_KEYS)}
    # summarize() reads its first figure, AP, at 100 detections whatever maxDets holds (-1 when 100 is not there);
    # the others at maxDets' last entry. AP is recomputed the way summarize() does, at that entry.
    precision = evaluator.eval["precision"][:, :, :, _AREA_ALL, _MAX_DETS_100]
    metrics["AP"] = _mean_defined(precision)
    names = [c["name"] for c in gt["categories"]]
    cat_ids = [int(c["id"]) for c in gt["categories"]]
    table, precision, scores = _per_class_table(evaluator, gt, results, names, cat_ids)
    return CocoEvaluation(
        metrics, table, names, precision, scores, np.asarray(evaluator.params.iouThrs),
        np.asarray(evaluator.params.recThrs), max_dets,
    )  # fmt: skip


def densest_objects(records: Sequence[ImageRecord]) -> int:
    """The most objects (crowd regions aside) any image of ``records`` holds."""
    return max((len(r.boxes) - int(np.count_nonzero(r.iscrowd)) for r in records), default=0)


def detections_to_keep(records: Sequence[ImageRecord]) -> int:
    """How many detections an image the evaluation keeps and scores: COCO's 100, unless an image of ``records`` holds
    more objects (crowd regions aside), where 100 would cap its recall below 1 whatever the model; then the first of
    DENSE_MAX_DETECTIONS that covers the densest image."""
    densest = densest_objects(records)
    if densest <= COCO_MAX_DETECTIONS:
        return COCO_MAX_DETECTIONS
    return next((k for k in DENSE_MAX_DETECTIONS if k >= densest), DENSE_MAX_DETECTIONS[-1])


def dense_evaluation_line(max_dets: int, records: Sequence[ImageRecord]) -> str:
    """The line that says why an evaluation scores more than COCO's 100 detections an image."""
    densest = densest_objects(records)
    return (f"evaluation: up to {max_dets} detections an image (COCO's {COCO_MAX_DETECTIONS} would cap recall: an "
            f"image holds {densest} objects)")  # fmt: skip


def coco_metrics(gt: dict, results: list[dict]) -> dict[str, float]:
    """The six headline COCO box metrics (``METRIC_KEYS``, from ``COCOeval.stats[0:6]``) of ``results`` on ``gt``."""
    return coco_evaluation(gt, results).metrics


def _write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON atomically so readers never see half a file."""
    with atomic_open(path, "w") as f:
        json.dump(payload, f)


def evaluate_split(
    data: DetectionData,
    detections: Sequence[dict],
    json_path: str | os.PathLike | None = None,
    detections_path: str | os.PathLike | None = None,
    unreadable_images: int = 0,
    max_dets: int = COCO_MAX_DETECTIONS,
) -> CocoEvaluation:
    """pycocotools on ``detections`` (one dict per record, in record order, annotation pixels) for ``data``.

    ``detections_path`` receives the COCO result list (what the COCO evaluation server takes); ``json_path``
    receives the metrics, the per-class table, the count of images that could not be read (their boxes count as
    missed) and ``"detections"``: the path of that list, or null. The result list is written first, so a metrics
    file never points at a missing file. Category ids come from ``data.category_ids`` when the reader provides
    them, so results line up with the original annotation file.
    """
    if len(detections) != len(data.records):
        raise ValueError(f"{len(detections)} detection entries for {len(data.records)} images")
    category_ids = getattr(data, "category_ids", None)
    gt = coco_ground_truth(data.records, data.class_names, category_ids)
    results = detections_to_coco([r.image_id for r in data.records], detections, category_ids)
    evaluation = coco_evaluation(gt, results, max_dets)
    if detections_path is not None:
        _write_json_atomic(detections_path, results)
    if json_path is not None:
        saved_path = None if detections_path is None else str(detections_path)
        payload = {
            **evaluation.metrics,
            "per_class": evaluation.per_class,
            "images": len(data.records),
            "unreadable_images": int(unreadable_images),
            "detections": saved_path,
        }
        _write_json_atomic(json_path, payload)
    return evaluation


def evaluate_detections(
    data: DetectionData,
    detections: Sequence[dict],
    json_path: str | os.PathLike | None = None,
    detections_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """The headline metrics of :func:`evaluate_split` (same files written)."""
    return evaluate_split(data, detections, json_path, detections_path).metrics


def format_per_class(evaluation: CocoEvaluation) -> str:
    """A fixed-width table, one row per class: AP, AP50, AP75, AR (at ``max_dets``), ground-truth boxes, detections.

    Undefined entries (a class without ground truth in the split) show as ``-``.
    """
    width = max([5, *(len(row["class"]) for row in evaluation.per_class)])
    ar = recall_key(evaluation.max_dets)
    header = f"{'class':<{width}s}  {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {ar:>6s} {'boxes':>7s} {'dets':>7s}"
    lines = [header]
    for row in evaluation.per_class:
        cells = " ".join(f"{row[k]:6.3f}" if row[k] > -1 else f"{'-':>6s}" for k in ("AP", "AP50", "AP75", ar))
        lines.append(f"{row['class']:<{width}s}  {cells} {row['gt_boxes']:7d} {row['detections']:7d}")
    return "\n".join(lines)


def format_metrics(metrics: dict[str, float]) -> str:
    """One log line in ``METRIC_KEYS`` order, e.g. ``AP 0.612 | AP50 0.921 | ... | APl 0.650``."""
    return " | ".join(f"{key} {float(metrics[key]):.3f}" for key in METRIC_KEYS if key in metrics)
