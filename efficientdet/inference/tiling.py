"""Sliced inference for very large images: overlapping tiles plus one full-image pass, merged into one result.

A 24 px object on a 4000 px aerial photo shrinks to 3 px when the whole photo is resized to a 512 px input: too
small for any detector. Cutting the photo into tiles of ``tile`` original pixels and resizing each tile to the
input (as any image is) keeps small objects at their size; the idea is SAHI's (Akyon et al. 2022, "Slicing Aided
Hyper Inference and Fine-tuning for Small Object Detection"). One extra pass over the whole image finds the objects
larger than a tile. Cost: (number of tiles + 1) forward passes per image.

Merging (:func:`merge_detections`), on all boxes mapped back to full-image pixels:

1. *Cut boxes.* A box touching an inner tile border (a tile edge that is not an image edge) may show only part of
   its object. If more than ``IOS_THRESHOLD`` of its area lies inside a larger box of the same class (any class when
   class-agnostic), it is dropped: the larger box is the whole object, seen by a neighbouring tile (the overlap is
   there so that objects smaller than it are seen whole somewhere) or by the full-image pass. Intersection over
   the smaller box, not IoU, because a half-object has IoU ~0.5 with the whole one and escapes NMS. Only cut boxes
   are tested, so a small object inside a large one of the same class is kept when nothing cuts it.
2. *Duplicates.* An object in the overlap of two tiles is found by both. ``nms="hard"``: the Detector's
   (class-aware unless ``class_agnostic``) greedy NMS over the merged set removes them. ``nms="soft"``: each tile's
   scores are already soft-NMS scores; a box whose IoU with a higher-scoring box *from another tile* exceeds
   ``iou_threshold`` is dropped (a second Gaussian decay would count each tile's own neighbours twice, and only
   decays a duplicate, never removes it).
3. The ``max_det`` best remain. Box fusion (averaging the duplicates' coordinates) was not chosen: with whole
   objects seen by some tile, keeping the best-scoring box is as accurate and needs no extra rule for cut boxes.

Memory: tiles are cut from the image (one array, the input) as they are needed and run ``batch_size`` at a time,
so a 10000 x 10000 image holds the image, one batch of tiles and the candidate boxes; candidates are capped at the
Detector's ``topk`` (5000) best before merging. The peak is the full-image pass (its resize copies the image once,
as plain inference does): on a 10000 x 10000 image, tiles of 512 in batches of 8 or 64 peak at the same memory
as plain inference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..ops.postprocess import batched_nms
from ..utils.boxes import box_areas, box_intersections

if TYPE_CHECKING:
    from .detector import Detector

MIN_TILE = 32  # the smallest anchors are 24 px (Lite) to 32 px (D0-D7): a smaller tile gains nothing
DEFAULT_TILE_OVERLAP = 0.2  # SAHI's default overlap ratio between neighbouring slices
# A box within this fraction of the tile side from an inner tile edge counts as cut (predicted borders of a cut
# object land on or just inside the edge).
EDGE_MARGIN = 0.02
IOS_THRESHOLD = 0.6  # a cut box at least this much inside a larger box is a piece of it
PAIR_CHUNK = 512  # rows of the pairwise intersection matrices at a time: 512 x 5000 x 8 bytes = 20 MB

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in full-image pixels, x1/y1 exclusive


def tile_problem(tile: int) -> str | None:
    return None if tile == 0 or tile >= MIN_TILE else f"must be 0 (off) or at least {MIN_TILE} pixels, got {tile}"


def overlap_problem(overlap: float) -> str | None:
    return None if 0.0 <= overlap < 1.0 else f"must be in [0, 1), got {overlap:g}"


def check_tile(tile: int, overlap: float) -> None:
    """Raise ``ValueError`` naming the option when ``tile`` (0: off) or ``overlap`` is out of range."""
    for name, problem in (("tile", tile_problem(tile)), ("tile overlap", overlap_problem(overlap))):
        if problem:
            raise ValueError(f"{name} {problem}")


# tiles of one image at the most: past this, an --tile-overlap close to 1 or a tiny --tile is almost surely a slip
# (0.99 on a 12 MP photo in 512 px tiles plans 348,801 tiles, hours of work), while a 100000 x 100000 px scene in
# 512 px tiles at the default overlap is 59,536 (a 30000 x 30000 one 5,329)
MAX_TILES = 65_536


def _stride(tile: int, overlap: float) -> int:
    return max(1, tile - round(overlap * tile))


def _start_count(length: int, tile: int, stride: int) -> int:
    return 1 if length <= tile else math.ceil((length - tile) / stride) + 1


def tile_count(height: int, width: int, tile: int, overlap: float = DEFAULT_TILE_OVERLAP) -> int:
    """How many tiles :func:`tile_grid` cuts the image into, without listing them."""
    stride = _stride(tile, overlap)
    return _start_count(width, tile, stride) * _start_count(height, tile, stride)


def too_many_tiles(height: int, width: int, tile: int, overlap: float) -> str | None:
    """Why an image is not tiled (more than :data:`MAX_TILES`), as one phrase; None when it may be."""
    count = tile_count(height, width, tile, overlap)
    if count <= MAX_TILES:
        return None
    return (f"{width}x{height} in {tile} px tiles at overlap {overlap:g} is {count:,} tiles (more than {MAX_TILES:,}): "
            "lower --tile-overlap or raise --tile")  # fmt: skip


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride`` px, the last one moved back to end at the image edge."""
    if length <= tile:
        return [0]
    count = _start_count(length, tile, stride)
    return [i * stride for i in range(count - 1)] + [length - tile]


