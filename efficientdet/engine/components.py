"""The loop's small parts that keep state across epochs: each saves and restores itself (``state_dict``), so what
``last.pt`` holds and what ``--resume`` reads back are written in one place and cannot drift apart.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..models.factory import save_model
from ..utils.atomic import atomic_open
from .recipe import MAX_BAD_STEPS
from .utils import TrainingError

# Keys under which checkpoints written before the one engine kept the best headline metric.
LEGACY_BEST_KEYS = ("best_ap", "best_miou")


class NonFiniteGuard:
    """Counts optimiser steps skipped for a NaN/inf loss or gradient; stops the run after ``limit`` in a row.

    A few such steps (an fp16 overflow, one degenerate batch) are survivable and only counted; a streak means
    the run has diverged, and going on would only write NaN weights.
    """

    def __init__(self, hint: str, limit: int = MAX_BAD_STEPS) -> None:
        self.hint = hint
        self.limit = limit
        self.streak = 0  # consecutive, across epoch boundaries
        self.total = 0

    def bad_step(self, epoch: int) -> None:
        """Record a skipped step of ``epoch`` (0-based); raises :class:`TrainingError` at the limit."""
        self.streak += 1
        self.total += 1
        if self.streak >= self.limit:
            raise TrainingError(
                f"loss or gradients were NaN/inf for {self.streak} consecutive steps (epoch {epoch + 1}); "
                f"training stopped. {self.hint}"
            )

    def good_step(self) -> None:
        self.streak = 0

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total = int(state["skipped_steps"])


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per epoch, atomically; columns are the union of the rows' keys (evaluation ones appear later)."""
    if not rows:
        return
    fields = list(rows[0])
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class MetricsLog:
    """The per-epoch rows: ``metrics.csv`` and its plot ``metrics.png`` in the output folder (rank 0 writes)."""

    def __init__(self, folder: Path, plot: Callable[[Path, Path], None]) -> None:
        self.csv_path = folder / "metrics.csv"
        self.plot_path = folder / "metrics.png"
        self.plot = plot
        self.history: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        self.history.append(row)

    def write(self) -> None:
        write_metrics_csv(self.csv_path, self.history)
        self.plot(self.csv_path, self.plot_path)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = list(state["history"])


LAST_FILE = "last.pt"  # in the run's output folder: what --resume continues
BEST_FILE = "best.pt"


def run_file_in(folder: Path) -> Path | None:
    """The ``last.pt`` (else ``best.pt``) that makes ``folder`` hold a training run, or None."""
    return next((path for path in (folder / LAST_FILE, folder / BEST_FILE) if path.exists()), None)


class Checkpointer:
    """``last.pt`` every epoch (EMA weights + everything ``--resume`` needs) and ``best.pt`` at the best metric.

    The best value is the task's headline metric (detection: AP, segmentation: mIoU), stored as ``best_metric``;
    files written before the one engine stored it as ``best_ap`` / ``best_miou`` and still resume.
    """

    def __init__(self, folder: Path, class_names: list[str], extra: Mapping[str, Any] | None = None) -> None:
        self.last_path = folder / LAST_FILE
        self.best_path = folder / BEST_FILE
        self.class_names = class_names
        self.extra = dict(extra or {})  # top-level keys of both files (segmentation: task, ignore_index)
        self.best = -math.inf  # any finite metric, even a negative one, makes the first best.pt
        self.since_best = 0  # evaluations in a row that did not beat the best (--patience)

    def offer(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (it becomes the best); NaN never does."""
        if math.isfinite(value) and value > self.best:
            self.best = value
            self.since_best = 0
            return True
        self.since_best += 1
        return False

    def save_last(self, model: nn.Module, train_state: dict[str, Any]) -> None:
        save_model(model, self.last_path, self.class_names, train_state=train_state, **self.extra)  # type: ignore[arg-type]

    def save_best(self, model: nn.Module, metrics: Mapping[str, Any]) -> None:
        save_model(model, self.best_path, self.class_names, metrics=dict(metrics), **self.extra)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best, "evaluations_since_best": self.since_best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.since_best = int(state.get("evaluations_since_best", 0))  # files before --patience: count afresh
        for key in ("best_metric", *LEGACY_BEST_KEYS):
            if key in state:
                self.best = float(state[key])
                return
        raise KeyError("best_metric")


__all__ = ["Checkpointer", "MetricsLog", "NonFiniteGuard", "write_metrics_csv"]
