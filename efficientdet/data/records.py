"""The in-memory form every dataset reader produces, whatever the file format."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .labels import match_class_names


@dataclass
class ImageRecord:
    """One image and its ground truth, in original-image pixels.

    ``boxes`` are float32 ``[N, 4]`` (x1, y1, x2, y2), already clipped to the image and free of zero-area boxes;
    ``labels`` are int64 ``[N]`` indices into the dataset's ``class_names`` (0-based); ``iscrowd`` marks COCO
    crowd regions (ignored by matching and by the metric). An image with no boxes is a valid negative.
    """

    path: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    # COCO only: each annotation's own ``area`` (the mask's area in COCO itself), which decides the small / medium /
    # large split of the official metric; None where the format has none (the box area is used then)
    areas: np.ndarray | None = None


@dataclass
class DetectionData:
    """A split of a dataset: its images, the class names (index = label), and what reading it had to fix."""

    records: list[ImageRecord]
    class_names: list[str]
    format: str
    # counts of fixes made while reading, e.g. {"clipped_boxes": 3, "zero_area_boxes": 1}; reported once per run
    fixes: dict[str, int] = field(default_factory=dict)
    # COCO only: the category id of each class, in ``class_names`` order (to write detections back as COCO JSON)
    category_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def with_class_names(self, class_names: list[str], category_ids: list[int] | None = None) -> DetectionData:
        """The same split with its labels renumbered to index ``class_names`` (a model's classes, matched by name).

        Readers that infer classes from one split's annotations may number them differently in another split;
        training and evaluation must agree on the model's class list. Names match exactly, else without case and
        through Pascal VOC's spellings of COCO's classes (:func:`efficientdet.labels.match_class_names`), so COCO's
        80 categories find their slots in a 90-slot COCO model. A class unknown to ``class_names`` is an error,
        since its boxes could not be scored.

        Category ids of the result: the split's own for its classes; for the model's other classes the model's
        ``category_ids`` where given and not already the id of one of the split's classes, else -1.
        """
        if category_ids is not None and len(category_ids) != len(class_names):
            raise ValueError(f"{len(category_ids)} category ids for {len(class_names)} classes")
        if list(class_names) == list(self.class_names):
            return self
        match = match_class_names(class_names, self.class_names)  # split label -> model label
        unknown = [n for j, n in enumerate(self.class_names) if j not in match]
        if unknown:
            raise ValueError(f"classes {unknown} of this {self.format} split are not among the model's {class_names}")
        mapping = np.array([match[j] for j in range(len(self.class_names))], dtype=np.int64)
        records = [
            dataclasses.replace(r, labels=mapping[r.labels] if len(r.labels) else r.labels) for r in self.records
        ]
        ids = None
        if self.category_ids is not None or category_ids is not None:
            own = {match[j]: int(c) for j, c in enumerate(self.category_ids or [])}
            theirs = list(category_ids) if category_ids is not None else [-1] * len(class_names)
            taken = set(own.values())
            ids = [own.get(i, -1 if int(theirs[i]) in taken else int(theirs[i])) for i in range(len(class_names))]
        return DetectionData(records, list(class_names), self.format, dict(self.fixes), ids)
