"""torch Dataset over ``ImageRecord`` lists, and the batching that goes with it.

Augmentation randomness comes from ``(seed, epoch, index)`` alone, so a sample is the same whether it is drawn in
the main process or a worker, in an uninterrupted run or after ``--resume``. An unreadable image is skipped with
a warning naming the file; the batch carries the count so the epoch summary can report it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .frames import AnnotationFrame, resolve_frame
from .images import ImageReadError, decode_image
from .records import ImageRecord
from .transforms import (
    DEFAULT_SCALE_RANGE,
    Resized,
    eval_transform,
    mix,
    mosaic,
    size_hw,
    stack_images,
    train_transform,
)

LOG = logging.getLogger(__name__)

# A box cut by a mosaic's or crop's edge to less than this share of its area is dropped rather than kept as a
# sliver the detector could not recognise (YOLOv5's box_candidates keeps boxes above 10% of their area).
MOSAIC_MIN_VISIBLE = 0.1
# Mixup's blending ratio is drawn from Beta(a, a): a = 32 keeps it near 0.5 (YOLOv5 and YOLOX), so that both images
# are visible enough for their boxes to keep full weight in the loss.
MIXUP_BETA = 32.0


@dataclass
class Sample:
    index: int
    record: ImageRecord
    data: Resized
    frame: AnnotationFrame  # annotation pixels <-> the decoded image's pixels


class DetectionDataset(Dataset):
    """Loads, augments (``train=True``) or just resizes each image to the model input size.

    A JPEG more than twice as large as the largest size a sample can be scaled to (in training the input size
    times the top of ``scale_range``, in evaluation the input size) is decoded at 1/2, 1/4 or 1/8 of its resolution
    (``reduced_decoding``, :func:`efficientdet.data.images.decode_image`): camera photos train about twice as fast
    and evaluate several times faster, boxes stay exact (the sample's frame carries the reduction), and the network
    sees the same size of picture, its pixels a fraction of a grey level from a full decoding's on average.
    Prediction decodes files for the network the same way (:meth:`efficientdet.inference.Detector.preprocess`), so
    that evaluation scores exactly what ``predict`` gives.
    """

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
        mosaic: float = 0.0,
        mixing_epochs: int | None = None,
        mixup: float = 0.0,
        erase: float = 0.0,
        reduced_decoding: bool = True,
    ) -> None:
        self.records = records
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.train = train
        self.scale_range = scale_range
        self.hflip = hflip
        self.color_strength = color_strength
        self.mosaic = mosaic  # probability of a sample being a 4-image mosaic (training only)
        self.mixup = mixup  # probability of a sample being blended with another (training only)
        self.mixing_epochs = mixing_epochs  # epochs (from 0) below this one may mosaic or mix; None: every epoch
        self.erase = erase  # probability of each box getting a randomly erased patch (training only)
        self.seed = seed
        self.epoch = 0
        # the largest (H, W) a sample is shrunk to fit in: what a reduced decoding must still cover
        height, width = size_hw(image_size)
        top = scale_range[1] if train else 1.0
        self.decode_fit = (math.ceil(height * top), math.ceil(width * top)) if reduced_decoding else None

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation draw; loaders must be re-created (non-persistent workers) to see it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, AnnotationFrame] | None:
        """The decoded image, its boxes in its pixels and the frame between them; None (warned) if unreadable."""
        rec = self.records[index]
        try:
            decoded = decode_image(rec.path, self.decode_fit)
        except ImageReadError as e:
            LOG.warning("skipping unreadable image: %s", e)
            return None
        image = decoded.pixels
        # annotations may state another size than the file's, or be drawn on the stored (EXIF-unturned) pixels
        frame = resolve_frame((rec.width, rec.height), decoded.full_size, decoded.orientation)
        frame = frame.reduced(decoded.reduction, (image.shape[1], image.shape[0]))
        return image, frame.to_image(rec.boxes), frame

    def _mixing_now(self, index: int, probability: float, stream: int) -> np.random.Generator | None:
        """The random draws of a mixing augmentation (stream 1: mosaic, 2: mixup) if sample ``index`` gets it this
        epoch, else None.

        A generator apart from the sample's, so that the other augmentations draw the same with and without it."""
        if probability <= 0 or len(self.records) < 2:
            return None
        if self.mixing_epochs is not None and self.epoch >= self.mixing_epochs:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index, stream])
        return rng if rng.random() < probability else None

    def _others(self, index: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` dataset positions other than ``index`` (distinct while the dataset has enough)."""
        # drawn over n - 1 positions and shifted past ``index``: a list of the others would cost O(dataset) each time
        drawn = rng.choice(len(self.records) - 1, size=count, replace=len(self) <= count)
        return drawn + (drawn >= index)

    def __getitem__(self, index: int) -> Sample | None:
        rec = self.records[index]
        loaded = self._load(index)
        if loaded is None:
            return None
        image, boxes, frame = loaded
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            labels, iscrowd, min_visible, scale_range = rec.labels, rec.iscrowd, 0.0, self.scale_range
            mosaic_rng = self._mixing_now(index, self.mosaic, 1)
            if mosaic_rng is not None:
                image, boxes, labels, iscrowd = self._mosaic(index, image, boxes, mosaic_rng)
                # the canvas is twice the input size: twice the jitter factor keeps objects at their usual scale
                min_visible, scale_range = MOSAIC_MIN_VISIBLE, (2 * scale_range[0], 2 * scale_range[1])
            data = train_transform(
                image, boxes, labels, iscrowd, self.image_size, self.mean, self.std, rng, scale_range,
                self.hflip, color_strength=self.color_strength, min_visible=min_visible, erase=self.erase,
            )  # fmt: skip
            mixup_rng = self._mixing_now(index, self.mixup, 2)
            if mixup_rng is not None:
                data = self._mixup(index, data, mixup_rng)
        else:
            data = eval_transform(image, self.image_size, self.mean, self.std, boxes, rec.labels, rec.iscrowd)
        return Sample(index, rec, data, frame)

    def _mosaic(
        self, index: int, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``index`` tiled with three others drawn by ``rng`` (an unreadable one leaves its quadrant empty)."""
        rec = self.records[index]
        others = self._others(index, 3, rng)
        parts = [(image, boxes, rec.labels, rec.iscrowd)]
        for other in others:
            loaded = self._load(int(other))
            other_rec = self.records[int(other)]
            if loaded is None:
                parts.append((np.zeros((0, 0, 3), np.uint8), np.zeros((0, 4), np.float32), other_rec.labels[:0],
                              other_rec.iscrowd[:0]))  # fmt: skip
            else:
                parts.append((loaded[0], loaded[1], other_rec.labels, other_rec.iscrowd))
        rng.shuffle(parts)  # the sample itself lands in any quadrant
        tiled = mosaic(parts, self.image_size, self.mean, rng, MOSAIC_MIN_VISIBLE)
        return tiled.image, tiled.boxes, tiled.labels, tiled.iscrowd

    def _mixup(self, index: int, data: Resized, rng: np.random.Generator) -> Resized:
        """``data`` blended with another training image, augmented on its own draws from ``rng`` (an unreadable
        one: ``data`` unchanged)."""
        other = int(self._others(index, 1, rng)[0])
        loaded = self._load(other)
        if loaded is None:
            return data
        rec = self.records[other]
        partner = train_transform(
            loaded[0], loaded[1], rec.labels, rec.iscrowd, self.image_size, self.mean, self.std, rng,
            self.scale_range, self.hflip, color_strength=self.color_strength, erase=self.erase,
        )  # fmt: skip
        return mix(data, partner, float(rng.beta(MIXUP_BETA, MIXUP_BETA)))


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
