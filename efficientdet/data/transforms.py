"""Augmentation and resizing (paper, section 5.1 and appendix; official code: dataloader.py, InputProcessor),
on uint8 RGB arrays and x1y1x2y2 pixel boxes.

Training: horizontal flip, scale jitter (resize so the image fits in ``factor * size`` with ``factor`` drawn from
``scale_range``), random crop to ``size``, pad bottom/right. Evaluation: resize the longer side to ``size``, pad.
Images are normalised after resizing and padded with zeros, i.e. with the mean colour before normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..utils.boxes import box_areas

DEFAULT_SCALE_RANGE = (0.1, 2.0)  # paper, section 5.1 and appendix: scale jittering [0.1, 2.0]


@dataclass
class Resized:
    """A transformed sample: the network input and the boxes on it, plus how to map back to the original."""

    image: torch.Tensor  # [3, H, W] float32, normalised, padded; [H, W, 3] in memory (normalise_padded)
    boxes: torch.Tensor  # [N, 4] x1y1x2y2 in input pixels
    labels: torch.Tensor  # [N] int64
    iscrowd: torch.Tensor  # [N] bool
    scale: float  # input pixels per original pixel: the nominal factor the resize was asked for
    offset: tuple[float, float]  # (x, y) of the crop in the scaled image (0 for evaluation)
    # the exact (x, y) ratios of the resize: sizes are rounded to whole pixels, so these differ from ``scale``
    # (a 3-pixel-high image at 512/1000 becomes 2 pixels high: 0.667, not 0.512); boxes use these both ways
    scale_xy: tuple[float, float] = (1.0, 1.0)


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """An input or crop size given as one side or (H, W), as (H, W)."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def normalise(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """HWC uint8 -> CHW float32 ``(x - mean) / std`` (pixel-space statistics)."""
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> ``hw`` (H, W): bilinear, antialiased when shrinking (the filter of PIL's ``BILINEAR``, whose
    support widens with the scale so that every source pixel counts), as a C-contiguous uint8 array.

    torch's uint8 kernel computes it in fixed point as PIL does, about 4x faster (640x480 -> 512x384: 0.6 ms
    against 2.4 ms on a 2-core EPYC); values differ from PIL's by at most 2 of 255 where the two round their
    coefficients differently. Every image the models see, in training and prediction, goes through here.
    """
    h, w = image.shape[:2]
    if (h, w) == tuple(hw):
        return image
    pixels = torch.from_numpy(np.require(image, np.uint8, ["C", "W"]))  # torch wants writable memory
    resized = torch.nn.functional.interpolate(
        pixels.permute(2, 0, 1)[None], size=tuple(hw), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].permute(1, 2, 0).contiguous().numpy()


def scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) times ``scale``, rounded to whole pixels, at least 1 each."""
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """:func:`resize_image` to the image's own size times ``scale``."""
    return resize_image(image, scaled_size(image.shape[:2], scale))


