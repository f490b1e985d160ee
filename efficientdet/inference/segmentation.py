"""Segment image files and write what a person looks at: colour overlays, plus the class-id masks themselves.

For each input ``<stem>.<ext>`` this writes ``<stem>_overlay.png`` (the photo blended with one colour per class)
and ``<stem>_mask.png`` (a palette PNG whose pixel values are the class ids, VOC-style: it opens as a colour
picture and reads back as ids with ``numpy.asarray(PIL.Image.open(...))``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import full_picture
from ..data.readers import IMAGE_EXTENSIONS
from ..models.segmenter import EfficientDetSegmentation
from ..utils.atomic import atomic_open
from .segmenter import Segmenter


def class_palette(num_colors: int = 256) -> np.ndarray:
    """``[num_colors, 3]`` uint8 colours, Pascal VOC's scheme: the bits of the class id spread over R, G and B
    from the most significant bit down, so neighbouring ids get clearly different colours and id 0 is black."""
    palette = np.zeros((num_colors, 3), np.uint8)
    for i in range(num_colors):
        value, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[i] = (r, g, b)
    return palette


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None) -> np.ndarray:
    """Blend class colours over an RGB image: ``(1 - alpha) * image + alpha * colour``, uint8 ``[H, W, 3]``."""
    colours = (palette if palette is not None else class_palette())[mask % 256]
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def _distinct_stems(paths: Sequence[Path]) -> list[str]:
    """One output stem per input: ``a``, ``a_2``, ``a_3``... when inputs from different folders share a stem
    (``x/a.jpg`` and ``y/a.png``), so no overlay overwrites another's."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = path.stem, 2
        while stem in used:
            stem, n = f"{path.stem}_{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


def _collect_images(sources: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder")
    return paths


def segment_image(
    model: EfficientDetSegmentation | Segmenter,
    image: np.ndarray,
    img_size: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class ids ``[H, W]`` (int64) for one uint8 RGB image, at the image's own resolution.

    A :class:`Segmenter` does the work (given as ``model``, its own size and device are used), so that these are
    the masks evaluation scores.
    """
    segmenter = model if isinstance(model, Segmenter) else Segmenter(model, device=device, image_size=img_size)
    return segmenter(image)[0]["mask"].numpy()


def predict_segmentation(
    model: EfficientDetSegmentation | str | os.PathLike,
    images: Sequence[str | os.PathLike] | str | os.PathLike,
    output_dir: str | os.PathLike,
    img_size: int | None = None,
    device: str | torch.device = "cpu",
    alpha: float = 0.5,
    save_masks: bool = True,
) -> list[dict[str, Any]]:
    """Segment image files (or folders of them) and write overlays (and id masks) into ``output_dir``.

    ``model`` is a segmentation model or a checkpoint path; ``device`` may be ``"auto"``. Images are resized so
    their longer side is ``img_size`` (default: the model's) and the prediction is mapped back to the image's own
    pixels. Returns one dict per image: ``image`` (input path),
    ``overlay`` and ``mask`` (written paths; ``mask`` is None without ``save_masks``), ``class_ids`` (ids present,
    sorted) and ``class_names`` (their names when the model carries them).
    """
    if not isinstance(model, torch.nn.Module):
        from ..models.factory import load_checkpoint

        model = load_checkpoint(model)  # type: ignore[assignment]
    if not isinstance(model, EfficientDetSegmentation):
        raise TypeError(f"expected a segmentation model, got {type(model).__name__}")
    segmenter = Segmenter(model, device=device, image_size=img_size)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    palette = class_palette()
    names = model.class_names
    results = []
    paths = _collect_images(images)
    for path, stem in zip(paths, _distinct_stems(paths)):
        # the network's input as evaluation decodes it; the overlay is drawn on the full picture (decoded a second
        # time only where the first decoding was reduced)
        decoded = segmenter.decode(path)
        ids = segmenter(decoded)[0]["mask"].numpy()
        image = full_picture(decoded, path)
        overlay_path = out / f"{stem}_overlay.png"
        _save_png(Image.fromarray(overlay(image, ids, alpha, palette)), overlay_path)
        mask_path = None
        if save_masks and ids.max() < 256:  # palette PNGs hold 8-bit ids
            h, w = ids.shape
            mask_img = Image.frombytes("P", (w, h), np.ascontiguousarray(ids, dtype=np.uint8).tobytes())
            mask_img.putpalette(palette.ravel().tolist())
            mask_path = out / f"{stem}_mask.png"
            _save_png(mask_img, mask_path)
        present = sorted(int(v) for v in np.unique(ids))
        results.append({
            "image": str(path),
            "overlay": str(overlay_path),
            "mask": None if mask_path is None else str(mask_path),
            "class_ids": present,
            "class_names": [names[i] for i in present] if names else None,
        })  # fmt: skip
    return results
