"""Dataset and anchor diagnostics: the numbers behind ``efficientdet check-data`` and the data line ``train`` logs.

"The loss goes down but AP stays low" is nearly always the data: boxes on the wrong class, empty images, boxes in
the wrong scale, or objects whose shape no anchor fits. The official matcher makes an anchor positive at IoU >= 0.5
and force-matches every box that has no such anchor to its best one, so a thin or tiny box still trains, but from
an anchor it barely overlaps: a large regression target and a single weak positive, and it is then detected
poorly. Everything here comes from the annotations alone (no image is opened): counts per split and class, box
sizes at the network's input size, the best anchor IoU of every box, and an anchor set (aspect ratios, anchor
scale) that covers more of the training boxes.

Sizes are those evaluation sees: a box in annotation pixels times ``min(S / height, S / width)``, the scale that
fits the annotated image into the S x S input.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.readers import DatasetError, coco_folder_splits, read_dataset, single_set
from ..data.records import DetectionData
from ..models.config import ModelConfig, aspect_pairs, aspect_ratio_values, get_config
from ..ops.anchors import anchors_for_config, feature_sizes
from ..ops.labeler import MATCH_IOU
from ..utils.atomic import atomic_open
from ..utils.text import counted
from ..utils.threads import torch_threads
from .coco import COCO_MAX_DETECTIONS, densest_objects, detections_to_keep

DEFAULT_SPLITS = ("train", "val", "test", "trainval")
IOU_BIN_EDGES = tuple(i / 10 for i in range(11))  # best-anchor IoU histogram: 0-0.1, 0.1-0.2, ..., 0.9-1.0
QUANTILES = (("min", 0.0), ("p5", 0.05), ("median", 0.5), ("p95", 0.95), ("max", 1.0))
# The anchor-scale search: the official models use 3 (Lite0-2) to 5 (D7); the grid brackets that widely.
SCALE_GRID = tuple(1.0 + 0.25 * i for i in range(29))  # 1.0, 1.25, ..., 8.0
# A proposal is recommended only when it covers this many more boxes (as a share) than the model's defaults:
# smaller gains are within what a different split or a few relabelled boxes would change.
RECOMMEND_MARGIN = 0.02
PROPOSAL_MAX_BOXES = 50_000  # the search uses a fixed random subset of larger training sets: the share is stable
PRINTED_UNCOVERED = 20
REPORT_WIDTH = 116  # the long explanations are wrapped to this many columns
BOX_CHUNK = 8192  # boxes per step of the IoU computation: bounds memory on COCO-sized splits


# --------------------------------------------------------------------------------------------- boxes at input size


@dataclass
class InputBoxes:
    """The non-crowd boxes of a split at the input size, and the image each comes from."""

    boxes: np.ndarray  # [N, 4] float32 x1y1x2y2, input pixels
    labels: np.ndarray  # [N] int64
    images: np.ndarray  # [N] int64 index into the split's records

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]


def input_scale(width: int, height: int, image_size: int) -> float:
    """Input pixels per annotation pixel: the resize that fits a width x height image into image_size squared."""
    return min(image_size / height, image_size / width)


def input_boxes(data: DetectionData, image_size: int) -> InputBoxes:
    """Every non-crowd box of ``data`` scaled to the input size (crowd regions never become targets)."""
    boxes, labels, images = [], [], []
    for index, record in enumerate(data.records):
        keep = ~record.iscrowd.astype(bool) if len(record.iscrowd) else np.ones(len(record.boxes), bool)
        if record.width <= 0 or record.height <= 0 or not keep.any():
            continue  # an unreadable image keeps no boxes (its record says size 0)
        scale = input_scale(record.width, record.height, image_size)
        boxes.append(record.boxes[keep].astype(np.float32) * np.float32(scale))
        labels.append(record.labels[keep].astype(np.int64))
        images.append(np.full(int(keep.sum()), index, np.int64))
    if not boxes:
        return InputBoxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return InputBoxes(np.concatenate(boxes), np.concatenate(labels), np.concatenate(images))


# --------------------------------------------------------------------------------------------- best anchor IoU


def _nearest(centres: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the centre nearest to each value (``centres`` ascending)."""
    if len(centres) == 1:
        return np.zeros(len(values), np.int64)
    right = np.clip(np.searchsorted(centres, values), 1, len(centres) - 1)
    left_is_nearer = (values - centres[right - 1]) <= (centres[right] - values)
    return np.where(left_is_nearer, right - 1, right)


