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
from ..models.detector import EfficientDet
from ..ops.anchors import anchors_for_config
from ..ops.postprocess import MAX_DETECTIONS, NMS_IOU, TOPK_CANDIDATES, postprocess, to_original_pixels
from ..utils.distributed import all_gather_objects, broadcast_object, current_env
from .coco import CocoEvaluation, evaluate_split

EVAL_SCORE_THRESHOLD = 0.001  # the official evaluation keeps detections down to this score


@torch.no_grad()
def predict_records(
    model: EfficientDet,
    records: list[ImageRecord],
    image_size: int | None = None,
    batch_size: int = 8,
    workers: int = 0,
    device: str | torch.device = "cpu",
    score_threshold: float = EVAL_SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    nms: str = "hard",
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Detections per record in the pixels of its annotation (aligned with ``records``; unreadable images get none).

    The annotation's pixels are the image file's unless the annotation states another size or was drawn on the
    EXIF-unturned picture (:mod:`efficientdet.data.frames`): detections are scored against the boxes as written.

    Returns the detections and the number of images that could not be read.
    """
    cfg = model.config
    size = image_size or cfg.image_size
    dataset = DetectionDataset(records, size, cfg.mean, cfg.std, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_kwargs(workers))
    anchors = anchors_for_config(cfg, (size, size)).to(device)
    was_training = model.training
    model.eval()
    channels_last = any(
        p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in model.parameters()
    )
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    skipped = 0
    for batch in loader:
        skipped += batch.skipped
        if not len(batch):
            continue
        images = batch.images.to(device)
        if channels_last:  # the model's own layout: no conversion inside every conv
            images = images.contiguous(memory_format=torch.channels_last)
        cls, box = model(images)
        dets = postprocess(
            cls, box, anchors, cfg.num_classes, TOPK_CANDIDATES, iou_threshold, max_det, score_threshold, nms=nms
        )
        for index, scale, frame, det in zip(batch.indices, batch.scales, batch.frames, dets):
            # input pixels -> the decoded image's pixels (exact per-axis ratios) -> the annotation's pixels
            on_image = to_original_pixels(det["boxes"].cpu().float(), scale, (frame.image_height, frame.image_width))
            boxes = torch.from_numpy(frame.to_annotation(on_image.numpy()))
            by_index[index] = {"boxes": boxes, "scores": det["scores"].cpu(), "labels": det["labels"].cpu()}
    model.train(was_training)
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
    nms: str = "hard",
    distributed: bool = False,
) -> ModelEvaluation:
    """Predict every image of ``data`` and score the detections with pycocotools (``nms="soft"``: the official
    evaluation). Images that cannot be read get no detections (their boxes count as missed) and are counted.

    ``distributed``: all ranks of an initialised process group call this; the work is split between them and
    every rank returns the same result (computed once, on rank 0, from all detections).

    A model that knows its class names is scored in their order: the split's labels are renumbered to the model's
    classes by name, and its category ids kept (``DetectionData.with_class_names``), so e.g. COCO's 80 categories
    meet a 90-slot COCO model's outputs at the right ids.
    """
    if getattr(model, "class_names", None):
        data = data.with_class_names(list(model.class_names), getattr(model, "category_ids", None))
    env = current_env()
    if not (distributed and env.distributed):
        dets, skipped = predict_records(model, data.records, image_size, batch_size, workers, device, nms=nms)
        coco = evaluate_split(data, dets, json_path, detections_path, unreadable_images=skipped)
        return ModelEvaluation(coco, dets, skipped)
    mine = list(range(env.rank, len(data.records), env.world_size))  # strided: image sizes spread evenly
    dets, skipped = predict_records(
        model, [data.records[i] for i in mine], image_size, batch_size, workers, device, nms=nms
    )
    parts = all_gather_objects((list(zip(mine, dets)), skipped))
    result = None
    if env.is_main:
        by_index = dict(pair for part, _ in parts for pair in part)
        ordered = [by_index[i] for i in range(len(data.records))]
        unreadable = sum(n for _, n in parts)
        coco = evaluate_split(data, ordered, json_path, detections_path, unreadable_images=unreadable)
        result = ModelEvaluation(coco, ordered, unreadable)
    return broadcast_object(result)


def validate(model: EfficientDet, data: DetectionData, *args: Any, **kwargs: Any) -> dict[str, float]:
    """COCO AP, AP50, AP75, APs, APm, APl of ``model`` on ``data``: the headline of :func:`evaluate_model`, which
    takes the same arguments."""
    return evaluate_model(model, data, *args, **kwargs).metrics
