"""Checking an exported file against eager PyTorch on real pictures, before the file is put in place.

``efficientdet export`` writes to a temp file beside the output, runs it on a few images (a folder the user names,
or synthetic pictures of :mod:`efficientdet.synthetic` when none is given: shapes on textured noise, so that the
network's activations look like a photo's rather than like random normal noise), compares the outputs with the
same computation run eagerly in float32 by :class:`~efficientdet.inference.Detector` (its pre-processing, its
network call, its post-processing: :func:`detector_reference`), and only then renames it into place. A format
is one *runner*: a callable ``(path, images) -> outputs`` (:func:`efficientdet.export.run_onnx`, a ``.pt2``
loader, an OpenVINO compiler...).

Raw outputs are compared element by element. Detections (graphs with NMS) are compared after matching each box to
the other side's best box of the same class, because a rounding difference may swap two nearly equal scores or
push a box across the score threshold or out of ``max_det``; such a change is not an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.images import load_image
from ..data.readers import IMAGE_EXTENSIONS
from ..data.synthetic import synthetic_images
from ..inference.detector import Detector
from ..ops.postprocess import box_iou_one_to_many, flatten_outputs
from ..utils.atomic import create_beside

Runner = Callable[[Path, torch.Tensor], Sequence[torch.Tensor]]
VERIFY_IMAGES = 2  # images per check: a wrong graph shows on any picture, and each image costs an inference
MATCH_IOU = 0.5  # boxes of one class overlapping at least this much are "the same detection" (COCO's loosest IoU)
SAME_BOX_IOU = 0.8  # above this the two boxes are one box moved by rounding, below it NMS chose a neighbour


class VerificationError(RuntimeError):
    """The exported file computes something else than eager PyTorch; the message gives the largest difference."""


@dataclass(frozen=True)
class Tolerance:
    """How far an exported file may be from eager float32 PyTorch.

    ``raw``: largest absolute difference of class logits and box codes, relative to max(1, largest |value|).
    ``score``: largest score difference of matched detections (a missing one counts from the score it would need).
    ``box``: largest 1 - IoU of matched detections.
    """

    raw: float
    score: float
    box: float
    raw_mean: bool = False  # ``raw`` bounds the mean absolute difference (relative likewise), not the largest


# float32: the runtime's own conv arithmetic, nothing else (measured ~1e-6 on Lite0/D0).
FLOAT32 = Tolerance(raw=1e-3, score=1e-3, box=1e-3)
# float16: 10-bit mantissas through ~100 layers. Measured on a random-init Lite0 at 128 px: logits and box codes
# 2e-2 relative, matched scores 8e-3, boxes 1 - IoU 0.16 (box codes go through exp(); small boxes move most).
FLOAT16 = Tolerance(raw=5e-2, score=2e-2, box=0.25)
# int8: every value moves by the rounding of ~100 quantised layers. Measured with two trained Lite0 448 models
# (raccoon, BCCD) on their own, each other's and synthetic pictures, onnxruntime's and OpenVINO's files: the largest
# difference among ~10^5 logits or box codes 0.07-0.48 relative, the mean 0.004-0.032; so the raw outputs are held
# to a mean of 0.1, which a file computing something else (other or scrambled weights, NaN) is far past. With NMS
# matched scores 0.5 (measured up to 0.21); 1 - IoU counts only boxes that are the same box (at most 0.2).
INT8 = Tolerance(raw=0.1, score=0.5, box=0.2, raw_mean=True)


def load_verification_images(folder: str | os.PathLike | None, count: int = VERIFY_IMAGES) -> list[np.ndarray]:
    """The first ``count`` pictures of ``folder`` (sorted by name) as RGB arrays; synthetic ones when None."""
    if folder is None:
        return synthetic_images(count)
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--verify-images {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ValueError(f"--verify-images {folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [load_image(p) for p in paths[:count]]


def image_batch(detector: Detector, images: Sequence[np.ndarray], batch: int) -> torch.Tensor:
    """``[batch, 3, H, W]`` on the CPU (where the runtimes take it): the images cycled and pre-processed by
    ``detector`` (resize, pad, normalise), exactly as prediction pre-processes them."""
    tensor, _, _ = detector.preprocess([images[i % len(images)] for i in range(batch)])
    return tensor.cpu().contiguous()


def fixed_size_detections(detections: Sequence[dict[str, torch.Tensor]], max_det: int) -> list[torch.Tensor]:
    """Per-image detections (a :class:`Detector`'s, input pixels) in the layout of a graph with NMS:
    ``boxes [B, max_det, 4]``, ``scores [B, max_det]``, ``labels [B, max_det]`` (int64, -1 past the count) and
    ``num_detections [B]``, padding 0."""
    b = len(detections)
    boxes, scores = torch.zeros(b, max_det, 4), torch.zeros(b, max_det)
    labels, num = torch.full((b, max_det), -1, dtype=torch.int64), torch.zeros(b, dtype=torch.int64)
    for i, det in enumerate(detections):
        n = min(len(det["scores"]), max_det)
        boxes[i, :n], scores[i, :n], labels[i, :n], num[i] = det["boxes"][:n], det["scores"][:n], det["labels"][:n], n
    return [boxes, scores, labels, num]


def detector_reference(detector: Detector, with_nms: bool) -> Callable[[torch.Tensor], Sequence[torch.Tensor]]:
    """The eager outputs an exported file must reproduce, from the :class:`Detector` users predict with.

    Raw-output files: the network's outputs flattened as the file writes them (``class_logits``, ``box_codes``);
    files with NMS: the Detector's detections (its top-k, decoding and NMS, boxes in input pixels) in the file's
    fixed-size layout. So a file passes only if it predicts what ``Detector`` / ``efficientdet predict`` would,
    not merely what the export wrapper computes eagerly.
    """

    def reference(batch: torch.Tensor) -> list[torch.Tensor]:
        if with_nms:
            return fixed_size_detections(detector.predict_tensor(batch), detector.max_det)
        class_outputs, box_outputs = detector.network(batch)
        return [t.cpu() for t in flatten_outputs(class_outputs, box_outputs, detector.config.num_classes)]

    return reference


def _match(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, other: tuple[torch.Tensor, ...], floor: float
) -> tuple[float, float]:
    """(largest score difference, largest 1 - IoU) of each detection to the same-class boxes of ``other`` that
    overlap it by ``MATCH_IOU`` or more: the closest score among them, and the best overlap where one is the same
    box (IoU >= ``SAME_BOX_IOU``). Where none is, NMS kept a neighbour instead (two overlapping boxes with nearly
    tied scores: rounding decides which one suppresses the other), and the score gap alone is the measure.

    A detection with no match counts as a score difference of ``score - floor``: the other side may have dropped
    it for scoring just under ``floor`` (the score threshold, or its lowest kept score when it is full).
    """
    other_boxes, other_scores, other_labels = other
    worst_score, worst_box = 0.0, 0.0
    for box, score, label in zip(boxes, scores, labels):
        same = other_labels == label
        iou = box_iou_one_to_many(box, other_boxes[same]) if bool(same.any()) else torch.zeros(0)
        near = iou >= MATCH_IOU
        if bool(near.any()):
            gaps = torch.where(near, (other_scores[same] - score).abs(), torch.inf)
            worst_score = max(worst_score, float(gaps.min()))
            if float(iou.max()) >= SAME_BOX_IOU:
                worst_box = max(worst_box, 1.0 - float(iou.max()))
        else:
            worst_score = max(worst_score, float(score) - floor)
    return worst_score, worst_box


def compare_detections(
    got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], score_threshold: float, max_det: int
) -> dict[str, float]:
    """Fixed-size detection outputs (boxes, scores, labels, num_detections) of two runs, matched both ways."""
    diffs = {"scores": 0.0, "boxes": 0.0}
    for i in range(len(expected[0])):
        sides = []
        for boxes, scores, labels, num in (got, expected):
            n = int(num[i])
            floor = float(scores[i, n - 1]) if n == max_det else score_threshold
            sides.append(((boxes[i, :n].double(), scores[i, :n].double(), labels[i, :n]), floor))
        for (mine, _), (other, floor) in ((sides[0], sides[1]), (sides[1], sides[0])):
            score, box = _match(*mine, other, floor)
            diffs["scores"] = max(diffs["scores"], score)
            diffs["boxes"] = max(diffs["boxes"], box)
    return diffs


def compare_raw(
    names: Sequence[str], got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], mean: bool = False
) -> dict[str, float]:
    """Largest (``mean``: mean) absolute difference of each output, relative to max(1, largest |expected value|)."""
    out = {}
    for name, g, e in zip(names, got, expected):
        if not e.numel():
            out[name] = 0.0
            continue
        diff = (g.double() - e.double()).abs()
        out[name] = float(diff.mean() if mean else diff.max()) / max(1.0, float(e.abs().max()))
    return out


def verify_file(
    path: Path,
    runner: Runner,
    reference: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    tolerance: Tolerance,
    nms: dict | None = None,
) -> dict[str, float]:
    """Run ``path`` with ``runner`` and ``reference`` (eager) on each batch; the largest differences.

    ``nms`` (``score_threshold``, ``max_det``) marks detection outputs. Raises :class:`VerificationError` naming
    the output and its difference when one is past ``tolerance``.
    """
    diffs: dict[str, float] = {}
    for batch in batches:
        with torch.no_grad():
            expected = [t.detach().cpu() for t in reference(batch)]
        got = [torch.as_tensor(t).cpu() for t in runner(path, batch)]
        if nms is None:
            step = compare_raw(names, got, expected, mean=tolerance.raw_mean)
        else:
            step = compare_detections(got, expected, nms["score_threshold"], nms["max_det"])
        for key, value in step.items():
            diffs[key] = max(diffs.get(key, 0.0), value)
    limits = {"scores": tolerance.score, "boxes": tolerance.box} if nms is not None else {}
    for key, value in diffs.items():
        limit = limits.get(key, tolerance.raw)
        if not value <= limit:  # NaN fails too
            raise VerificationError(
                f"differs from eager PyTorch: {describe(diffs)} ({key} above the tolerance {limit:g})"
            )
    return diffs


def describe(diffs: dict[str, float]) -> str:
    """One line of differences, e.g. ``scores 1.2e-07, boxes (1 - IoU) 3.0e-07``."""
    label = {"boxes": "boxes (1 - IoU)", "scores": "scores (matched)"}
    return ", ".join(f"{label.get(k, k)} {v:.2e}" for k, v in diffs.items())


def write_verified(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    check: Callable[[Path], object],
    companions: Sequence[str] = (),
) -> Path:
    """``write`` a temp file beside ``path`` (same suffix), ``check`` it, then rename it to ``path``.

    On any error (the check's :class:`VerificationError` included) the temp file is removed and ``path`` is left
    as it was: a failed export never leaves a file behind. Same folder, so the rename is atomic. ``companions``:
    suffixes of files that ``write`` puts beside the temp file under its stem (an OpenVINO IR's ``.bin``), renamed
    into place before it and removed with it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_beside(path.with_name(path.stem), suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        check(tmp)
        for suffix in companions:
            os.replace(tmp.with_suffix(suffix), path.with_suffix(suffix))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, *(tmp.with_suffix(suffix) for suffix in companions)):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    return path
