"""TensorBoard event files for a training run: scalars, precision-recall curves and images.

A thin layer over the tensorboard package's writer (``torch.utils.tensorboard.SummaryWriter``) that takes the
values the trainer has at hand (metric dicts with NaN or non-numeric entries, pycocotools' precision arrays with
their -1 "undefined" marks, lists of differently sized images) and writes what TensorBoard can show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

INSTALL_HINT = "--tensorboard needs the tensorboard package: pip install 'efficientdet[tensorboard]'"
# The writer stores at most this many points per PR curve (torch's pr_curve_raw caps num_thresholds at 127);
# longer curves are subsampled evenly. pycocotools' 101 recall thresholds fit.
MAX_PR_POINTS = 127


class TensorBoardLogger:
    """Event files under ``log_dir`` (view them with ``tensorboard --logdir LOG_DIR``).

    The tensorboard package is checked at construction, so a missing install fails before training starts
    (``RuntimeError``). The event file itself is created on the first write: a run that fails while reading its
    data leaves no empty log behind.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises ImportError when tensorboard is absent or older than 1.15
            raise RuntimeError(INSTALL_HINT) from exc
        self.log_dir = str(log_dir)
        self._writer_class = SummaryWriter
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter``, opened on first use."""
        if self._writer is None:
            self._writer = self._writer_class(log_dir=self.log_dir)
        return self._writer

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """One scalar per finite numeric value, tagged ``prefix/name``; NaN, inf and non-numbers are skipped."""
        for name, value in values.items():
            number = _as_float(value)
            if number is not None and math.isfinite(number):
                self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, number, step)

    def pr_curve(self, tag: str, precision: np.ndarray, recall: np.ndarray, step: int) -> bool:
        """A precision-recall curve from precision sampled at recall thresholds (pycocotools' ``precision[t, :,
        k, a, m]`` against ``recThrs``). Points marked -1 (undefined: the class has no ground truth) or NaN are
        dropped; with none left nothing is written and this returns False.

        TensorBoard's raw format also wants true/false positive/negative counts per threshold; these arrays do not
        have them, so they are written as zeros (only the curve is drawn from precision and recall).
        """
        p = np.asarray(precision, dtype=np.float64).reshape(-1)
        r = np.asarray(recall, dtype=np.float64).reshape(-1)
        if p.shape != r.shape:
            raise ValueError(f"precision has {p.size} points, recall {r.size}")
        keep = np.isfinite(p) & np.isfinite(r) & (p >= 0) & (r >= 0)
        p, r = p[keep], r[keep]
        if not p.size:
            return False
        order = np.argsort(-r, kind="stable")  # TensorBoard's order: thresholds rising, so recall falling
        p, r = p[order], r[order]
        if p.size > MAX_PR_POINTS:
            pick = np.linspace(0, p.size - 1, MAX_PR_POINTS).round().astype(int)
            p, r = p[pick], r[pick]
        zeros = np.zeros_like(p)
        self.writer.add_pr_curve_raw(tag, zeros, zeros, zeros, zeros, p, r, step, num_thresholds=p.size)
        return True

    def images(self, tag: str, images: Sequence[np.ndarray], step: int) -> None:
        """HxWx3 uint8 RGB images, each under ``tag/i`` (their sizes may differ, so they are not one batch)."""
        for i, image in enumerate(images):
            array = np.asarray(image)
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ValueError(f"{tag}/{i}: expected an HxWx3 uint8 image, got {array.dtype} {array.shape}")
            self.writer.add_image(f"{tag}/{i}", array, step, dataformats="HWC")

    def flush(self) -> None:
        """Write what is queued to disk now (the writer otherwise flushes every two minutes)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_float(value: Any) -> float | None:
    """``value`` as a float if it is one number (Python, or a NumPy / torch scalar), else None."""
    if isinstance(value, (str, bytes)) or getattr(value, "ndim", 0) != 0:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


__all__ = ["INSTALL_HINT", "TensorBoardLogger"]