def tile_grid(height: int, width: int, tile: int, overlap: float = DEFAULT_TILE_OVERLAP) -> list[Rect]:
    """Tiles covering an image, row by row: ``tile`` x ``tile`` px (smaller only where the image is), neighbours
    overlapping by at least ``round(overlap * tile)`` px; edge tiles are shifted inside the image, not padded.
    """
    check_tile(tile, overlap)
    problem = too_many_tiles(height, width, tile, overlap)
    if problem:
        raise ValueError(problem)
    stride = _stride(tile, overlap)
    xs, ys = _starts(width, tile, stride), _starts(height, tile, stride)
    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]


def iter_batches(image: np.ndarray, rects: Sequence[Rect], batch_size: int) -> Iterator[list[np.ndarray]]:
    """The crops of ``rects``, ``batch_size`` at a time; a crop is a view, copied only by pre-processing."""
    for start in range(0, len(rects), batch_size):
        yield [image[y0:y1, x0:x1] for x0, y0, x1, y1 in rects[start : start + batch_size]]


def cut_boxes(boxes: torch.Tensor, rect: Rect, image_hw: tuple[int, int]) -> torch.Tensor:
    """Which ``boxes`` (full-image pixels, found in tile ``rect``) touch an inner edge of the tile."""
    x0, y0, x1, y1 = rect
    h, w = image_hw
    margin = EDGE_MARGIN * max(x1 - x0, y1 - y0)
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < w:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < h:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def pieces_of_larger_boxes(
    boxes: torch.Tensor, groups: torch.Tensor | None, rows: torch.Tensor, threshold: float = IOS_THRESHOLD
) -> torch.Tensor:
    """For each index in ``rows``: is more than ``threshold`` of that box inside a larger box of its group?"""
    b = boxes.double().cpu().numpy()
    g = None if groups is None else groups.cpu().numpy()
    areas = box_areas(b)
    idx = rows.cpu().numpy()
    out = np.zeros(len(idx), dtype=bool)
    for start in range(0, len(idx), PAIR_CHUNK):
        r = idx[start : start + PAIR_CHUNK]
        with np.errstate(invalid="ignore", divide="ignore"):  # zero-area boxes: NaN, never a piece
            inside = box_intersections(b[r], b) / areas[r, None] > threshold
        inside &= areas[None, :] > areas[r, None]
        if g is not None:
            inside &= g[r, None] == g[None, :]
        out[start : start + PAIR_CHUNK] = inside.any(1)
    return torch.from_numpy(out)


