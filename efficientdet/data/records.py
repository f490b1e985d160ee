"""The in-memory form every dataset reader produces, whatever the file format."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np


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

    def with_class_names(self, class_names: list[str]) -> DetectionData:
        """The same split with its labels renumbered to index ``class_names`` (matched by name).

        Readers that infer classes from one split's annotations may number them differently in another split;
        training and evaluation must agree on the model's class list. A class unknown to ``class_names`` is an
        error, since its boxes could not be scored.
        """
        if list(class_names) == list(self.class_names):
            return self
        index = {name: i for i, name in enumerate(class_names)}
        unknown = [n for n in self.class_names if n not in index]
        if unknown:
            raise ValueError(f"classes {unknown} of this {self.format} split are not among the model's {class_names}")
        mapping = np.array([index[n] for n in self.class_names], dtype=np.int64)
        records = [
            dataclasses.replace(r, labels=mapping[r.labels] if len(r.labels) else r.labels) for r in self.records
        ]
        ids = None
        if self.category_ids is not None:
            by_name = dict(zip(self.class_names, self.category_ids))
            ids = [by_name.get(n, -1) for n in class_names]
        return DetectionData(records, list(class_names), self.format, dict(self.fixes), ids)
