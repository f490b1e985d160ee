"""Training targets: match anchors to ground-truth boxes, vectorised over anchors and boxes.

Official matching: IoU >= 0.5 positive, < 0.5 negative, and every ground-truth box is force-matched to its best
anchor. The official code's ``unmatched_threshold`` (here ``unmatched_iou``) may open RetinaNet's ignore band: anchors
whose best IoU lies in [unmatched_iou, match_iou) contribute no loss (RetinaNet: 0.4 to 0.5). Crowd boxes never
become targets; anchors that would match one are ignored (no loss at all).

:class:`AtssLabeler` is the alternative of Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection" (CVPR 2020): each box sets its own IoU threshold from the anchors
nearest its centre, so large and small boxes get a comparable number of positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.config import ModelConfig
from .anchors import anchors_for_config, encode_boxes, feature_sizes

MATCH_IOU = 0.5  # the official matcher: positive at IoU >= 0.5, negative below (no ignore band)
ATSS_TOPK = 9  # ATSS: candidates per level and anchor shape (the paper's k; it found k from 7 to 17 alike)
ASSIGNERS = ("iou", "atss")
NEGATIVE = -1  # class target of a background anchor
IGNORE = -2  # class target of an anchor that contributes no loss


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[len(a), len(b)]`` of x1y1x2y2 boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


@dataclass
class Targets:
    """Per-anchor targets for a batch: ``cls`` [B, A] (class, NEGATIVE or IGNORE), ``box`` [B, A, 4] codes."""

    cls: torch.Tensor
    box: torch.Tensor
    num_positives: torch.Tensor  # [B]


class AnchorLabeler:
    """Assigns each anchor a class target and a box regression target."""

    def __init__(
        self, anchors_yxyx: torch.Tensor, match_iou: float = MATCH_IOU, unmatched_iou: float | None = None
    ) -> None:
        self.anchors_yxyx = anchors_yxyx
        self.anchors_xyxy = anchors_yxyx[:, [1, 0, 3, 2]]
        self.match_iou = match_iou
        self.unmatched_iou = match_iou if unmatched_iou is None else unmatched_iou
        if not 0 < self.unmatched_iou <= match_iou:
            raise ValueError(f"unmatched_iou must be in (0, match_iou = {match_iou:g}], got {self.unmatched_iou:g}")

    def label_image(
        self, boxes: torch.Tensor, labels: torch.Tensor, iscrowd: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Targets for one image. ``boxes`` x1y1x2y2 input pixels, ``labels`` 0-based."""
        n = self.anchors_xyxy.shape[0]
        device = self.anchors_xyxy.device
        cls = torch.full((n,), NEGATIVE, dtype=torch.long, device=device)
        box = torch.zeros((n, 4), dtype=torch.float32, device=device)
        crowd = torch.zeros(len(boxes), dtype=torch.bool, device=device) if iscrowd is None else iscrowd.bool()
        real = ~crowd
        if crowd.any():
            crowd_iou = box_iou(self.anchors_xyxy, boxes[crowd]).amax(1)
            cls[crowd_iou >= self.match_iou] = IGNORE
        boxes, labels = boxes[real], labels[real]
        if len(boxes) == 0:
            return cls, box, 0
        iou = box_iou(self.anchors_xyxy, boxes)  # [A, G]
        positive, best_gt = self.assign(iou, boxes)
        if self.unmatched_iou < self.match_iou:  # the ignore band: neither positive nor background
            cls[~positive & (iou.amax(1) >= self.unmatched_iou)] = IGNORE
        cls[positive] = labels[best_gt[positive]]
        matched = boxes[best_gt[positive]][:, [1, 0, 3, 2]]  # to y1x1y2x2 for the coder
        box[positive] = encode_boxes(matched, self.anchors_yxyx[positive])
        return cls, box, int(positive.sum())

    def assign(self, iou: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which anchors are positives (``[A]`` bool) and the box each one regresses to (``[A]`` index)."""
        best_iou, best_gt = iou.max(1)
        positive = best_iou >= self.match_iou
        # force-match: each box takes its best anchor. An anchor that is the best of several boxes goes to the
        # first of them, as in the official matcher (argmax over a one-hot of the forced matches). The smallest
        # box index per anchor is taken explicitly: an indexed assignment with repeated indices has no defined order.
        forced = iou.argmax(0)  # [G]
        num_boxes, n, device = len(boxes), iou.shape[0], iou.device
        first_box = torch.full((n,), num_boxes, dtype=torch.long, device=device)
        first_box.scatter_reduce_(0, forced, torch.arange(num_boxes, device=device), reduce="amin")
        is_forced = first_box < num_boxes
        best_gt = torch.where(is_forced, first_box, best_gt)
        positive |= is_forced
        return positive, best_gt

    def __call__(self, targets: list[dict[str, torch.Tensor]]) -> Targets:
        """Batch of per-image dicts with ``boxes``, ``labels`` and optionally ``iscrowd``."""
        cls, box, npos = zip(*(self.label_image(t["boxes"], t["labels"], t.get("iscrowd")) for t in targets))
        return Targets(torch.stack(cls), torch.stack(box), torch.tensor(npos, dtype=torch.float32))


class AtssLabeler(AnchorLabeler):
    """Adaptive training sample selection (Zhang et al., CVPR 2020, Algorithm 1) in place of the fixed IoU.

    For each box: on every pyramid level the ``topk`` x anchors-per-location anchors whose centres lie nearest the
    box's centre are candidates (the authors' code scales k by the anchors per location); the box's threshold is
    the mean plus the standard deviation of the candidates' IoUs; candidates at or above it whose centre lies inside
    the box are its positives. An anchor positive for several boxes takes the one it overlaps most. There is no
    forced match: a box with no candidate centre inside it has no positive, as in the paper. Crowd boxes are
    handled as by :class:`AnchorLabeler` (anchors at IoU >= ``match_iou`` with one are ignored).
    """

    def __init__(
        self,
        anchors_yxyx: torch.Tensor,
        level_counts: Sequence[int],
        anchors_per_location: int,
        topk: int = ATSS_TOPK,
        match_iou: float = MATCH_IOU,
    ) -> None:
        super().__init__(anchors_yxyx, match_iou)
        if sum(level_counts) != anchors_yxyx.shape[0]:
            raise ValueError(f"level_counts add up to {sum(level_counts)}, not the {anchors_yxyx.shape[0]} anchors")
        self.level_counts = list(level_counts)
        self.candidates_per_level = topk * anchors_per_location
        self.centres = (self.anchors_xyxy[:, :2] + self.anchors_xyxy[:, 2:]) / 2  # [A, 2] x, y

    def assign(self, iou: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [G, 2]
        distance = torch.cdist(self.centres, box_centres)  # [A, G]
        candidates, start = [], 0
        for count in self.level_counts:
            k = min(self.candidates_per_level, count)
            candidates.append(distance[start : start + count].topk(k, dim=0, largest=False).indices + start)
            start += count
        candidate = torch.cat(candidates)  # [K, G] anchor indices
        candidate_iou = iou.gather(0, candidate)
        threshold = candidate_iou.mean(0) + candidate_iou.std(0).nan_to_num()  # [G] (one candidate: no spread)
        centre = self.centres[candidate]  # [K, G, 2]
        # the authors' test: every distance from the anchor's centre to the box's sides above 0.01 pixels
        inside = torch.stack(
            [centre[..., 0] - boxes[:, 0], centre[..., 1] - boxes[:, 1], boxes[:, 2] - centre[..., 0],
             boxes[:, 3] - centre[..., 1]], dim=-1,
        ).amin(-1) > 0.01  # fmt: skip
        chosen = torch.zeros_like(iou, dtype=torch.bool).scatter_(0, candidate, (candidate_iou >= threshold) & inside)
        best_gt = torch.where(chosen, iou, torch.full_like(iou, -1.0)).argmax(1)
        return chosen.any(1), best_gt


def labeler_for_config(
    config: ModelConfig,
    image_size: tuple[int, int],
    assigner: str = "iou",
    match_iou: float = MATCH_IOU,
    device: torch.device | str = "cpu",
    unmatched_iou: float | None = None,
) -> AnchorLabeler:
    """The labeler of ``assigner`` for ``config``'s anchors at ``image_size`` (H, W): ``"iou"`` (the official
    fixed-IoU matcher, with RetinaNet's ignore band when ``unmatched_iou`` < ``match_iou``) or ``"atss"``."""
    anchors = anchors_for_config(config, image_size).to(device)
    if assigner == "iou":
        return AnchorLabeler(anchors, match_iou, unmatched_iou)
    if assigner == "atss":
        sizes = feature_sizes(image_size, config.min_level, config.max_level)
        counts = [h * w * config.num_anchors for h, w in sizes]
        return AtssLabeler(anchors, counts, config.num_anchors, match_iou=match_iou)
    raise ValueError(f"assigner must be one of {', '.join(ASSIGNERS)}, got {assigner!r}")
