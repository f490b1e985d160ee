"""A small synthetic detection dataset (coloured shapes on noisy backgrounds) for the no-download demo.

Written as COCO JSON (``<root>/train.json``, ``<root>/val.json``, images under ``<root>/images``) so the demo
exercises the same reader, training and evaluation paths as real data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("square", "circle", "triangle")
# A hue family per class (with jitter) on top of the shape itself: a demo that learns in minutes on a CPU.
CLASS_COLOURS = ((220, 60, 60), (60, 200, 80), (70, 110, 230))
MAX_PLACEMENT_TRIES = 30


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple) -> None:
    x1, y1, x2, y2 = box
    if kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _image(rng: np.random.Generator, size: tuple[int, int], max_objects: int) -> tuple[Image.Image, list]:
    w, h = size
    base = rng.integers(70, 180, 3)
    noise = rng.normal(0, 18, (h, w, 3))
    grad = np.linspace(-30, 30, w)[None, :, None]
    pixels = np.clip(base + noise + grad, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(img)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(MAX_PLACEMENT_TRIES):  # shapes never overlap, so every box shows its whole object
            side = int(rng.integers(min(w, h) // 5, min(w, h) // 2))
            aspect = rng.uniform(0.7, 1.4)
            bw, bh = max(8, int(side * aspect)), max(8, int(side / aspect))
            x1, y1 = int(rng.integers(0, max(1, w - bw))), int(rng.integers(0, max(1, h - bh)))
            box = (x1, y1, min(w - 1, x1 + bw), min(h - 1, y1 + bh))
            if not any(_overlap(box, other) for _, other in objects):
                break
        else:
            continue
        kind = int(rng.integers(len(SHAPES)))
        colour = tuple(int(c) for c in (np.array(CLASS_COLOURS[kind]) + rng.integers(-35, 35, 3)).clip(0, 255))
        _draw_shape(draw, SHAPES[kind], box, colour)
        objects.append((kind, box))
    return img, objects


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def synthetic_images(count: int, size: tuple[int, int] = (320, 256), seed: int = 0) -> list[np.ndarray]:
    """``count`` pictures of this dataset's kind as ``[H, W, 3]`` uint8 arrays (``size`` is W, H), no files.

    For checks that need photo-like inputs (an export's verification) where no images were given.
    """
    rng = np.random.default_rng(seed)
    return [np.asarray(_image(rng, size, 3)[0]) for _ in range(count)]


def make_synthetic_dataset(root: str | os.PathLike, n_train: int = 120, n_val: int = 30, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (deterministic for a seed) and return ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]
    ann_id = 1
    for split, count in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for i in range(count):
            size = (int(rng.integers(200, 320)), int(rng.integers(180, 300)))
            img, objects = _image(rng, size, 3)
            name = f"{split}_{i:04d}.jpg"
            img.save(root / "images" / name, quality=92)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
            for kind, (x1, y1, x2, y2) in objects:
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": kind + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                })  # fmt: skip
                ann_id += 1
        with open(root / f"{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return root