def drop_cross_source_duplicates(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor | None, sources: torch.Tensor, iou: float
) -> torch.Tensor:
    """Greedy, best score first: drop boxes with IoU > ``iou`` against a kept box of the same group from another
    source (tile). Kept indices, best first. Boxes of one source never suppress each other.
    """
    order = torch.argsort(scores, descending=True, stable=True).numpy()
    b = boxes.double().numpy()[order]
    src = sources.numpy()[order]
    g = None if groups is None else groups.numpy()[order]
    areas = box_areas(b)
    alive = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if not alive[i]:
            continue
        rest = np.arange(i + 1, len(order))[alive[i + 1 :]]
        inter = box_intersections(b[i : i + 1], b[rest])[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            dup = inter / (areas[i] + areas[rest] - inter) > iou
        dup &= src[rest] != src[i]
        if g is not None:
            dup &= g[rest] == g[i]
        alive[rest[dup]] = False
    return torch.from_numpy(order[alive])


def merge_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    sources: torch.Tensor,
    cut: torch.Tensor,
    *,
    nms: str = "hard",
    iou_threshold: float = 0.5,
    max_det: int = 100,
    class_agnostic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes, scores and labels of all passes (full-image pixels) -> one image's detections, best first.

    ``sources``: which pass found each box (any id per tile, e.g. -1 for the full image); ``cut``: whether the box
    touches an inner tile edge (:func:`cut_boxes`). See the module docstring for the rules.
    """
    groups = None if class_agnostic else labels
    rows = torch.nonzero(cut).squeeze(1)
    if len(rows):
        keep = torch.ones(len(boxes), dtype=torch.bool)
        keep[rows[pieces_of_larger_boxes(boxes, groups, rows)]] = False
        boxes, scores, labels, sources = boxes[keep], scores[keep], labels[keep], sources[keep]
        groups = None if class_agnostic else labels
    if nms == "soft":
        order = drop_cross_source_duplicates(boxes, scores, groups, sources, iou_threshold)[:max_det]
    else:
        order = batched_nms(boxes, scores, groups, iou_threshold, max_det)
    return boxes[order], scores[order], labels[order]


def detect_tiled(detector: Detector, image: np.ndarray) -> dict[str, Any]:
    """One image's detections from tiles of ``detector.tile`` px plus a full-image pass (see the module docstring).

    An image no larger than one tile is a plain pass. Items (the full image first, then the tiles) go through
    the network ``detector.batch_size`` at a time.
    """
    h, w = image.shape[:2]
    rects = tile_grid(h, w, detector.tile, detector.tile_overlap)
    if len(rects) > 1:
        rects = [(0, 0, w, h), *rects]  # the full-image pass: objects larger than a tile
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    done = 0
    for crops in iter_batches(image, rects, detector.batch_size):
        batch, scales, sizes = detector.preprocess(crops)
        del crops  # the pre-processed batch is all that is needed now
        for det in detector.predict_tensor(batch, scales, sizes, filter_classes=False):
            rect = rects[done]
            shifted = det["boxes"] + torch.tensor([rect[0], rect[1], rect[0], rect[1]], dtype=det["boxes"].dtype)
            full = rect == (0, 0, w, h)
            cut = torch.zeros(len(shifted), dtype=torch.bool) if full else cut_boxes(shifted, rect, (h, w))
            source = torch.full((len(shifted),), done - 1 if len(rects) > 1 else 0)
            parts.append((shifted, det["scores"], det["labels"], source, cut))
            done += 1
    boxes, scores, labels, sources, cut = (torch.cat(column) for column in zip(*parts))
    if len(scores) > detector.topk:  # bounded merge work: the best candidates only, as the per-image top-k does
        best = torch.topk(scores, detector.topk).indices
        boxes, scores, labels, sources, cut = boxes[best], scores[best], labels[best], sources[best], cut[best]
    merged = merge_detections(
        boxes, scores, labels, sources, cut, nms=detector.nms, iou_threshold=detector.iou_threshold,
        max_det=detector.max_det, class_agnostic=detector.class_agnostic,
    )  # fmt: skip
    return detector.result(*merged)
