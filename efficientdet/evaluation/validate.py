"""Run a detector over a dataset split and score it with the COCO metrics (used by training and `eval`).

Under DDP (``distributed=True``) each rank predicts every W-th image; the detections are gathered on rank 0, which
alone runs pycocotools (and writes the JSON files), and the metrics are sent back so every rank returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data.dataset import DetectionDataset, loader_kwargs
from ..data.records import DetectionData, ImageRecord
from ..inference.detector import Detector
from ..models.detector import EfficientDet
from ..ops.postprocess import MAX_DETECTIONS, NMS_IOU, TOPK_CANDIDATES
from ..utils.distributed import all_gather_objects, broadcast_object, current_env
from .coco import CocoEvaluation, detections_to_keep, evaluate_split

EVAL_SCORE_THRESHOLD = 0.001  # the official evaluation keeps detections down to this score
# Evaluation (`eval` and the evaluation during training) de-duplicates with Gaussian soft-NMS, the paper's evaluation
# (section 5.1). Also chosen on images held out of raccoon's training split (`benchmarks/recipe_search.py`, final
# weights scored both ways): soft-NMS scored higher than hard NMS on 10 of 11 runs (five settings, three held-out
# draws; mean +0.010 AP, -0.003 to +0.024). `predict` and `Detector` keep hard NMS: soft-NMS keeps overlapping
# low-score boxes that AP forgives and a drawn picture does not.
EVAL_NMS = "soft"
# Box voting after the NMS (`--box-voting IOU`: each kept box moves to the score-weighted mean of its class's
# candidates overlapping it by that IoU; `ops.postprocess.vote_boxes`) is an option, off by default: on the final
# weights of eleven validation runs (held-out draws of raccoon `train`, BCCD `val`) voting at IoU 0.8 moved soft-NMS
# AP by -0.021 to +0.017, mean -0.001 (docs/recipe.md, "Box voting").
EVAL_VOTE_IOU: float | None = None


def evaluation_detector(
    model: EfficientDet,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    score_threshold: float = EVAL_SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    nms: str = EVAL_NMS,
    flip_tta: bool = False,
    optimize: bool = True,
    vote_iou: float | None = EVAL_VOTE_IOU,
) -> Detector:
    """The :class:`Detector` that evaluation predicts with, with the official evaluation's settings (top 5000
    candidates, score threshold 0.001, per-class NMS; box voting only when asked).

    Evaluation builds one rather than running the network itself so that the scores it reports are those of
    the predictions users get from ``Detector`` and ``efficientdet predict`` with the same settings. Like
    ``predict``, it runs an :class:`EfficientDet` as a copy with BN and SAME padding folded, channels-last on the
    CPU (``optimize``; the same outputs up to float rounding): an evaluation pass takes about a third less time
    (BCCD's 87 validation images at 448 px on 2 cores: 9-10 s against 15 s), and those passes had grown to 40% of
    a small dataset's training run. ``optimize=False`` runs ``model`` itself; an exported network always runs
    as it is.
    """
    return Detector(
        model, device=device, image_size=image_size, score_threshold=score_threshold, iou_threshold=iou_threshold,
        max_det=max_det, topk=TOPK_CANDIDATES, nms=nms, flip_tta=flip_tta,
        optimize=optimize and isinstance(model, EfficientDet), vote_iou=vote_iou,
    )  # fmt: skip


@torch.no_grad()
def predict_records(
    model: EfficientDet | Detector,
    records: list[ImageRecord],
    image_size: int | None = None,
    batch_size: int = 8,
    workers: int = 0,
    device: str | torch.device = "cpu",
    score_threshold: float = EVAL_SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    nms: str = EVAL_NMS,
    flip_tta: bool = False,
    vote_iou: float | None = EVAL_VOTE_IOU,
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Detections per record in the pixels of its annotation (aligned with ``records``; unreadable images get none).

    The network and the post-processing are a :class:`Detector`'s (:meth:`Detector.predict_tensor`): ``model``
    wrapped by :func:`evaluation_detector` with these arguments, or a ``Detector`` given as ``model``, whose own
    image size, device and thresholds are used then (the other arguments are ignored). What stays here is reading
    the records (a data loader, ``workers`` processes) and the last step: the annotation's pixels are the image
    file's unless the annotation states another size or was drawn on the EXIF-unturned picture
    (:mod:`efficientdet.data.frames`), so that detections are scored against the boxes as written.

    Returns the detections and the number of images that could not be read. The model's training mode is
    restored afterwards.
    """
    if isinstance(model, Detector):
        detector, network = model, model.model
        was_training = network.training
    else:  # read the mode first: the Detector puts the model in eval mode (and may run a folded copy of it)
        network, was_training = model, model.training
        detector = evaluation_detector(
            model, image_size, device, score_threshold, iou_threshold, max_det, nms, flip_tta, vote_iou=vote_iou
        )
    cfg = detector.config
    dataset = DetectionDataset(records, detector.image_size, cfg.mean, cfg.std, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_kwargs(workers))
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    skipped = 0
    try:
        for batch in loader:
            skipped += batch.skipped
            if not len(batch):
                continue
            # input pixels -> the decoded image's pixels (exact per-axis ratios, clipped to the image)
            sizes = [(frame.image_height, frame.image_width) for frame in batch.frames]
            dets = detector.predict_tensor(batch.images, batch.scales, sizes)
            for index, frame, det in zip(batch.indices, batch.frames, dets):
                # -> the annotation's pixels
                boxes = torch.from_numpy(frame.to_annotation(det["boxes"].float().numpy()))
                by_index[index] = {"boxes": boxes, "scores": det["scores"], "labels": det["labels"]}
    finally:
        network.train(was_training)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    return [by_index.get(i, empty) for i in range(len(records))], skipped


@dataclass
class ModelEvaluation:
    """What evaluating a model on a split gives: pycocotools' verdict, the detections it judged, unread images."""

    coco: CocoEvaluation
    detections: list[dict[str, torch.Tensor]]  # per record, annotation pixels
    unreadable_images: int

    @property
    def metrics(self) -> dict[str, float]:
        return self.coco.metrics


def evaluate_model(
    model: EfficientDet,
    data: DetectionData,
    image_size: int | None = None,
    batch_size: int = 8,
    workers: int = 0,
    device: str | torch.device = "cpu",
    json_path: str | None = None,
    detections_path: str | None = None,
    nms: str = EVAL_NMS,
    distributed: bool = False,
    flip_tta: bool = False,
    vote_iou: float | None = EVAL_VOTE_IOU,
    max_det: int | None = None,
) -> ModelEvaluation:
    """Predict every image of ``data`` and score the detections with pycocotools (``nms="soft"``: the official
    evaluation; ``vote_iou``: box voting after it, None for none). Images that cannot be read get no detections
    (their boxes count as missed) and are counted.

    ``max_det``: detections kept and scored an image; None: :func:`detections_to_keep` of the split (COCO's 100
    unless an image holds more objects).

    ``distributed``: all ranks of an initialised process group call this; the work is split between them and
    every rank returns the same result (computed once, on rank 0, from all detections).

    A model that knows its class names is scored in their order: the split's labels are renumbered to the model's
    classes by name, and its category ids kept (``DetectionData.with_class_names``), so e.g. COCO's 80 categories
    meet a 90-slot COCO model's outputs at the right ids.
    """
    if getattr(model, "class_names", None):
        data = data.with_class_names(list(model.class_names), getattr(model, "category_ids", None))
    keep = detections_to_keep(data.records) if max_det is None else max_det
    settings = (image_size, batch_size, workers, device)
    post: dict[str, Any] = {"nms": nms, "flip_tta": flip_tta, "vote_iou": vote_iou, "max_det": keep}
    env = current_env()
    if not (distributed and env.distributed):
        dets, skipped = predict_records(model, data.records, *settings, **post)
        coco = evaluate_split(data, dets, json_path, detections_path, unreadable_images=skipped, max_dets=keep)
        return ModelEvaluation(coco, dets, skipped)
    mine = list(range(env.rank, len(data.records), env.world_size))  # strided: image sizes spread evenly
    dets, skipped = predict_records(model, [data.records[i] for i in mine], *settings, **post)
    parts = all_gather_objects((list(zip(mine, dets)), skipped))
    result = None
    if env.is_main:
        by_index = dict(pair for part, _ in parts for pair in part)
        ordered = [by_index[i] for i in range(len(data.records))]
        unreadable = sum(n for _, n in parts)
        coco = evaluate_split(data, ordered, json_path, detections_path, unreadable_images=unreadable, max_dets=keep)
        result = ModelEvaluation(coco, ordered, unreadable)
    return broadcast_object(result)


def coco_ap(model: Any, data: DetectionData) -> float:
    """COCO AP (IoU 0.50:0.95) of ``model`` (an :class:`EfficientDet` or an exported network module) on ``data``,
    with `eval`'s defaults: the score that int8 accuracy control bounds (``export_openvino(score_ap=coco_ap)``)."""
    return float(evaluate_model(model, data).metrics["AP"])


def validate(model: EfficientDet, data: DetectionData, *args: Any, **kwargs: Any) -> dict[str, float]:
    """COCO AP, AP50, AP75, APs, APm, APl of ``model`` on ``data``: the headline of :func:`evaluate_model`, which
    takes the same arguments."""
    return evaluate_model(model, data, *args, **kwargs).metrics
