"""torch Dataset over ``ImageRecord`` lists, and the batching that goes with it.

Augmentation randomness comes from ``(seed, epoch, index)`` alone, so a sample is the same whether it is drawn in
the main process or a worker, in an uninterrupted run or after ``--resume``. An unreadable image is skipped with
a warning naming the file; the batch carries the count so the epoch summary can report it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .frames import AnnotationFrame, resolve_frame
from .images import ImageReadError, load_image_oriented
from .records import ImageRecord
from .transforms import DEFAULT_SCALE_RANGE, Resized, eval_transform, stack_images, train_transform

LOG = logging.getLogger(__name__)


@dataclass
class Sample:
    index: int
    record: ImageRecord
    data: Resized
    frame: AnnotationFrame  # annotation pixels <-> the decoded image's pixels


class DetectionDataset(Dataset):
    """Loads, augments (``train=True``) or just resizes each image to the model input size."""

    def __init__(
        self,
        records: list[ImageRecord],
        image_size: int | tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool = False,
        scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
        hflip: float = 0.5,
        seed: int = 0,
        color_strength: float = 0.0,
    ) -> None:
        self.records = records
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.train = train
        self.scale_range = scale_range
        self.hflip = hflip
        self.color_strength = color_strength
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation draw; loaders must be re-created (non-persistent workers) to see it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | None:
        rec = self.records[index]
        try:
            image, orientation = load_image_oriented(rec.path)
        except ImageReadError as e:
            LOG.warning("skipping unreadable image: %s", e)
            return None
        # annotations may state another size than the file's, or be drawn on the stored (EXIF-unturned) pixels
        frame = resolve_frame((rec.width, rec.height), (image.shape[1], image.shape[0]), orientation)
        boxes = frame.to_image(rec.boxes)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            data = train_transform(
                image, boxes, rec.labels, rec.iscrowd, self.image_size, self.mean, self.std, rng, self.scale_range,
                self.hflip, color_strength=self.color_strength,
            )  # fmt: skip
        else:
            data = eval_transform(image, self.image_size, self.mean, self.std, boxes, rec.labels, rec.iscrowd)
        return Sample(index, rec, data, frame)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W], channels-last in memory (stack_images)
    targets: list[dict[str, torch.Tensor]]  # boxes (x1y1x2y2 input px), labels, iscrowd
    records: list[ImageRecord]  # copies when built in a worker process: match by ``indices``, not identity
    indices: list[int]  # positions in the dataset
    scales: list[tuple[float, float]]  # exact (x, y) input px per image px (``Resized.scale_xy``)
    frames: list[AnnotationFrame]  # per image: annotation pixels <-> image pixels
    skipped: int  # unreadable images dropped from this batch

    def __len__(self) -> int:
        return len(self.records)


def collate(samples: list[Sample | None]) -> Batch:
    kept = [s for s in samples if s is not None]
    if not kept:
        return Batch(torch.zeros(0), [], [], [], [], [], len(samples))
    return Batch(
        stack_images([s.data.image for s in kept]),
        [{"boxes": s.data.boxes, "labels": s.data.labels, "iscrowd": s.data.iscrowd} for s in kept],
        [s.record for s in kept],
        [s.index for s in kept],
        [s.data.scale_xy for s in kept],
        [s.frame for s in kept],
        len(samples) - len(kept),
    )


def worker_init(_worker_id: int) -> None:
    """One intra-op thread per worker: the workers already run in parallel."""
    torch.set_num_threads(1)


def loader_kwargs(workers: int) -> dict[str, Any]:
    return {"num_workers": workers, "collate_fn": collate, "worker_init_fn": worker_init if workers else None}
