"""Anchor grid and box coder (official code: tf2/anchors.py Anchors, object_detection/faster_rcnn_box_coder.py).

Anchors follow the feature maps actually produced for an input: level l has ceil(size / 2^l) cells, centres at
stride/2 + k*stride with stride 2^l. Order: level, y, x, then (octave scale, aspect ratio) — the order of the
network's output channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.config import ModelConfig


def feature_sizes(image_size: tuple[int, int], min_level: int, max_level: int) -> list[tuple[int, int]]:
    """Spatial size of each level for an input of ``image_size`` (H, W): one ceil-halving per level."""
    h, w = image_size
    sizes = []
    for level in range(1, max_level + 1):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        if level >= min_level:
            sizes.append((h, w))
    return sizes


def generate_anchors(
    image_size: tuple[int, int],
    min_level: int = 3,
    max_level: int = 7,
    anchor_scale: float = 4.0,
    num_scales: int = 3,
    aspect_ratios: Sequence[tuple[float, float]] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)),
    feat_sizes: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """All anchors as ``[N, 4]`` float32 (y1, x1, y2, x2) in input pixels.

    ``feat_sizes`` may be given (the sizes of the network's outputs); by default they are derived from
    ``image_size``. Computed in float64 then cast, so that they match the reference implementations bit for bit.
    """
    sizes = feat_sizes if feat_sizes is not None else feature_sizes(image_size, min_level, max_level)
    all_boxes = [
        level_anchors(fh, fw, level, anchor_scale, num_scales, aspect_ratios)
        for level, (fh, fw) in zip(range(min_level, max_level + 1), sizes)
    ]
    return torch.cat(all_boxes).to(torch.float32)


def level_anchors(
    fh: int,
    fw: int,
    level: int,
    anchor_scale: float = 4.0,
    num_scales: int = 3,
    aspect_ratios: Sequence[tuple[float, float]] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The anchors of one level with an ``fh`` x ``fw`` map, ``[fh * fw * anchors, 4]`` (y1, x1, y2, x2) in ``dtype``.

    ``fh`` and ``fw`` may be symbolic sizes (``torch.export`` with a free input size): an exported graph then
    builds the anchors of whatever input it is given. Anchor sizes are computed in float64 and cast to ``dtype``.
    """
    stride = 2.0**level
    ys = torch.arange(fh, dtype=dtype, device=device) * stride + stride / 2
    xs = torch.arange(fw, dtype=dtype, device=device) * stride + stride / 2
    yc, xc = torch.meshgrid(ys, xs, indexing="ij")
    yc, xc = yc.reshape(-1, 1), xc.reshape(-1, 1)
    half_h, half_w = [], []
    for octave in range(num_scales):
        base = anchor_scale * stride * 2.0 ** (octave / num_scales)
        for ax, ay in aspect_ratios:
            half_w.append(base * ax / 2.0)
            half_h.append(base * ay / 2.0)
    hh = torch.tensor(half_h, dtype=torch.float64).to(device=device, dtype=dtype).view(1, -1)
    hw = torch.tensor(half_w, dtype=torch.float64).to(device=device, dtype=dtype).view(1, -1)
    boxes = torch.stack([yc - hh, xc - hw, yc + hh, xc + hw], dim=-1)  # [cells, anchors, 4]
    return boxes.reshape(-1, 4)


def anchors_for_config(config: ModelConfig, image_size: tuple[int, int]) -> torch.Tensor:
    """The anchors that go with ``config``'s outputs for an input of ``image_size`` (H, W)."""
    return generate_anchors(
        image_size, config.min_level, config.max_level, config.anchor_scale, config.num_scales, config.aspect_ratios
    )


def decode_boxes(codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression outputs (ty, tx, th, tw) relative to anchors (y1, x1, y2, x2) -> boxes (x1, y1, x2, y2)."""
    ya = (anchors[..., 0] + anchors[..., 2]) / 2
    xa = (anchors[..., 1] + anchors[..., 3]) / 2
    ha = anchors[..., 2] - anchors[..., 0]
    wa = anchors[..., 3] - anchors[..., 1]
    ty, tx, th, tw = codes.unbind(-1)
    h = torch.exp(th) * ha
    w = torch.exp(tw) * wa
    yc = ty * ha + ya
    xc = tx * wa + xa
    return torch.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], dim=-1)


def encode_boxes(boxes_yxyx: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`decode_boxes` for (y1, x1, y2, x2) boxes: the regression targets of training."""
    ya = (anchors[..., 0] + anchors[..., 2]) / 2
    xa = (anchors[..., 1] + anchors[..., 3]) / 2
    ha = anchors[..., 2] - anchors[..., 0]
    wa = anchors[..., 3] - anchors[..., 1]
    y = (boxes_yxyx[..., 0] + boxes_yxyx[..., 2]) / 2
    x = (boxes_yxyx[..., 1] + boxes_yxyx[..., 3]) / 2
    h = (boxes_yxyx[..., 2] - boxes_yxyx[..., 0]).clamp(min=1e-8)
    w = (boxes_yxyx[..., 3] - boxes_yxyx[..., 1]).clamp(min=1e-8)
    return torch.stack([(y - ya) / ha, (x - xa) / wa, torch.log(h / ha), torch.log(w / wa)], dim=-1)
