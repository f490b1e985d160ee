"""From raw network outputs to detections: top-k over anchor x class, box decoding, NMS (paper, section 5.1;
official code: tf2/postprocess.py).

Plain torch, and numpy for the greedy NMS loops (the few thousand candidate boxes are copied to the CPU whatever
the device) and for the top-k's selection steps on CPU tensors; where torchvision is importable its NMS kernel
runs hard NMS on the sets it is faster for (same results; see :func:`_own_nms_is_faster`). Two things keep this
fast where other ports are slow:

- the top-k over anchor x class never materialises the ``[anchors, classes]`` matrix: the per-anchor maximum
  bounds the k-th best score, so only the classes of the k best anchors are ranked (exact, see
  :func:`select_candidates`);
- hard NMS resolves a block of candidates at a time against one small IoU matrix (see :func:`_greedy_hard`),
  soft-NMS drops boxes as they fall below the floor; both run on numpy arrays (no per-op dispatch overhead) and
  stop once ``max_det`` boxes are kept.

A picture smaller than the input (letterboxed: padded below or right of it) gives candidates in the padding; where
the caller says where the picture is (``regions``), boxes are clipped to it before NMS and those left empty are
dropped, as effdet clips to the picture before its NMS and detectron2 drops empty boxes. Otherwise they would come
back as zero-area boxes on the picture's edge, taking ``max_det`` slots from real candidates (a Lite0 trained on
raccoon: 16% of the 100 boxes an image that evaluation keeps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..utils.boxes import box_areas, box_intersections
from .anchors import decode_boxes

try:  # optional accelerator, never required
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # noqa: BLE001 - any import problem just means "not available"
    _tv_batched_nms = None

TOPK_CANDIDATES = 5000  # top (anchor, class) scores: effdet's max_detection_points; early official anchors.py
MAX_DETECTIONS = 100  # per image: official code's hparams_config.py nms_configs['max_output_size']
NMS_IOU = 0.5  # effdet's default hard-NMS threshold
SOFT_NMS_SIGMA = 0.5  # paper, section 5.1 (soft-NMS for eval); official tf2/postprocess.py nms(), 'gaussian'
SOFT_NMS_SCORE_FLOOR = 0.001  # boxes decayed below this are dropped
NMS_METHODS = ("hard", "soft")
OWN_NMS_MIN_RATIO = 10  # candidates per kept box above which our NMS runs even where torchvision's is importable
MIN_BOX_SIDE = 0.01  # input px: a box clipped to the picture thinner than this is dropped (torchvision's min_size)


def flatten_outputs(
    class_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level NCHW outputs -> ``[B, anchors, num_classes]`` logits and ``[B, anchors, 4]`` box codes.

    Anchor order is level, y, x, anchor: the order of :func:`efficientdet.anchors.generate_anchors`.
    """
    b = class_outputs[0].shape[0]
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1, num_classes) for c in class_outputs], 1)
    box = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in box_outputs], 1)
    return cls, box


