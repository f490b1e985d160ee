"""Focal loss for classes and Huber loss for boxes (paper, section 5.1; official code: det_model_fn.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .labeler import IGNORE, Targets

FOCAL_ALPHA = 0.25  # paper, section 5.1
FOCAL_GAMMA = 1.5  # paper, section 5.1
HUBER_DELTA = 0.1  # official code: hparams_config.py, delta
BOX_LOSS_WEIGHT = 50.0  # official code: hparams_config.py, box_loss_weight


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


def detection_loss(
    cls_logits: torch.Tensor,
    box_codes: torch.Tensor,
    targets: Targets,
    num_classes: int,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    delta: float = HUBER_DELTA,
    box_weight: float = BOX_LOSS_WEIGHT,
) -> dict[str, torch.Tensor]:
    """Total, class and box loss for a batch of flattened outputs (``[B, A, C]`` logits, ``[B, A, 4]`` codes).

    Class loss: focal, summed over non-ignored anchors, divided by (positives in the batch + 1). Box loss: Huber
    over positive anchors, divided by (positives + 1) * 4. Total = class + box_weight (the paper: 50) * box.
    """
    normaliser = targets.num_positives.sum() + 1.0
    cls_t = targets.cls
    valid = cls_t != IGNORE
    positive = cls_t >= 0
    one_hot = F.one_hot(cls_t.clamp(min=0), num_classes).to(cls_logits.dtype) * positive.unsqueeze(-1)
    cls_loss = (focal_loss(cls_logits.float(), one_hot.float(), alpha, gamma) * valid.unsqueeze(-1)).sum() / normaliser
    box_err = huber_loss(box_codes.float(), targets.box, delta) * positive.unsqueeze(-1)
    box_loss = box_err.sum() / (normaliser * 4.0)
    return {"loss": cls_loss + box_weight * box_loss, "cls_loss": cls_loss, "box_loss": box_loss}
