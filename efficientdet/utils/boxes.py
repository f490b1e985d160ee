"""Areas and pairwise intersections of numpy ``[N, 4]`` (x1, y1, x2, y2) boxes.

The data transforms, the NMS loops and the tile merging all measure boxes; one definition keeps them agreeing
(areas as torchvision's ``box_area`` computes them: an inverted box is not clipped to zero).
"""

from __future__ import annotations

import numpy as np


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[..., 4]`` boxes, shaped ``[...]`` (``[N, 4]`` gives ``[N]``)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` intersection areas (0 where two boxes do not overlap)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)