def normalise_padded(
    image: np.ndarray, out_hw: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """HWC uint8 -> ``[3, *out_hw]`` float32 ``(x - mean) / std``, zero-padded bottom/right (cut where larger),
    stored channels-last: the tensor is a ``[3, H, W]`` view of ``[H, W, 3]`` memory.

    The same values as :func:`normalise` then padding, bit for bit, in a third of the time: the image is written
    straight into the padded buffer, and the normalisation runs along whole rows (the per-channel mean and std
    tiled along a row) rather than broadcasting over a last dimension of 3. The layout is the one the CPU networks
    run in (:func:`stack_images` keeps it), so no layout copy follows.
    """
    out_h, out_w = out_hw
    h, w = min(image.shape[0], out_h), min(image.shape[1], out_w)
    out = torch.empty((out_h, out_w, 3), dtype=torch.float32)
    out[h:].zero_()
    out[:h, w:].zero_()
    if h and w:
        rows = out[:h, :w].view(h, w * 3)  # each row of the image part is contiguous (R, G, B, R, G, B, ...)
        pixels = np.require(image[:h, :w], requirements=["C", "W"])  # torch wants writable memory
        rows.copy_(torch.from_numpy(pixels).view(h, w * 3))
        rows.sub_(torch.tensor(mean, dtype=torch.float32).repeat(w))
        rows.div_(torch.tensor(std, dtype=torch.float32).repeat(w))
    return out.permute(2, 0, 1)


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """``[3, H, W]`` images -> a channels-last ``[B, 3, H, W]`` batch: one contiguous copy for images made by
    :func:`normalise_padded` (``torch.stack`` would transpose them to NCHW, and the CPU networks back).

    One image becomes a batch of one without a copy (a view of its memory: the caller hands its images over):
    a single photo's 3 MB copy at 512 px cost 0.25 ms of the ~2 ms pre-processing (a 2-core Xeon, one thread).
    """
    if len(images) == 1:
        return images[0].unsqueeze(0)
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def eval_transform(
    image: np.ndarray,
    size: int | tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    iscrowd: np.ndarray | None = None,
) -> Resized:
    """Resize so the image fits in ``size`` keeping its aspect ratio, then pad bottom/right (official dataloader.py:
    InputProcessor.set_scale_factors_to_output_size, resize_and_crop_image)."""
    out_h, out_w = size_hw(size)
    h, w = image.shape[:2]
    scale = min(out_h / h, out_w / w)
    resized = rescale_image(image, scale)
    tensor = normalise_padded(resized, (out_h, out_w), mean, std)
    sx, sy = resized.shape[1] / w, resized.shape[0] / h
    b = np.zeros((0, 4), np.float32) if boxes is None else boxes.astype(np.float32) * np.array([sx, sy] * 2, np.float32)
    return Resized(
        tensor,
        torch.from_numpy(b),
        torch.from_numpy(np.zeros(0, np.int64) if labels is None else labels.astype(np.int64)),
        torch.from_numpy(np.zeros(len(b), bool) if iscrowd is None else iscrowd.astype(bool)),
        scale,
        (0.0, 0.0),
        (sx, sy),
    )


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma weights, as PIL's "L" conversion


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Photometric augmentation of an HxWx3 uint8 image: brightness, contrast and saturation each scaled by a
    factor drawn from [1 - strength, 1 + strength] (torchvision's ColorJitter semantics, applied in that order).

    Boxes are untouched. Small datasets see each object in few lightings; varying them is the cheapest way to
    stop the detector from keying on one exposure.
    """
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    x = image.astype(np.float32) * brightness
    mean_luma = float((x @ LUMA).mean())
    x = (x - mean_luma) * contrast + mean_luma
    gray = (x @ LUMA)[..., None]
    x = (x - gray) * saturation + gray
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def train_transform(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    iscrowd: np.ndarray,
    size: int | tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rng: np.random.Generator,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    hflip: float = 0.5,
    min_box_size: float = 1.0,
    color_strength: float = 0.0,
    min_visible: float = 0.0,
    erase: float = 0.0,
) -> Resized:
    """Flip, scale-jitter, random-crop and pad one training sample (official "resize_and_crop").

    Boxes are clipped to the crop; boxes left narrower or shorter than ``min_box_size`` input pixels are dropped,
    and so are boxes keeping less than ``min_visible`` of their area (0: only the size rule).
    ``color_strength`` > 0 adds :func:`color_jitter` to the crop, ``erase`` > 0 :func:`erase_in_boxes`; their
    draws come after the geometric ones, so the boxes of a sample are the same with and without them.
    """
    out_h, out_w = size_hw(size)
    h, w = image.shape[:2]
    boxes = boxes.astype(np.float32).copy()
    if rng.random() < hflip:
        image = image[:, ::-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    factor = rng.uniform(*scale_range)
    scale = min(factor * out_h / h, factor * out_w / w)
    resized = rescale_image(np.ascontiguousarray(image), scale)
    rh, rw = resized.shape[:2]
    off_y = int(rng.integers(0, rh - out_h + 1)) if rh > out_h else 0
    off_x = int(rng.integers(0, rw - out_w + 1)) if rw > out_w else 0
    crop = resized[off_y : off_y + out_h, off_x : off_x + out_w]
    if color_strength > 0:
        crop = color_jitter(crop, color_strength, rng)
    # boxes: scale by the actual resize ratio per axis, shift by the crop, clip to the visible image part
    sy, sx = rh / h, rw / w
    boxes = boxes * np.array([sx, sy, sx, sy], np.float32) - np.array([off_x, off_y, off_x, off_y], np.float32)
    unclipped = boxes.copy()
    vis_h, vis_w = crop.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, vis_w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, vis_h)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
    if min_visible > 0:
        keep &= box_areas(boxes) >= min_visible * box_areas(unclipped)
    if erase > 0:
        crop = erase_in_boxes(crop, boxes[keep], erase, rng)
    return Resized(
        normalise_padded(crop, (out_h, out_w), mean, std),
        torch.from_numpy(boxes[keep]),
        torch.from_numpy(labels[keep].astype(np.int64)),
        torch.from_numpy(iscrowd[keep].astype(bool)),
        float(scale),
        (float(off_x), float(off_y)),
        (float(sx), float(sy)),
    )


# Object-aware random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020, section 3.2 and its
# detection experiments): the erased share of a box's area and the patch's height/width ratio are drawn from these.
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def erase_in_boxes(image: np.ndarray, boxes: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """With ``probability`` per box, replace a random rectangle inside the box by random pixels (Zhong et al.'s
    object-aware random erasing); the image is copied before the first write, the boxes stay as they are.

    A small dataset shows each object whole and unoccluded in every epoch; hiding a random part of it (at most
    ``ERASE_AREA[1]`` of its area, so the object stays recognisable and its box right) makes the detector use
    all of its parts instead of the most telling one.
    """
    out = image
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64):
        if rng.random() >= probability:
            continue
        box_w, box_h = x2 - x1, y2 - y1
        area = rng.uniform(*ERASE_AREA) * box_w * box_h
        aspect = np.exp(rng.uniform(np.log(ERASE_ASPECT[0]), np.log(ERASE_ASPECT[1])))  # h / w, as likely as w / h
        patch_w, patch_h = min(box_w, np.sqrt(area / aspect)), min(box_h, np.sqrt(area * aspect))
        px, py = x1 + rng.uniform(0, box_w - patch_w), y1 + rng.uniform(0, box_h - patch_h)
        # whole pixels inside the box: the patch never reaches past it
        ix1, iy1 = int(np.ceil(px)), int(np.ceil(py))
        ix2, iy2 = int(np.floor(px + patch_w)), int(np.floor(py + patch_h))
        if ix2 <= ix1 or iy2 <= iy1:
            continue
        if out is image:
            out = image.copy()  # the crop may be a view of the decoded image
        out[iy1:iy2, ix1:ix2] = rng.integers(0, 256, size=(iy2 - iy1, ix2 - ix1, 3), dtype=np.uint8)
    return out


def mix(first: Resized, second: Resized, ratio: float) -> Resized:
    """``ratio`` of ``first``'s input plus ``1 - ratio`` of ``second``'s, with the boxes of both (mixup for
    detection: Zhang et al., "Bag of Freebies for Training Object Detection Neural Networks", 2019, section 3.1;
    with equal label weights and a ratio near 0.5, as YOLOX trains). Both must be of one input size; the result
    maps back to ``first``'s image.

    Inputs are normalised and zero-padded, and normalising is affine, so this is the normalised blend of the two
    padded pictures; padding blends with the mean colour.
    """
    if first.image.shape != second.image.shape:
        sizes = f"{tuple(first.image.shape)} and {tuple(second.image.shape)}"
        raise ValueError(f"mixup needs inputs of one size, got {sizes}")
    return replace(
        first,
        image=first.image * ratio + second.image * (1 - ratio),
        boxes=torch.cat([first.boxes, second.boxes]),
        labels=torch.cat([first.labels, second.labels]),
        iscrowd=torch.cat([first.iscrowd, second.iscrowd]),
    )


@dataclass
class Mosaic:
    """Four training images tiled on one canvas, with their boxes in canvas pixels."""

    image: np.ndarray  # [2H, 2W, 3] uint8
    boxes: np.ndarray  # [N, 4] x1y1x2y2 canvas pixels
    labels: np.ndarray  # [N]
    iscrowd: np.ndarray  # [N]


def mosaic(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    size: int | tuple[int, int],
    fill: tuple[float, ...],
    rng: np.random.Generator,
    min_visible: float = 0.0,
) -> Mosaic:
    """Tile four (image, boxes, labels, iscrowd) samples around a random centre of a 2H x 2W canvas (YOLOv4's
    mosaic, Bochkovskiy et al. 2020, section 3.3): each image is resized to fit H x W and placed in its quadrant
    touching the centre (top-left, top-right, bottom-left, bottom-right), cut where it leaves the canvas; the rest
    is ``fill``.

    A small dataset shows every object with the same surroundings in every epoch; the mosaic puts objects beside
    other images' objects and backgrounds, cut at random edges. Boxes are clipped to the placed part; boxes keeping
    less than ``min_visible`` of their area there are dropped. :func:`train_transform` then crops H x W from it.
    """
    if len(parts) != 4:
        raise ValueError(f"a mosaic tiles 4 images, got {len(parts)}")
    h, w = size_hw(size)
    canvas = np.empty((2 * h, 2 * w, 3), np.uint8)
    canvas[:] = np.round(np.asarray(fill, np.float32)).clip(0, 255).astype(np.uint8)
    cy, cx = int(rng.uniform(0.5 * h, 1.5 * h)), int(rng.uniform(0.5 * w, 1.5 * w))
    all_boxes, all_labels, all_crowd = [], [], []
    for quadrant, (image, boxes, labels, iscrowd) in enumerate(parts):
        if image.size == 0:  # an image that could not be read: its quadrant stays empty
            continue
        scale = min(h / image.shape[0], w / image.shape[1])
        resized = rescale_image(np.ascontiguousarray(image), scale)
        ih, iw = resized.shape[:2]
        # the image's top-left corner on the canvas: it touches the centre with its inner corner
        x0 = cx - iw if quadrant in (0, 2) else cx
        y0 = cy - ih if quadrant in (0, 1) else cy
        cx1, cy1 = max(x0, 0), max(y0, 0)
        cx2, cy2 = min(x0 + iw, 2 * w), min(y0 + ih, 2 * h)
        canvas[cy1:cy2, cx1:cx2] = resized[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
        sx, sy = iw / image.shape[1], ih / image.shape[0]
        placed = boxes.astype(np.float32) * np.array([sx, sy, sx, sy], np.float32)
        placed += np.array([x0, y0, x0, y0], np.float32)
        clipped = placed.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(cx1, cx2)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(cy1, cy2)
        keep = (box_areas(clipped) > 0) & (box_areas(clipped) >= min_visible * box_areas(placed))
        all_boxes.append(clipped[keep])
        all_labels.append(np.asarray(labels)[keep])
        all_crowd.append(np.asarray(iscrowd)[keep])
    return Mosaic(canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_labels),
                  np.concatenate(all_crowd))  # fmt: skip