def _paired_iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of ``boxes [G, 1, 4]`` with ``anchors [G, K, 4]`` (x1y1x2y2, float32): the labeler's arithmetic."""
    lt = np.maximum(boxes[..., :2], anchors[..., :2])
    rb = np.minimum(boxes[..., 2:], anchors[..., 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_b = np.prod(np.clip(boxes[..., 2:] - boxes[..., :2], 0, None), axis=-1)
    area_a = np.prod(np.clip(anchors[..., 2:] - anchors[..., :2], 0, None), axis=-1)
    return inter / np.maximum(area_a + area_b - inter, np.float32(1e-9))


def best_anchor_iou(boxes: np.ndarray | torch.Tensor, config: ModelConfig, image_size: int) -> np.ndarray:
    """The highest IoU of each x1y1x2y2 box (input pixels) with any anchor of ``config`` at ``image_size`` px.

    Equal to the maximum over all anchors (~50k at 512 px; tests check it) at the cost of 5 levels x 9 shapes per
    box: the overlap of two intervals only shrinks as their centres move apart, so for each anchor shape the best
    anchor is the one whose centre is nearest to the box centre in x and, separately, in y. NumPy rather than torch:
    on these small arrays torch's thread pool costs more than the arithmetic (~20x on a busy 2-core machine).
    """
    size = (image_size, image_size)
    anchors = anchors_for_config(config, size).numpy()[:, [1, 0, 3, 2]]  # x1y1x2y2, float32
    per_cell = config.num_anchors
    grids, start = [], 0
    for fh, fw in feature_sizes(size, config.min_level, config.max_level):
        grid = anchors[start : start + fh * fw * per_cell].reshape(fh, fw, per_cell, 4)
        start += fh * fw * per_cell
        grids.append((grid, (grid[0, :, 0, 0] + grid[0, :, 0, 2]) / 2, (grid[:, 0, 0, 1] + grid[:, 0, 0, 3]) / 2))
    if start != len(anchors):
        raise RuntimeError("the anchor layout is not level, y, x, shape: best_anchor_iou needs updating")
    boxes_np = (boxes.detach().cpu().numpy() if torch.is_tensor(boxes) else np.asarray(boxes)).astype(np.float32)
    boxes_np = boxes_np.reshape(-1, 4)
    best = np.zeros(len(boxes_np), np.float32)
    for lo in range(0, len(boxes_np), BOX_CHUNK):
        chunk = boxes_np[lo : lo + BOX_CHUNK]
        cx, cy = (chunk[:, 0] + chunk[:, 2]) / 2, (chunk[:, 1] + chunk[:, 3]) / 2
        for grid, xs, ys in grids:
            nearest = grid[_nearest(ys, cy), _nearest(xs, cx)]  # [G, shapes, 4]
            level_best = _paired_iou(chunk[:, None], nearest).max(1)
            best[lo : lo + BOX_CHUNK] = np.maximum(best[lo : lo + BOX_CHUNK], level_best)
    return best


def coverage(best_iou: np.ndarray, match_iou: float = MATCH_IOU) -> float:
    """Share of boxes that have an anchor at the matching IoU (1.0 when there are no boxes)."""
    return float(np.mean(best_iou >= match_iou)) if len(best_iou) else 1.0


def anchor_sizes(config: ModelConfig) -> tuple[float, float]:
    """Side of the smallest and largest square anchor, in input pixels."""
    top_octave = 2.0 ** ((config.num_scales - 1) / config.num_scales)
    return config.anchor_scale * 2.0**config.min_level, config.anchor_scale * 2.0**config.max_level * top_octave


# --------------------------------------------------------------------------------------------- anchor proposal


def cluster_aspect_ratios(ratios: np.ndarray, k: int = 3, iterations: int = 100) -> list[float]:
    """``k`` width/height ratios from 1-D k-means on ``log(w/h)``, ascending.

    In log space a 2:1 and a 1:2 box are equally far from square. The start is deterministic: the centres of k
    equal-count groups of the sorted values (quantiles (i + 0.5) / k), so the same boxes always give the same
    ratios; a cluster that loses all its points keeps its centre.
    """
    logs = np.sort(np.log(np.asarray(ratios, np.float64)))
    if not len(logs):
        raise ValueError("no boxes to cluster")
    centres = np.quantile(logs, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.argmin(np.abs(logs[:, None] - centres[None, :]), axis=1)
        new = np.array([logs[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres, rtol=0, atol=1e-9):
            break
        centres = new
    return sorted(float(np.exp(c)) for c in centres)


def _round_ratio(ratio: float) -> float:
    """Three significant digits: what the printed flags carry, so they reproduce the measured coverage."""
    return float(f"{ratio:.3g}")


def format_ratio(ratio: float) -> str:
    """A w/h ratio as the flags and the report print it (``2.0``, ``0.45``)."""
    text = f"{ratio:.3g}"
    return text if any(c in text for c in ".e") else text + ".0"


@dataclass
class AnchorProposal:
    """Anchors searched on the training boxes, next to the model's default anchors on the same boxes."""

    aspect_ratios: list[float]  # w/h, as printed in the flags
    anchor_scale: float
    coverage: float
    mean_iou: float
    default_aspect_ratios: list[float]
    default_anchor_scale: float
    default_coverage: float
    default_mean_iou: float
    boxes: int  # boxes the search used
    split: str

    @property
    def gain(self) -> float:
        return self.coverage - self.default_coverage

    @property
    def recommended(self) -> bool:
        return self.gain >= RECOMMEND_MARGIN

    @property
    def flags(self) -> str:
        """The ``efficientdet train`` flags that select these anchors."""
        ratios = " ".join(format_ratio(r) for r in self.aspect_ratios)
        return f"--aspect-ratios {ratios} --anchor-scale {self.anchor_scale:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "boxes": self.boxes,
            "aspect_ratios": self.aspect_ratios,
            "anchor_scale": self.anchor_scale,
            "coverage": self.coverage,
            "mean_best_iou": self.mean_iou,
            "default": {
                "aspect_ratios": self.default_aspect_ratios,
                "anchor_scale": self.default_anchor_scale,
                "coverage": self.default_coverage,
                "mean_best_iou": self.default_mean_iou,
            },
            "gain": self.gain,
            "recommended": self.recommended,
            "flags": self.flags,
        }


def propose_anchors(
    boxes: np.ndarray,
    config: ModelConfig,
    image_size: int,
    split: str = "train",
    seed: int = 0,
    match_iou: float = MATCH_IOU,
) -> AnchorProposal:
    """Aspect ratios and an anchor scale that maximise the share of ``boxes`` with an anchor at IoU >= ``match_iou``.

    Ratio candidates: as many k-means ratios of the boxes' w/h as ``config`` has (so the heads keep their shape and
    a checkpoint still loads), and ``config``'s own ratios. Each is tried with every scale of SCALE_GRID; the best
    coverage wins, ties going to the higher mean best IoU. ``config`` (the model's defaults) is the baseline.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        raise ValueError("no boxes to fit anchors to")
    if len(boxes) > PROPOSAL_MAX_BOXES:
        boxes = boxes[np.sort(np.random.default_rng(seed).choice(len(boxes), PROPOSAL_MAX_BOXES, replace=False))]
    ratios = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    default_ratios = [_round_ratio(r) for r in aspect_ratio_values(config.aspect_ratios)]
    clustered = [_round_ratio(r) for r in cluster_aspect_ratios(ratios, len(config.aspect_ratios))]

    def score(ratio_set: Sequence[float], scale: float) -> tuple[int, float]:
        candidate = config.replace(aspect_ratios=aspect_pairs(ratio_set), anchor_scale=scale)
        best = best_anchor_iou(boxes, candidate, image_size)
        return int(np.count_nonzero(best >= match_iou)), float(best.mean())

    base = best_anchor_iou(boxes, config, image_size)
    with torch_threads(1):  # anchor generation on small tensors: one thread is several times faster on busy CPUs
        candidates = [(score(r, s), r, s) for r in (clustered, default_ratios) for s in SCALE_GRID]
    (hits, mean_iou), chosen, scale = max(candidates, key=lambda c: c[0])
    return AnchorProposal(
        aspect_ratios=list(chosen), anchor_scale=scale, coverage=hits / len(boxes), mean_iou=mean_iou,
        default_aspect_ratios=default_ratios, default_anchor_scale=config.anchor_scale,
        default_coverage=coverage(base, match_iou), default_mean_iou=float(base.mean()), boxes=len(boxes), split=split,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- one split


def distribution(values: np.ndarray) -> dict[str, float]:
    """min, p5, median, p95, max of ``values`` (NaN for an empty array)."""
    if not len(values):
        return {name: math.nan for name, _ in QUANTILES}
    points = np.quantile(np.asarray(values, np.float64), [q for _, q in QUANTILES])
    return {name: float(v) for (name, _), v in zip(QUANTILES, points)}


@dataclass
class SplitCheck:
    """What one split holds, and how well the anchors reach its boxes."""

    name: str
    data: DetectionData
    boxes: InputBoxes  # non-crowd boxes at the input size
    best_iou: np.ndarray  # [len(boxes)] best anchor IoU of each
    match_iou: float = MATCH_IOU  # the IoU from which an anchor trains as a box's positive

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    @property
    def boxes_per_class(self) -> list[int]:
        return np.bincount(self.boxes.labels, minlength=len(self.class_names)).tolist()

    @property
    def crowd_boxes(self) -> int:
        return int(sum(int(np.count_nonzero(r.iscrowd)) for r in self.data.records))

    @property
    def images_without_boxes(self) -> int:
        return sum(1 for r in self.data.records if not len(r.boxes))

    @functools.cached_property
    def missing_files(self) -> list[str]:
        """Names of the split's image files that are not on disk: a COCO file carries the sizes, so reading it
        looks at no image, and a missing one would first be met by training or evaluation (VOC's reader looks for
        each image already; YOLO's reads each header)."""
        return [os.path.basename(r.path) for r in self.data.records if not os.path.isfile(r.path)]

    @property
    def coverage(self) -> float:
        return coverage(self.best_iou, self.match_iou)

    def class_coverage(self) -> list[float | None]:
        """Coverage per class; None for a class with no boxes in this split."""
        labels = self.boxes.labels
        return [
            coverage(self.best_iou[labels == c], self.match_iou) if np.any(labels == c) else None
            for c in range(len(self.class_names))
        ]

    def iou_histogram(self) -> list[int]:
        return np.histogram(self.best_iou, bins=IOU_BIN_EDGES)[0].tolist()

    def uncovered(self) -> list[dict[str, Any]]:
        """The boxes without an anchor at the matching IoU, worst first."""
        records = self.data.records
        rows = []
        for i in np.argsort(self.best_iou, kind="stable"):
            if self.best_iou[i] >= self.match_iou:
                break
            label = int(self.boxes.labels[i])
            rows.append({
                "file": os.path.basename(records[int(self.boxes.images[i])].path),
                "class": self.class_names[label] if 0 <= label < len(self.class_names) else str(label),
                "box": [round(float(v), 1) for v in self.boxes.boxes[i]],
                "best_iou": round(float(self.best_iou[i]), 4),
            })  # fmt: skip
        return rows

    def to_dict(self) -> dict[str, Any]:
        counts = self.boxes_per_class
        per_class = self.class_coverage()
        widths, heights = self.boxes.widths, self.boxes.heights
        return {
            "images": len(self.data),
            "images_without_boxes": self.images_without_boxes,
            "boxes": len(self.boxes),
            "crowd_boxes": self.crowd_boxes,
            "classes": {
                name: {"boxes": n, "coverage": cov} for name, n, cov in zip(self.class_names, counts, per_class)
            },
            "fixes": dict(self.data.fixes),
            "missing_files": self.missing_files,
            "width": distribution(widths),
            "height": distribution(heights),
            "aspect": distribution(widths / np.maximum(heights, 1e-9)),
            "coverage": self.coverage,
            "mean_best_iou": float(self.best_iou.mean()) if len(self.best_iou) else math.nan,
            "best_iou_histogram": {"edges": list(IOU_BIN_EDGES), "counts": self.iou_histogram()},
            "uncovered": self.uncovered(),
        }


def check_split(
    data: DetectionData, name: str, config: ModelConfig, image_size: int, match_iou: float = MATCH_IOU
) -> SplitCheck:
    """Counts, input-size boxes and best anchor IoUs of one split, for ``config``'s anchors at ``image_size``."""
    boxes = input_boxes(data, image_size)
    return SplitCheck(name, data, boxes, best_anchor_iou(boxes.boxes, config, image_size), match_iou)


def data_summary(
    data: DetectionData,
    split: str,
    config: ModelConfig,
    image_size: int,
    max_classes: int = 8,
    match_iou: float = MATCH_IOU,
) -> str:
    """One log line on a training split: images, boxes per class, and the share of boxes the anchors reach at the
    run's matching IoU."""
    check = check_split(data, split, config, image_size, match_iou)
    counts = check.boxes_per_class
    order = sorted(range(len(counts)), key=lambda c: -counts[c])
    classes = ", ".join(f"{check.class_names[c]} {counts[c]:,}" for c in order[:max_classes] if counts[c])
    shown = sum(1 for c in order[:max_classes] if counts[c])
    if sum(1 for n in counts if n) > shown:
        classes += f", {sum(1 for n in counts if n) - shown} more classes"
    text = (
        f"data: {split} {counted(len(data), 'image')} ({check.images_without_boxes:,} without boxes), "
        f"{counted(len(check.boxes), 'box')}: {classes or 'none'}"
    )
    empty = [check.class_names[c] for c in range(len(counts)) if not counts[c]]
    if empty:
        text += f"; no boxes for {', '.join(empty[:max_classes])}" + (" ..." if len(empty) > max_classes else "")
    if len(check.boxes):
        text += (
            f"; anchor coverage at {image_size} px: {_pct(check.coverage)} of boxes have an anchor at "
            f"IoU >= {match_iou:g}"
        )
        per_class = [(cov, c) for c, cov in enumerate(check.class_coverage()) if cov is not None]
        if len(per_class) > 1:
            worst, c = min(per_class)
            text += f" ({check.class_names[c]} {_pct(worst)})"
    return text + "; run `efficientdet check-data` for details"


# --------------------------------------------------------------------------------------------- a whole dataset


@dataclass
class DataCheck:
    """The report of ``efficientdet check-data``: every split found, the anchors checked, a proposal."""

    source: str
    config: ModelConfig  # the anchors checked
    default_config: ModelConfig  # the model's own anchors, the proposal's baseline
    image_size: int
    splits: list[SplitCheck]
    notes: list[str] = field(default_factory=list)
    proposal: AnchorProposal | None = None
    match_iou: float = MATCH_IOU  # the IoU from which an anchor trains as a box's positive

    @property
    def custom_anchors(self) -> bool:
        return (self.config.aspect_ratios, self.config.anchor_scale) != (
            self.default_config.aspect_ratios,
            self.default_config.anchor_scale,
        )

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "data": self.source,
            "format": self.splits[0].data.format if self.splits else None,
            "model": cfg.name,
            "image_size": self.image_size,
            "match_iou": self.match_iou,
            "anchors": {
                "aspect_ratios": aspect_ratio_values(cfg.aspect_ratios),
                "aspect_pairs": [list(p) for p in cfg.aspect_ratios],
                "anchor_scale": cfg.anchor_scale,
                "num_scales": cfg.num_scales,
                "levels": [cfg.min_level, cfg.max_level],
                "custom": self.custom_anchors,
            },
            "notes": list(self.notes),
            "splits": {s.name: s.to_dict() for s in self.splits},
            "proposal": self.proposal.to_dict() if self.proposal is not None else None,
        }


def read_splits(
    path: str | os.PathLike, format: str | None, splits: Sequence[str] | None
) -> tuple[list[tuple[str, DetectionData]], list[str]]:
    """The splits of the dataset at ``path`` that can be read, and a note for each one that cannot.

    ``splits`` None means the splits a COCO folder's files name, for other datasets every one of DEFAULT_SPLITS that
    exists. A set without named splits (a COCO JSON file, a folder of images and VOC XML files: :func:`single_set`)
    is one split, named after the file or folder. Raises DatasetError when the path does not exist or no split could
    be read.
    """
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"{path}: dataset not found")
    notes: list[str] = []
    if single_set(source, format):
        if splits:
            notes.append(f"{source.name} is one set without named splits: --splits ignored")
        return [(source.stem if source.is_file() else source.name, read_dataset(source, format))], notes
    found, failed = [], []
    for split in dict.fromkeys(splits or coco_folder_splits(source, format) or DEFAULT_SPLITS):  # each once, in order
        try:
            found.append((split, read_dataset(source, format, split)))
        except DatasetError as e:
            failed.append((split, str(e)))
    notes += [f"split {split!r} not checked: {reason}" for split, reason in failed]
    if not found:
        raise DatasetError(f"{path}: no split could be read ({same_reasons_once(failed, str(path))})")
    return found, notes


SPLIT_MARK, ROOT_MARK = "\x00", "\x01"  # where a split's own name and the dataset's path stood in a reason


def same_reasons_once(failed: Sequence[tuple[str, str]], root: str) -> str:
    """``(split, reason)`` pairs as one phrase, splits that failed for the same reason (their own name aside, not
    counting where it appears in ``root``, the dataset's path) named together: a folder that is no dataset at all
    fails every split alike, and four copies of the same sentence hide what differs."""
    groups: dict[str, list[str]] = {}
    for split, reason in failed:
        template = re.sub(rf"(?<![A-Za-z0-9]){re.escape(split)}(?![A-Za-z0-9])", lambda _: SPLIT_MARK,
                          reason.replace(root, ROOT_MARK))  # fmt: skip
        groups.setdefault(template, []).append(split)
    phrases = []
    for template, names in groups.items():
        reason = template.replace(SPLIT_MARK, names[0]).replace(ROOT_MARK, root)
        others = f" (and {', '.join(repr(n) for n in names[1:])} alike)" if len(names) > 1 else ""
        phrases.append(f"split {names[0]!r} not checked: {reason}{others}")
    return "; ".join(phrases)


def check_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    splits: Sequence[str] | None = None,
    config: ModelConfig | None = None,
    image_size: int | None = None,
    default_config: ModelConfig | None = None,
    propose: bool = True,
    match_iou: float = MATCH_IOU,
    read: tuple[list[tuple[str, DetectionData]], list[str]] | None = None,
) -> DataCheck:
    """Check every split of a dataset against ``config``'s anchors (default: efficientdet-lite0's).

    ``default_config`` holds the model's own anchors when ``config`` carries candidate ones; the proposal is
    searched on the ``train`` split (else the first one read) and compared with those defaults. Coverage counts
    boxes with an anchor at IoU >= ``match_iou``, the matching IoU of the training run it prepares. ``read``: what
    :func:`read_splits` returned for these arguments, when the caller has read the splits already (the command does,
    to size the check from the training split), so that the annotations are not read twice.
    """
    if not 0 < match_iou <= 1:
        raise ValueError(f"--match-iou must be in (0, 1], got {match_iou:g}")
    config = config if config is not None else get_config("efficientdet-lite0")
    default_config = default_config if default_config is not None else config
    size = int(image_size if image_size is not None else config.image_size)
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    found, notes = read if read is not None else read_splits(path, format, splits)
    notes = list(notes)
    checks = [check_split(data, name, config, size, match_iou) for name, data in found]
    proposal = None
    if propose:
        basis = next((c for c in checks if c.name == "train"), checks[0])
        if len(basis.boxes):
            proposal = propose_anchors(basis.boxes.boxes, default_config, size, basis.name, match_iou=match_iou)
        else:
            notes.append(f"no anchor proposal: split {basis.name!r} has no boxes")
    return DataCheck(str(path), config, default_config, size, checks, notes, proposal, match_iou)


def write_json(check: DataCheck, path: str | os.PathLike) -> None:
    """The whole report (every uncovered box included) as JSON, written atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(_finite(check.to_dict()), f, indent=2)
        f.write("\n")


def _finite(value: Any) -> Any:
    """NaN (empty distributions) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- the text report

FORCE_MATCH_NOTE = (
    "training still force-matches each of these boxes to its best anchor (as the official matcher does), but that "
    "anchor overlaps it at IoU < {match_iou:g}: a poor start for the box regression and one weak positive, so such "
    "boxes are learned slowly and found poorly. Check their labels; otherwise anchors that fit them (see the "
    "proposal) or a larger --img-size for tiny ones help."
)


def _pct(share: float | None) -> str:
    """A share as a percentage, with the digits it takes not to round 1 box in 5,000 to 0.0% or 100.0%."""
    if share is None:
        return "-"
    for digits in (1, 2, 3):
        value = round(100 * share, digits)
        if not ((share > 0 and value == 0) or (share < 1 and value == 100)):
            break
    return f"{100 * share:.{digits}f}%"


def _anchor_lines(check: DataCheck) -> list[str]:
    config, size = check.config, check.image_size
    ratios = " ".join(format_ratio(r) for r in aspect_ratio_values(config.aspect_ratios))
    small, large = anchor_sizes(config)
    which = "yours (flags)" if check.custom_anchors else f"{config.name} defaults"
    return [
        f"anchors: {which} at {size} px: aspect ratios (w/h) {ratios}, anchor scale {config.anchor_scale:g}",
        f"  {config.num_scales} octave scales on levels {config.min_level}-{config.max_level}: square anchors of "
        f"{small:.0f} to {large:.0f} px",
        f"  a box trains normally when an anchor overlaps it at IoU >= {check.match_iou:g}"
        + (" (the official matcher's)" if check.match_iou == MATCH_IOU else " (--match-iou)"),
    ]


def _split_lines(check: SplitCheck, size: int, max_listed: int) -> list[str]:
    data, counts, per_class = check.data, check.boxes_per_class, check.class_coverage()
    total = len(check.boxes)
    lines = [
        f"== {check.name}: {counted(len(data), 'image')} ({check.images_without_boxes:,} without boxes), "
        f"{counted(total, 'box')} in {sum(1 for n in counts if n)} of {counted(len(counts), 'class')}"
        + (f", {counted(check.crowd_boxes, 'crowd region')} (never targets)" if check.crowd_boxes else "")
    ]
    width = max([len("class")] + [len(n) for n in check.class_names])
    lines.append(f"  {'class':{width}s}  {'boxes':>8s}  {'share':>6s}  {'IoU>=' + format(check.match_iou, 'g'):>8s}")
    for name, n, cov in zip(check.class_names, counts, per_class):
        lines.append(f"  {name:{width}s}  {n:>8,d}  {_pct(n / total if total else None):>6s}  {_pct(cov):>8s}")
    lines.append(f"  {'all':{width}s}  {total:>8,d}  {_pct(1.0 if total else None):>6s}  {_pct(check.coverage):>8s}")
    empty = [n for n, c in zip(check.class_names, counts) if not c]
    if empty:
        lines.append(f"  no boxes at all for: {', '.join(empty)} (wrong class ids or names?)")
    fixes = {k: v for k, v in data.fixes.items() if v}
    # the fixes' keys are plural nouns ("zero_area_boxes"): their singular for a count of one
    fixed = ", ".join(counted(v, k.replace("_", " ").removesuffix("es" if k.endswith("xes") else "s"))
                      for k, v in fixes.items()) if fixes else "nothing"  # fmt: skip
    lines.append(f"  fixed while reading: {fixed}")
    keep = detections_to_keep(data.records)
    if keep != COCO_MAX_DETECTIONS:
        densest = densest_objects(data.records)
        lines.append(f"  densest image: {densest:,} objects, more than COCO's {COCO_MAX_DETECTIONS} detections: eval "
                     f"scores up to {keep} an image (give predict --max-det {keep})")  # fmt: skip
    missing = check.missing_files
    if missing:
        named = ", ".join(missing[:max_listed]) + (", ..." if len(missing) > max_listed else "")
        lines.append(f"  image files not found: {len(missing):,} of {len(data):,} ({named})")
    if not total:
        return lines
    widths, heights = check.boxes.widths, check.boxes.heights
    rows = (("width (px)", widths), ("height (px)", heights), ("aspect (w/h)", widths / np.maximum(heights, 1e-9)))
    lines.append(f"  {'box size at ' + str(size) + ' px':16s}" + "".join(f"{name:>9s}" for name, _ in QUANTILES))
    for label, values in rows:
        stats = distribution(values)
        lines.append(f"  {label:16s}" + "".join(f"{stats[name]:>9.3g}" for name, _ in QUANTILES))
    lines.append(f"  best anchor IoU (mean {float(check.best_iou.mean()):.3f}):")
    hist = check.iou_histogram()
    peak = max(hist) or 1
    for lo, hi, n in zip(IOU_BIN_EDGES[:-1], IOU_BIN_EDGES[1:], hist):
        lines.append(f"    {lo:.1f}-{hi:.1f} {n:>8,d}  {'#' * math.ceil(40 * n / peak)}".rstrip())
    uncovered = check.uncovered()
    if not uncovered:
        lines.append(f"  every box has an anchor at IoU >= {check.match_iou:g}")
        return lines
    lines.append(
        f"  boxes without an anchor at IoU >= {check.match_iou:g}: {len(uncovered):,} of {total:,} "
        f"({_pct(len(uncovered) / total)}), worst first (box: x1 y1 x2 y2 in input px):"
    )
    name_w = max(len(row["file"]) for row in uncovered[:max_listed])
    class_w = max(len(row["class"]) for row in uncovered[:max_listed])
    for row in uncovered[:max_listed]:
        box = " ".join(f"{v:.1f}" for v in row["box"])
        lines.append(f"    {row['file']:{name_w}s}  {row['class']:{class_w}s}  [{box}]  best IoU {row['best_iou']:.3f}")
    if len(uncovered) > max_listed:
        lines.append(f"    ... and {len(uncovered) - max_listed:,} more (all of them with --json)")
    note = FORCE_MATCH_NOTE.format(match_iou=check.match_iou)
    lines += textwrap.wrap(note, width=REPORT_WIDTH, initial_indent="  ", subsequent_indent="  ")
    return lines


def _proposal_lines(check: DataCheck) -> list[str]:
    p = check.proposal
    if p is None:
        return []
    default_label = f"{check.default_config.name} default"
    w = len(default_label)
    lines = [
        f"== anchor proposal: k-means on the {p.split} boxes' log(w/h) + anchor-scale search "
        f"({SCALE_GRID[0]:g}-{SCALE_GRID[-1]:g}), on {p.boxes:,} boxes",
        f"  {'anchors':{w}s}  {'aspect ratios (w/h)':20s}  {'scale':>5s}  "
        f"{'IoU>=' + format(check.match_iou, 'g'):>8s}  {'mean best IoU':>13s}",
    ]

    def row(label: str, ratios: Sequence[float], scale: float, share: float, mean: float) -> str:
        text = " ".join(format_ratio(r) for r in ratios)
        return f"  {label:{w}s}  {text:20s}  {scale:>5g}  {_pct(share):>8s}  {mean:>13.3f}"

    lines.append(row(default_label, p.default_aspect_ratios, p.default_anchor_scale, p.default_coverage,
                     p.default_mean_iou))  # fmt: skip
    split = next((s for s in check.splits if s.name == p.split), None)
    if check.custom_anchors and split is not None and len(split.best_iou):
        ratios = aspect_ratio_values(check.config.aspect_ratios)
        lines.append(
            row("yours (flags)", ratios, check.config.anchor_scale, split.coverage, float(split.best_iou.mean()))
        )
    lines.append(row("proposed", p.aspect_ratios, p.anchor_scale, p.coverage, p.mean_iou))
    gain = 100 * p.gain
    if p.recommended:
        lines.append(f"  recommended (+{gain:.1f} points of coverage): efficientdet train ... {p.flags}")
    else:
        lines.append(
            f"  not recommended: {gain:+.1f} points of coverage is under the {100 * RECOMMEND_MARGIN:g}-point margin: "
            "keep the default anchors"
        )
        lines.append(f"  (the best set found: {p.flags})")
    return lines


def format_report(check: DataCheck, max_listed: int = PRINTED_UNCOVERED) -> str:
    """The text report: anchors checked, notes, then per split counts, sizes, coverage; then the proposal."""
    lines = [f"check-data: {check.source} ({check.splits[0].data.format if check.splits else '?'})"]
    lines += _anchor_lines(check)
    lines += [f"note: {n}" for n in check.notes]
    for split in check.splits:
        lines.append("")
        lines += _split_lines(split, check.image_size, max_listed)
    if check.proposal is not None:
        lines.append("")
        lines += _proposal_lines(check)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- plots


def save_plots(check: DataCheck, folder: str | os.PathLike) -> list[Path]:
    """``<split>_boxes.png`` per split: histograms of box width, height, aspect (input px) and best anchor IoU."""
    from ..viz.plot import new_figure, save_figure  # matplotlib is imported only when plots are asked for

    out = Path(folder)
    written = []
    for split in check.splits:
        fig, axes = new_figure(10, 7, nrows=2, ncols=2)
        widths, heights = split.boxes.widths, split.boxes.heights
        size = check.image_size
        panels = (
            (axes[0, 0], widths, f"box width (px at {size})", False),
            (axes[0, 1], heights, f"box height (px at {size})", False),
            (axes[1, 0], widths / np.maximum(heights, 1e-9), "aspect w/h (log scale)", True),
        )
        for ax, values, title, log in panels:
            if len(values):
                bins = np.geomspace(max(values.min(), 1e-3), max(values.max(), 1e-3) * 1.001, 40) if log else 40
                ax.hist(values, bins=bins, color="tab:blue")
                if log:
                    ax.set_xscale("log")
                    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if bins[0] <= t <= bins[-1]]
                    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                    ax.set_xticks([], minor=True)
            ax.set_title(title)
            ax.set_ylabel("boxes")
        ax = axes[1, 1]
        ax.hist(split.best_iou, bins=IOU_BIN_EDGES, color="tab:green")
        ax.axvline(split.match_iou, color="tab:red", linestyle="--", label=f"matching IoU {split.match_iou:g}")
        ax.set_title(f"best anchor IoU: {_pct(split.coverage)} at >= {split.match_iou:g}")
        ax.set_xlabel("IoU")
        ax.set_ylabel("boxes")
        ax.legend(loc="upper left")
        fig.suptitle(f"{split.name}: {len(split.boxes):,} boxes at {size} px")
        path = out / f"{split.name}_boxes.png"
        save_figure(fig, path)
        written.append(path)
    return written
