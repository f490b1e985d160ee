"""Detections drawn onto an image for a quick visual check: boxes, class name and score, one colour per class.

Pillow only, so it works wherever the library does; sizes scale with the image so the drawing stays readable
on thumbnails and on very large photos alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Fixed, well-separated colours; class k always gets PALETTE[k % len(PALETTE)] so colours are stable across images.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 225, 25),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
    (0, 0, 0),
)


@functools.lru_cache(maxsize=16)
def default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px where Pillow can scale it (>= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: load_default() takes no size
        return ImageFont.load_default()


def text_box(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int, int, int]:
    """``(dx, dy, width, height)`` of the ink of ``text``: draw it at ``(x - dx, y - dy)`` to put the ink at (x, y).

    Fonts leave space above the glyphs (the offset), which would otherwise push text out of tight tags.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return left, top, right - left, bottom - top


def class_color(label: int) -> tuple[int, int, int]:
    """The palette colour of a class index."""
    return PALETTE[int(label) % len(PALETTE)]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones, so the label is readable on every palette colour."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A fresh RGB copy of the input, so drawing never touches the caller's image or array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # convert always returns a new image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array).copy()).convert("RGB")


def _to_numpy(value: Any, dtype: Any) -> np.ndarray:
    """Torch tensors, arrays or lists -> a numpy array of ``dtype``."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _tag_text(label: int, score: float | None, class_names: Sequence[str] | None) -> str:
    """``"name score"``; the class index stands in for a name that is unknown."""
    name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
    return name if score is None else f"{name} {score:.2f}"


def _clip_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer pixel corners inside the image (x2 >= x1, y2 >= y1 as Pillow requires); None for NaN/inf boxes."""
    if not np.all(np.isfinite(box)):
        return None
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
    y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
    return x1, y1, x2, y2


def _draw_tag(
    draw: ImageDraw.ImageDraw, image_width: int, box: tuple[int, int, int, int], text: str, color: tuple, font: Any
) -> None:
    """A filled tag with the text: above the box when there is room, else just inside its top edge."""
    dx, dy, tw, th = text_box(draw, text, font)
    pad = max(1, th // 5)
    tag_w, tag_h = tw + 2 * pad, th + 2 * pad
    x = min(box[0], max(image_width - tag_w, 0))  # keep the tag inside the image on the right
    y = box[1] - tag_h if box[1] - tag_h >= 0 else box[1]
    draw.rectangle([x, y, x + tag_w - 1, y + tag_h - 1], fill=color)
    draw.text((x + pad - dx, y + pad - dy), text, fill=_text_color(color), font=font)


def draw_detections(
    image: Image.Image | np.ndarray,
    boxes: Any,
    labels: Any,
    scores: Any | None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
) -> Image.Image:
    """A new RGB image with each detection scoring ``>= score_threshold`` drawn as a box and a name/score tag.

    ``boxes`` are x1y1x2y2 pixels of this image (tensors or arrays); ``scores=None`` draws ground truth (names
    only, nothing filtered). Lower scores are drawn first so the most confident tags end up on top.
    """
    canvas = _as_rgb_image(image)
    width, height = canvas.size
    boxes_np = _to_numpy(boxes, np.float64).reshape(-1, 4)
    labels_np = _to_numpy(labels, np.int64).reshape(-1)
    scores_np = None if scores is None else _to_numpy(scores, np.float64).reshape(-1)
    if len(labels_np) != len(boxes_np) or (scores_np is not None and len(scores_np) != len(boxes_np)):
        raise ValueError("boxes, labels and scores must have the same length")
    order = np.arange(len(boxes_np)) if scores_np is None else np.argsort(scores_np, kind="stable")
    line_width = max(2, round(max(width, height) / 400))
    font = default_font(max(10, min(160, round(max(width, height) / 50))))
    draw = ImageDraw.Draw(canvas)
    for i in order:
        score = None if scores_np is None else float(scores_np[i])
        if score is not None and not score >= score_threshold:  # also drops NaN scores
            continue
        box = _clip_box(boxes_np[i], width, height)
        if box is None:
            continue
        color = class_color(labels_np[i])
        draw.rectangle(box, outline=color, width=line_width)
        _draw_tag(draw, width, box, _tag_text(int(labels_np[i]), score, class_names), color, font)
    return canvas


def draw_batch(
    images: Any,
    targets: Sequence[dict[str, Any]],
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None = None,
    max_side: int = 640,
) -> Image.Image:
    """A grid of network inputs ``[B, 3, H, W]`` (normalised) with their target boxes and class names.

    ``targets`` hold ``boxes`` (x1y1x2y2 input pixels) and ``labels`` per image, as the training loader yields them:
    the picture shows exactly what the loss sees, after augmentation. Tiles larger than ``max_side`` are shrunk.
    """
    array = _to_numpy(images, np.float32)
    if array.ndim != 4 or array.shape[1] != 3 or len(array) != len(targets):
        raise ValueError(f"expected [B, 3, H, W] images with one target dict each, got {array.shape}")
    pixels = array * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    height, width = pixels.shape[1:3]
    shrink = min(1.0, max_side / max(height, width))
    tile_w, tile_h = max(1, round(width * shrink)), max(1, round(height * shrink))
    columns = math.ceil(math.sqrt(len(pixels))) if len(pixels) else 1
    rows = math.ceil(len(pixels) / columns) if len(pixels) else 1
    gap = 4
    grid = Image.new("RGB", (columns * tile_w + (columns - 1) * gap, rows * tile_h + (rows - 1) * gap), (255, 255, 255))
    for i, (picture, target) in enumerate(zip(pixels, targets)):
        tile = Image.fromarray(picture)
        if shrink < 1.0:
            tile = tile.resize((tile_w, tile_h), Image.BILINEAR)
        boxes = _to_numpy(target["boxes"], np.float64).reshape(-1, 4) * shrink
        tile = draw_detections(tile, boxes, target["labels"], None, class_names)
        grid.paste(tile, ((i % columns) * (tile_w + gap), (i // columns) * (tile_h + gap)))
    return grid