def to_original_pixels(
    boxes: torch.Tensor, scale: float | tuple[float, float] = 1.0, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Undo the pre-processing resize and clip to the image (H, W).

    ``scale`` is input px per original px: one factor, or the exact ``(x, y)`` ratios of the resize
    (``Resized.scale_xy``), which is what inverts a resize whose output size was rounded to whole pixels.
    A size of 0 or ``None`` (unknown) clips only at 0.
    """
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else scale
    boxes = boxes / torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    h, w = size if size is not None else (None, None)
    return clip_boxes(boxes, (0, 0, w or None, h or None))


def clip_boxes(
    boxes: torch.Tensor, region: tuple[float | None, float | None, float | None, float | None]
) -> torch.Tensor:
    """``[N, 4]`` boxes (x1, y1, x2, y2) clipped to ``region`` (x1, y1, x2, y2; None: no bound on that side)."""
    left, top, right, bottom = region
    x = boxes[:, 0::2].clamp(left, right)
    y = boxes[:, 1::2].clamp(top, bottom)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def clip_to_region(boxes: torch.Tensor, region: tuple[float, float, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, 4]`` boxes (x1, y1, x2, y2) clipped to ``region`` (x1, y1, x2, y2), and which of them keep a side of
    at least MIN_BOX_SIDE on both axes (a sliver along the region's edge is no detection either)."""
    clipped = clip_boxes(boxes, region)
    sides = clipped[:, 2:] - clipped[:, :2]
    return clipped, (sides >= MIN_BOX_SIDE).all(dim=1)


def box_iou_one_to_many(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one (x1, y1, x2, y2) box against ``[N, 4]`` boxes (areas as torchvision computes them)."""
    x1 = torch.maximum(box[0], boxes[:, 0])
    y1 = torch.maximum(box[1], boxes[:, 1])
    x2 = torch.minimum(box[2], boxes[:, 2])
    y2 = torch.minimum(box[3], boxes[:, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def _columns(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` (x1, y1, x2, y2) -> ``[N, 5]`` with the area appended: what the IoU loops index."""
    return np.concatenate([boxes, box_areas(boxes)[:, None]], 1)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every ``a`` box against every ``b`` box (rows from :func:`_columns`); 0/0 gives NaN."""
    inter = box_intersections(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):  # point boxes: NaN, which never suppresses
        return inter / (a[:, None, 4] + b[None, :, 4] - inter)


def _offset_by_class(boxes: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """Shift each class's boxes to its own region so one class-agnostic pass equals per-class NMS."""
    if classes is None or boxes.numel() == 0:
        return boxes
    span = (boxes.max() - boxes.min()).clamp(min=0) + 1
    return boxes + ((classes.to(boxes) * span)[:, None] - boxes.min())


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor | None,
    iou_threshold: float = NMS_IOU,
    max_keep: int | None = None,
) -> torch.Tensor:
    """Greedy hard NMS within each class (``classes=None``: across classes); kept indices, best first.

    A box is suppressed by a higher-scoring kept box of the same class with IoU > ``iou_threshold``. Equal scores
    keep their input order. Stops once ``max_keep`` boxes are kept.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if _tv_batched_nms is not None and not _own_nms_is_faster(boxes, max_keep):
        labels = classes if classes is not None else torch.zeros_like(scores, dtype=torch.long)
        keep = _tv_batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
        return keep if max_keep is None else keep[:max_keep]
    order = torch.argsort(scores, descending=True, stable=True)
    limit = len(order) if max_keep is None else max_keep
    # float64 so that the class offsets cost no precision; a few KB to copy even from a GPU
    kept = _greedy_hard(_offset_by_class(boxes.double(), classes)[order].cpu().numpy(), iou_threshold, limit)
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def _own_nms_is_faster(boxes: torch.Tensor, max_keep: int | None) -> bool:
    """Whether :func:`_greedy_hard` beats torchvision's kernel (when that is installed): on the CPU, with more than
    ``OWN_NMS_MIN_RATIO`` candidates per box wanted. torchvision's CPU kernel compares each kept box with every
    candidate after it; ours stops once ``max_keep`` are kept. On the candidates of ``eval`` (score threshold
    0.001, a trained Lite0, 3,800-5,000 an image, 100 kept) ours took 2.2 against 3.7 ms an image on BCCD and 1.9
    against 11.3 on raccoon, the same picks; on a few hundred candidates the kernel is quicker (0.05-0.1 against
    0.1-0.5 ms), and on some sets of a few thousand too (BCCD's above a score of 0.05: 1.2 against 1.7 ms), but
    ours stays within a few ms where the kernel's time grows with the boxes it keeps. Without a cap, and on a GPU,
    the kernel stays."""
    return boxes.device.type == "cpu" and max_keep is not None and len(boxes) > OWN_NMS_MIN_RATIO * max_keep


def _greedy_hard(boxes: np.ndarray, iou_threshold: float, limit: int) -> list[int]:
    """Greedy NMS over score-sorted boxes, a block at a time.

    The textbook loop costs one vectorised pass over all remaining boxes per kept box. Here the boxes are taken in
    score order a block at a time: a block is first filtered by every box kept so far (one IoU matrix), then its
    survivors are resolved among themselves (one small IoU matrix and a cheap loop over its rows). Every box is thus
    checked against every higher-scoring kept box, as in the textbook loop, with the same result; but only the
    boxes up to the last one needed are ever compared. The block is about twice the number of boxes still wanted,
    divided by the share of the last block that was kept (boxes in clusters are mostly suppressed), so a typical
    image needs one or two blocks. (Filtering all remaining boxes after each block instead cost 4.4 ms for 5000
    candidates of a random-weight Lite0 at 320 px, of which the second block used 32.)
    """
    cols = _columns(boxes)
    keep: list[int] = []
    kept_cols = cols[:0]
    start, kept_share = 0, 1.0
    while start < len(cols) and len(keep) < limit:
        wanted = limit - len(keep)
        size = min(math.ceil(max(2 * wanted, 32) / max(kept_share, 1 / 16)), 512)
        stop = min(start + size, len(cols))
        block, block_cols = np.arange(start, stop), cols[start:stop]
        start = stop
        if len(keep):
            alive = ~(_iou_matrix(kept_cols, block_cols) > iou_threshold).any(0)
            block, block_cols = block[alive], block_cols[alive]
        suppresses = _iou_matrix(block_cols, block_cols) > iou_threshold
        dead = np.zeros(len(block), dtype=bool)
        kept: list[int] = []
        for j in range(len(block)):
            if dead[j]:
                continue
            kept.append(j)
            if len(keep) + len(kept) == limit:
                break
            dead |= suppresses[j]
        keep.extend(block[kept].tolist())
        kept_cols = np.concatenate([kept_cols, block_cols[kept]])
        kept_share = len(kept) / size
    return keep


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor | None,
    sigma: float = SOFT_NMS_SIGMA,
    score_floor: float = SOFT_NMS_SCORE_FLOOR,
    max_keep: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS (Bodla et al. 2017) within each class; (kept indices, decayed scores), best first.

    Repeatedly keeps the highest current score and multiplies the scores of the others by
    ``exp(-IoU^2 / sigma)``; boxes whose score falls below ``score_floor`` are dropped. The official EfficientDet
    evaluation uses sigma 0.5 and floor 0.001. Equal scores are kept in input order.

    Classes never decay each other, so each class runs on its own boxes (:func:`_soft_nms_one_class`) and the
    picks are merged by score: each class's picks come best first, so the merge is the order one loop over every
    box would have taken them in, at a fraction of the work where there are several classes.
    """
    device = boxes.device
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=device), torch.empty(0, device=device)
    # float64 offsets, as in hard NMS: the columns and so the IoUs are those of one loop over every class
    cols = _columns(_offset_by_class(boxes.double(), classes).cpu().numpy())
    current = scores.double().cpu().numpy()
    in_play = np.flatnonzero(current >= score_floor)  # input order
    limit = len(in_play) if max_keep is None else max_keep
    if classes is None:
        groups = [in_play]
    else:
        labels = classes.cpu().numpy()[in_play]
        by_class = in_play[np.argsort(labels, kind="stable")]  # each class's boxes still in input order
        groups = np.split(by_class, np.flatnonzero(np.diff(np.sort(labels))) + 1)
    picked_scores, picked = [], []
    for group in groups:
        index, score = _soft_nms_one_class(cols[group], current[group], sigma, score_floor, limit)
        picked.append(group[index])
        picked_scores.append(score)
    picked_index, picked_score = np.concatenate(picked), np.concatenate(picked_scores)
    order = np.lexsort((picked_index, -picked_score))[:limit]  # best first; equal scores: input order
    return (
        torch.as_tensor(picked_index[order], dtype=torch.long, device=device),
        torch.as_tensor(picked_score[order], dtype=scores.dtype, device=device),
    )


def _soft_nms_one_class(
    cols: np.ndarray, scores: np.ndarray, sigma: float, score_floor: float, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS over the boxes of one class (rows from :func:`_columns`, scores >= ``score_floor``, in
    input order): (positions picked, their decayed scores), best first, at most ``limit``.

    Each pick decays only the boxes that intersect it (the others' factor would be exp(0) = 1); a box picked or
    decayed below the floor leaves play by its score alone (-inf, or under the floor, which the next best never
    is), and the arrays are compacted once half of them are out of play: the loop costs a few whole-array passes
    per pick instead of a dozen.
    """
    x1, y1, x2, y2, area = (np.ascontiguousarray(c) for c in cols.T)
    current = scores.copy()
    position = np.arange(len(current))
    out_of_play = 0
    picks, picked_scores = [], []
    while len(picks) < limit and len(current):
        j = int(np.argmax(current))
        best = current[j]
        if best < score_floor:
            break
        picks.append(position[j])
        picked_scores.append(best)
        current[j] = -np.inf
        width = np.minimum(x2, x2[j]) - np.maximum(x1, x1[j])
        height = np.minimum(y2, y2[j]) - np.maximum(y1, y1[j])
        touching = np.flatnonzero((width > 0) & (height > 0) & (current >= score_floor))
        if len(touching):
            inter = width[touching] * height[touching]  # > 0, so the union is too
            iou = inter / (area[j] + area[touching] - inter)
            decayed = current[touching] * np.exp(-(iou**2) / sigma)
            current[touching] = decayed
            out_of_play += int((decayed < score_floor).sum())
        out_of_play += 1
        if out_of_play * 2 > len(current):  # compact: keep the boxes still in play, in order
            alive = current >= score_floor
            x1, y1, x2, y2, area = x1[alive], y1[alive], x2[alive], y2[alive], area[alive]
            current, position, out_of_play = current[alive], position[alive], 0
    return np.asarray(picks, dtype=np.int64), np.asarray(picked_scores, dtype=np.float64)


def vote_boxes(
    kept: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor | None,
    iou_threshold: float,
) -> torch.Tensor:
    """Box voting (Gidaris and Komodakis, ICCV 2015): each kept box (indices ``kept`` into ``boxes``) moves to the
    score-weighted mean of the candidates of its class that overlap it by IoU >= ``iou_threshold``, itself
    included; its score stays. NMS keeps one box of a cluster and throws away what the others say about where the
    object is; the weighted mean places a box more tightly than its single best-scored member when neighbours err
    on different sides.
    """
    if kept.numel() == 0:
        return boxes[kept]
    rows, own = np.arange(len(kept)), kept.cpu().numpy()
    cols = _columns(_offset_by_class(boxes.double(), classes).cpu().numpy())
    iou = np.nan_to_num(_iou_matrix(cols[own], cols))  # [kept, candidates]; a point box overlaps nothing
    weights = np.where(iou >= iou_threshold, scores.double().cpu().numpy()[None, :], 0.0)
    weights[rows, own] = np.maximum(weights[rows, own], 1e-12)  # the box itself always votes, even at score 0
    voted = weights @ boxes.double().cpu().numpy() / weights.sum(1, keepdims=True)
    return torch.as_tensor(voted, dtype=boxes.dtype, device=boxes.device)


def _numpy_view(x: torch.Tensor) -> np.ndarray | None:
    """``x`` as a numpy array sharing its memory where numpy can (a CPU tensor of 32 or 64-bit floats), else None.

    The selection steps below run in numpy there: ``np.partition`` and ``np.flatnonzero`` do in one pass what
    ``torch.kthvalue`` (a copy, then the selection) and ``torch.nonzero`` (a count, then the indices) do in two,
    without torch's per-op dispatch. Measured on D0's OpenVINO int8 outputs at 512 px (49,104 anchors x 90
    classes; one thread of a 2-core Xeon, interleaved with the torch version): the whole post-processing 4.2 -> 3.1
    ms, the same detections.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None  # a GPU tensor, or bf16 / fp16 from autocast: torch's own ops
    return x.detach().numpy()


def _kth_largest(values: torch.Tensor, k: int) -> float:
    """The ``k``-th largest of a 1-D tensor (``1 <= k <= len(values)``)."""
    array = _numpy_view(values)
    if array is None:
        return float(torch.kthvalue(values, len(values) - k + 1).values)
    return float(np.partition(array, len(array) - k)[len(array) - k])


def _indices_at_least(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Ascending indices of the entries of a 1-D tensor that are ``>= threshold`` (int64, on its device)."""
    array = _numpy_view(values)
    if array is None:
        return torch.nonzero(values >= threshold).squeeze(1)
    return torch.from_numpy(np.flatnonzero(array >= threshold).astype(np.int64, copy=False))


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat``, without its copy when there is one part (an exported file's one flat level)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class ClassOutputs(list):
    """A network's per-level class logits (the list every network returns), with each anchor's best logit where
    the network computed it.

    ``anchor_maxima``: ``[B, A]``, the maximum over the classes of each anchor's logits, for a network that returns
    one flat level (``[B, A*C, 1, 1]``, an exported file): the reduction :func:`select_candidates` would otherwise
    run over every logit on the host. An OpenVINO network computes it inside its graph, on the runtime's own
    threads (:class:`efficientdet.runtimes.OpenVinoNetwork`). Only a shortcut: code that builds a plain list
    instead loses it and gets the same candidates the long way.
    """

    def __init__(self, levels: list[torch.Tensor], anchor_maxima: torch.Tensor | None = None) -> None:
        super().__init__(levels)
        self.anchor_maxima = anchor_maxima


def select_candidates(
    class_outputs: list[torch.Tensor],
    box_outputs: list[torch.Tensor],
    num_classes: int,
    topk: int = TOPK_CANDIDATES,
    min_logit: float = -math.inf,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The ``topk`` best (anchor, class) logits of each image: (logits, anchor indices, labels, box codes).

    With ``min_logit``, only pairs whose logit is at least that are candidates: the top k of those, which is the
    top k of all pairs with the lower ones dropped. A score threshold passed this way (as its logit) spares the
    gathering of every anchor that cannot reach it, most of them for a trained model.

    Exact, without ranking all anchors x classes: the k-th best per-anchor maximum ``t`` is a lower bound of the
    k-th best (anchor, class) logit (the k best anchors each hold one logit >= t), so every top-k pair belongs to
    an anchor whose maximum is >= t. Only those anchors' classes are ranked: ~k x C values instead of A x C. A
    network that computed the per-anchor maxima itself (:class:`ClassOutputs`) spares their reduction here.

    The work is done in the NCHW outputs' own order (anchor, class, position): the per-anchor maximum reduces over
    whole class planes, and the chosen anchors are visited plane by plane, so gathering their C logits reads
    each plane front to back instead of jumping between planes (measured on D0's largest level: half the time of
    a position-major gather). On the CPU the k-th best maximum and the lists of indices at or above it come from
    numpy (:func:`_numpy_view`). Anchor indices are returned in the order of
    :func:`efficientdet.anchors.generate_anchors` (level, y, x, anchor).
    """
    b = class_outputs[0].shape[0]
    c = num_classes
    levels = []  # per level: logits [B, A, C, H*W], box codes [B, A, 4, H*W]
    for cls, box in zip(class_outputs, box_outputs):
        _, ac, h, w = cls.shape
        levels.append((cls.contiguous().view(b, ac // c, c, h * w), box.contiguous().view(b, ac // c, 4, h * w)))
    total = sum(cv.shape[1] * cv.shape[3] for cv, _ in levels)
    given = getattr(class_outputs, "anchor_maxima", None)
    if given is not None and len(levels) == 1 and levels[0][0].shape[3] == 1:  # one flat level: anchor = plane idx
        maxima = [given.reshape(b, -1)]
    else:
        maxima = [cv.amax(2).view(b, -1) for cv, _ in levels]  # per level: each anchor's best logit [B, A*H*W]
    results = []
    for i in range(b):
        best = _cat([level_best[i] for level_best in maxima])
        if total * c <= topk or (min_logit > -math.inf and len(_indices_at_least(best, min_logit)) <= topk):
            threshold = min_logit  # at most k anchors can reach it: no k-th best needed
        else:  # the k-th largest per-anchor max
            threshold = max(_kth_largest(best, min(topk, total)), min_logit)
        logits_parts, index_parts, code_parts = [], [], []
        offset = 0
        for (cv, bv), level_best in zip(levels, maxima):
            _, a, _, hw = cv.shape
            plane_idx = _indices_at_least(level_best[i], threshold)  # anchor * H*W + position, ascending
            if hw == 1:  # a flat level (an exported file's): rows of one [A, C] matrix
                logits_parts.append(cv[i, :, :, 0].index_select(0, plane_idx))
                code_parts.append(bv[i, :, :, 0].index_select(0, plane_idx))
                index_parts.append(plane_idx + offset)
            else:
                anchor, position = torch.div(plane_idx, hw, rounding_mode="floor"), plane_idx % hw
                logits_parts.append(cv[i][anchor, :, position])
                code_parts.append(bv[i][anchor, :, position])
                index_parts.append(position * a + anchor + offset)
            offset += a * hw
        logits, anchor_idx, codes = _cat(logits_parts), _cat(index_parts), _cat(code_parts)
        flat = _indices_at_least(logits.reshape(-1), threshold)  # the top k are all >= t: rank fewer
        top, pos = torch.topk(logits.reshape(-1)[flat], min(topk, flat.numel()))
        flat = flat[pos]
        row = torch.div(flat, c, rounding_mode="floor")
        results.append((top, anchor_idx[row], flat % c, codes[row]))
    return results


def postprocess(
    class_outputs: list[torch.Tensor],
    box_outputs: list[torch.Tensor],
    anchors: torch.Tensor,
    num_classes: int,
    topk: int = TOPK_CANDIDATES,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    score_threshold: float = 0.0,
    nms: str = "hard",
    class_agnostic: bool = False,
    soft_sigma: float = SOFT_NMS_SIGMA,
    vote_iou: float | None = None,
    regions: Sequence[tuple[float, float, float, float]] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Detections per image: ``boxes`` (x1, y1, x2, y2, input pixels), ``scores``, ``labels`` (0-based).

    ``nms="hard"``: greedy NMS at ``iou_threshold``; ``nms="soft"``: Gaussian soft-NMS (``soft_sigma``, boxes
    below max(``score_threshold``, 0.001) dropped; scores are the decayed ones). ``class_agnostic`` lets boxes of
    different classes suppress each other. ``vote_iou``: box voting at that IoU after NMS (:func:`vote_boxes`).
    ``regions``: per image, where the picture lies in the input (x1, y1, x2, y2, input pixels; see the module
    docstring): candidates are clipped to it and those left empty (:data:`MIN_BOX_SIDE`) dropped, before the
    threshold and NMS.
    """
    if nms not in NMS_METHODS:
        raise ValueError(f"unknown NMS method {nms!r}; choose from {', '.join(NMS_METHODS)}")
    results = []
    # candidates need a logit of about logit(score_threshold); a little below, so that float rounding in the
    # sigmoid cannot lose a box the exact mask below keeps
    min_logit = math.log(score_threshold / (1 - score_threshold)) - 1e-3 if 0 < score_threshold < 1 else -math.inf
    candidates = select_candidates(class_outputs, box_outputs, num_classes, topk, min_logit)
    for i, (logits, anchor_idx, labels, codes) in enumerate(candidates):
        scores = torch.sigmoid(logits.float())
        boxes = decode_boxes(codes.float(), anchors[anchor_idx].to(codes.device).float())
        mask = None
        if regions is not None:
            boxes, mask = clip_to_region(boxes, regions[i])
        if score_threshold > 0:
            mask = scores >= score_threshold if mask is None else mask & (scores >= score_threshold)
        if mask is not None:
            boxes, scores, labels = boxes[mask], scores[mask], labels[mask]
        groups = None if class_agnostic else labels
        if nms == "soft":
            keep, scores_kept = soft_nms(
                boxes, scores, groups, soft_sigma, max(score_threshold, SOFT_NMS_SCORE_FLOOR), max_det
            )
        else:
            keep = batched_nms(boxes, scores, groups, iou_threshold, max_det)
            scores_kept = scores[keep]
        kept_boxes = boxes[keep] if vote_iou is None else vote_boxes(keep, boxes, scores, groups, vote_iou)
        results.append({"boxes": kept_boxes, "scores": scores_kept, "labels": labels[keep]})
    return results
