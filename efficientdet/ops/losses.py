"""Focal loss for classes and Huber loss for boxes (paper, section 5.1; official code: det_model_fn.py).

An optional IoU box loss can be added to the Huber loss, as the official code's ``iou_loss_type`` /
``iou_loss_weight`` hyper-parameters do (off there by default, as here): generalized IoU (Rezatofighi et al. 2019),
distance IoU or complete IoU (Zheng et al. 2020).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .anchors import decode_boxes
from .labeler import IGNORE, Targets

FOCAL_ALPHA = 0.25  # paper, section 5.1
FOCAL_GAMMA = 1.5  # paper, section 5.1
HUBER_DELTA = 0.1  # official code: hparams_config.py, delta
BOX_LOSS_WEIGHT = 50.0  # official code: hparams_config.py, box_loss_weight
IOU_LOSS_WEIGHT = 0.0  # official code: hparams_config.py, iou_loss_type None (off)
IOU_LOSS_TYPES = ("giou", "diou", "ciou")  # official code: iou_utils.py (also plain "iou")
QFL_BETA = 2.0  # Li et al. 2020 (Generalized Focal Loss), the quality focal loss's beta
# Largest log-scale code decoded for the IoU loss: a box 1000/16 times its anchor (the bound detectron2 and
# torchvision clip to); an untrained head's large outputs would otherwise overflow exp()
MAX_LOG_SCALE = math.log(1000.0 / 16)


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017), not reduced."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t).pow(gamma) * ce


def huber_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = HUBER_DELTA) -> torch.Tensor:
    """Element-wise Huber loss: 0.5 x^2 inside ``delta``, linear outside (TF's definition)."""
    err = (pred - target).abs()
    quadratic = err.clamp(max=delta)
    return 0.5 * quadratic**2 + delta * (err - quadratic)


def quality_focal_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float = QFL_BETA) -> torch.Tensor:
    """Element-wise quality focal loss (Li et al., Generalized Focal Loss, NeurIPS 2020), not reduced.

    Binary cross-entropy towards soft targets in [0, 1] (here: the IoU of a positive anchor's predicted box with
    its object for that object's class, 0 elsewhere), scaled by ``|target - p| ** beta`` so that, as in the focal
    loss, the well-predicted majority weighs little. A score trained this way estimates how well its box fits, and
    the NMS and the AP ranking then prefer the better-placed of two boxes.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (targets - p).abs().pow(beta) * ce


def _pair_overlap(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersection, union and enclosing box's (width, height) ``[..., 2]`` of matching (x1, y1, x2, y2) boxes
    ``[..., 4]``."""
    area_p = (pred[..., 2] - pred[..., 0]).clamp(min=0) * (pred[..., 3] - pred[..., 1]).clamp(min=0)
    area_t = (target[..., 2] - target[..., 0]).clamp(min=0) * (target[..., 3] - target[..., 1]).clamp(min=0)
    low, high = torch.maximum(pred[..., :2], target[..., :2]), torch.minimum(pred[..., 2:], target[..., 2:])
    overlap = (high - low).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = (area_p + area_t - intersection).clamp(min=1e-9)
    hull = torch.maximum(pred[..., 2:], target[..., 2:]) - torch.minimum(pred[..., :2], target[..., :2])
    return intersection, union, hull


def paired_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of matching (x1, y1, x2, y2) boxes ``[..., 4]``."""
    intersection, union, _ = _pair_overlap(pred, target)
    return intersection / union


def generalized_iou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of matching (x1, y1, x2, y2) boxes ``[..., 4]``, not reduced: 0 for identical boxes, up to 2.

    GIoU (Rezatofighi et al. 2019) is IoU minus the share of the smallest enclosing box that neither box covers,
    so it still has a gradient when the boxes do not overlap.
    """
    intersection, union, hull = _pair_overlap(pred, target)
    hull_area = (hull[..., 0] * hull[..., 1]).clamp(min=1e-9)
    giou = intersection / union - (hull_area - union) / hull_area
    return 1.0 - giou


def distance_iou_loss(pred: torch.Tensor, target: torch.Tensor, aspect: bool = False) -> torch.Tensor:
    """``1 - DIoU`` (``aspect``: ``1 - CIoU``) of matching (x1, y1, x2, y2) boxes ``[..., 4]``, not reduced.

    DIoU (Zheng et al., AAAI 2020) is IoU minus the squared distance of the two centres over the squared diagonal of
    the enclosing box: it pulls the centres together directly, where GIoU's penalty vanishes once one box encloses
    the other. CIoU adds ``alpha * v``, ``v`` measuring how the aspect ratios differ; ``alpha = v / (1 - IoU + v)``
    is held constant in the gradient, as in the authors' code.
    """
    intersection, union, hull = _pair_overlap(pred, target)
    iou = intersection / union
    centre_gap = (pred[..., :2] + pred[..., 2:] - target[..., :2] - target[..., 2:]) / 2
    diagonal = (hull**2).sum(-1).clamp(min=1e-9)
    loss = 1.0 - iou + (centre_gap**2).sum(-1) / diagonal
    if aspect:
        size_p, size_t = (
            (pred[..., 2:] - pred[..., :2]).clamp(min=1e-9),
            (target[..., 2:] - target[..., :2]).clamp(min=1e-9),
        )
        v = (4 / math.pi**2) * (
            torch.atan(size_t[..., 0] / size_t[..., 1]) - torch.atan(size_p[..., 0] / size_p[..., 1])
        ) ** 2
        with torch.no_grad():
            alpha = v / (1.0 - iou + v).clamp(min=1e-9)
        loss = loss + alpha * v
    return loss


def iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "giou") -> torch.Tensor:
    """The IoU loss ``kind`` (one of :data:`IOU_LOSS_TYPES`, any case) of matching boxes, not reduced."""
    kind = kind.lower()
    if kind == "giou":
        return generalized_iou_loss(pred, target)
    if kind in ("diou", "ciou"):
        return distance_iou_loss(pred, target, aspect=kind == "ciou")
    raise ValueError(f"IoU loss type {kind!r}: expected one of {', '.join(IOU_LOSS_TYPES)}")


def _decode_for_iou(codes: torch.Tensor, anchors_yxyx: torch.Tensor) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) of regression codes, the log-scale codes clipped at :data:`MAX_LOG_SCALE`."""
    codes = torch.cat([codes[..., :2], codes[..., 2:].clamp(max=MAX_LOG_SCALE)], dim=-1)
    return decode_boxes(codes, anchors_yxyx)


def detection_loss(
    cls_logits: torch.Tensor,
    box_codes: torch.Tensor,
    targets: Targets,
    num_classes: int,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    delta: float = HUBER_DELTA,
    box_weight: float = BOX_LOSS_WEIGHT,
    iou_weight: float = IOU_LOSS_WEIGHT,
    anchors: torch.Tensor | None = None,
    quality_focal: bool = False,
    iou_type: str = "giou",
) -> dict[str, torch.Tensor]:
    """Total, class and box loss for a batch of flattened outputs (``[B, A, C]`` logits, ``[B, A, 4]`` codes).

    Class loss: focal, summed over non-ignored anchors, divided by (positives in the batch + 1). Box loss: Huber
    over positive anchors, divided by (positives + 1) * 4. Total = class + box_weight (the paper: 50) * box.
    With ``iou_weight`` > 0 (``anchors`` ``[A, 4]`` y1x1y2x2 needed to decode the codes) an ``iou_loss`` joins
    them: ``1 - GIoU`` (``iou_type``: or DIoU, CIoU) of the decoded boxes over positive anchors, divided by
    (positives + 1) * 4 like the box loss (the official code's normaliser), and the total adds iou_weight * iou_loss.

    ``quality_focal``: the class loss is :func:`quality_focal_loss` instead, its target at a positive anchor the
    IoU of the anchor's decoded box with its object (no gradient through the target; ``anchors`` needed too).
    """
    normaliser = targets.num_positives.sum() + 1.0
    cls_t = targets.cls
    valid = cls_t != IGNORE
    positive = cls_t >= 0
    one_hot = F.one_hot(cls_t.clamp(min=0), num_classes).to(torch.float32) * positive.unsqueeze(-1)
    if iou_weight > 0 or quality_focal:  # both need the positive anchors' decoded boxes
        if anchors is None:
            raise ValueError("the IoU loss and the quality focal loss decode boxes: give the anchors")
        positive_anchors = anchors.expand_as(box_codes)[positive]
        pred = _decode_for_iou(box_codes.float()[positive], positive_anchors)
        target = decode_boxes(targets.box[positive], positive_anchors)
    if quality_focal:
        soft = one_hot.clone()
        soft[positive] *= paired_iou(pred.detach(), target).clamp(0, 1).unsqueeze(-1)
        cls_err = quality_focal_loss(cls_logits.float(), soft)
    else:
        cls_err = focal_loss(cls_logits.float(), one_hot, alpha, gamma)
    cls_loss = (cls_err * valid.unsqueeze(-1)).sum() / normaliser
    box_err = huber_loss(box_codes.float(), targets.box, delta) * positive.unsqueeze(-1)
    box_loss = box_err.sum() / (normaliser * 4.0)
    losses = {"loss": cls_loss + box_weight * box_loss, "cls_loss": cls_loss, "box_loss": box_loss}
    if iou_weight > 0:
        box_iou_loss = iou_loss(pred, target, iou_type).sum() / (normaliser * 4.0)
        losses["loss"] = losses["loss"] + iou_weight * box_iou_loss
        losses["iou_loss"] = box_iou_loss
    return losses
