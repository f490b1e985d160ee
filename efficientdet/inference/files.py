"""Optional per-image files of ``efficientdet predict``: YOLO label files (``--save-txt``) and crops (``--save-crop``).

Label files follow the YOLO layout (``class cx cy w h``, normalised by the image's width and height, optionally a
score), so a folder of images plus ``labels/`` plus a ``data.yaml`` with the model's class names is a dataset that
``efficientdet train --format yolo`` reads: auto-labelling. Everything is written atomically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils.atomic import atomic_open

LABELS_FOLDER = "labels"
CROPS_FOLDER = "crops"
CROP_JPEG_QUALITY = 95  # as for the drawn images: Pillow's default 75 visibly degrades a photo
_UNSAFE = re.compile(r"[^\w.\- ]+")  # keep letters/digits (any script), "_", ".", "-" and spaces


def is_glob_pattern(text: str) -> bool:
    """Whether a ``predict`` source holds a wildcard (``photos/*.jpg``): such a source is expanded, not opened."""
    return any(c in text for c in "*?[")


def image_stems(destinations: Sequence[Path], output: str | os.PathLike) -> list[str]:
    """Per image, a distinct extension-less name relative to ``output`` (``"2023/a"``), from predict's output names.

    The output names already keep same-named inputs from different folders apart; two inputs that differ only by
    their extension (``a.jpg``, ``a.png``) would share a stem, so the later ones get ``_2``, ``_3``, ... (compared
    case-insensitively, for case-insensitive file systems).
    """
    taken: set[str] = set()
    stems = []
    for path in destinations:
        relative = Path(os.path.relpath(path, output)).as_posix()
        base = relative[: -len(Path(relative).suffix)] if Path(relative).suffix else relative
        candidate, n = base, 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate.casefold())
        stems.append(candidate)
    return stems


def label_path(output: str | os.PathLike, stem: str) -> Path:
    """``OUTPUT/labels/<stem>.txt``."""
    return Path(output) / LABELS_FOLDER / f"{stem}.txt"


def yolo_lines(
    boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None, size: tuple[int, int]
) -> list[str]:
    """``class cx cy w h [score]`` per box: (x1, y1, x2, y2) pixels of an image of ``size`` (H, W) -> 0..1 centres.

    Six decimals: 1e-6 of a 10000 px side is 0.01 px, the rounding of ``detections.json``. Boxes that are empty at
    that precision (a box clipped flat against the image border) are left out: a training reader drops them anyway.
    """
    height, width = size
    lines = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        if round(w, 6) <= 0 or round(h, 6) <= 0:
            continue
        line = f"{int(labels[i])} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
        if scores is not None:
            line += f" {float(scores[i]):.6f}"
        lines.append(line)
    return lines


def write_label_file(path: Path, lines: Sequence[str]) -> None:
    """One label file, empty for an image without detections (YOLO's way of marking a negative)."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(f"{line}\n" for line in lines))


def class_folders(class_names: Sequence[str]) -> list[str]:
    """A file-system-safe, distinct folder name per class (``"traffic light"`` stays, ``"a/b"`` -> ``"a_b"``).

    Characters outside letters, digits, ``_``, ``.``, ``-`` and spaces become ``_``; leading and trailing dots and
    spaces are dropped (``..`` must not climb out of ``crops/``); a name left empty, or equal to an earlier one
    but for case, gets its class index appended.
    """
    folders: list[str] = []
    taken: set[str] = set()
    for index, name in enumerate(class_names):
        folder = _UNSAFE.sub("_", str(name)).strip(". ")
        if not folder or folder.casefold() in taken:
            folder = f"{folder or 'class'}_{index}"
        taken.add(folder.casefold())
        folders.append(folder)
    return folders


def crop_region(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box rounded to whole pixels and clipped to the image, as (x1, y1, x2, y2); ``None`` when empty."""
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, x2 = max(0, min(x1, width)), max(0, min(x2, width))
    y1, y2 = max(0, min(y1, height)), max(0, min(y2, height))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def save_crops(
    image: np.ndarray, boxes: torch.Tensor, labels: torch.Tensor, folders: Sequence[str], output: Path, stem: str
) -> list[Path]:
    """``OUTPUT/crops/<class folder>/<stem>_<k>.jpg`` for the k-th detection (0-based, as in the image's list).

    Zero-width or zero-height crops (after rounding and clipping) are skipped, so ``k`` may have gaps.
    """
    height, width = image.shape[:2]
    written = []
    for k, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        region = crop_region(box, width, height)
        if region is None:
            continue
        x1, y1, x2, y2 = region
        path = output / CROPS_FOLDER / folders[int(label)] / f"{stem}_{k}.jpg"
        with atomic_open(path, "wb") as f:
            Image.fromarray(image[y1:y2, x1:x2]).save(f, format="JPEG", quality=CROP_JPEG_QUALITY)
        written.append(path)
    return written
