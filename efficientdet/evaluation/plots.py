"""Plots that show why a detector scores what it scores: PR curves per class, F1 against the score threshold, and
the confusion matrix with its background row and column.

The curves come from pycocotools' accumulated arrays (:class:`efficientdet.evaluate.CocoEvaluation`), so they are
the curves behind the reported AP, not a second computation. The F1 curve turns them around: for each score
threshold, the recall reached by the detections above it and the precision there.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.records import DetectionData
from ..utils.atomic import atomic_open
from ..viz.plot import new_figure, save_figure
from .coco import CocoEvaluation
from .confusion import CONFUSION_IOU, confusion_matrix

SCORE_GRID = np.linspace(0.0, 1.0, 101)  # thresholds of the F1 curve
MAX_LEGEND_CLASSES = 20  # more classes than this: curves without a legend (it would hide the plot)
MAX_ANNOTATED_CLASSES = 30  # more classes than this: the confusion matrix shows colours only


@dataclass
class EvaluationPlots:
    """The files written and the threshold the F1 curve chose (where the mean F1 over classes peaks)."""

    pr_curves: Path
    f1_curve: Path
    confusion_matrix_png: Path
    confusion_matrix_csv: Path
    best_threshold: float
    best_f1: float


def f1_by_threshold(evaluation: CocoEvaluation, iou: float = 0.5) -> np.ndarray:
    """F1 ``[classes, len(SCORE_GRID)]`` at IoU ``iou``: for each threshold, the largest recall point whose score
    is at least that high, with its precision; 0 where no detection is that confident. Classes without ground
    truth are NaN."""
    t = evaluation.iou_index(iou)
    recalls = evaluation.recall_thresholds
    f1 = np.full((len(evaluation.class_names), len(SCORE_GRID)), np.nan)
    for k in range(len(evaluation.class_names)):
        precision, scores = evaluation.precision[t, :, k], evaluation.scores[t, :, k]
        if (precision < 0).all():
            continue  # no ground truth: undefined
        reached = (precision > 0) & (scores > 0)
        row = np.zeros(len(SCORE_GRID))
        for j, threshold in enumerate(SCORE_GRID):
            points = np.flatnonzero(reached & (scores >= threshold))
            if len(points):
                r = points[-1]  # precision is interpolated (non-increasing in recall): the last point is the reach
                p, rc = precision[r], recalls[r]
                row[j] = 2 * p * rc / max(p + rc, 1e-12)
        f1[k] = row
    return f1


def _class_legend(ax, count: int) -> None:
    if 0 < count <= MAX_LEGEND_CLASSES:
        ax.legend(loc="lower left", fontsize="small")


def plot_pr_curves(evaluation: CocoEvaluation, path: str | os.PathLike, ious: Sequence[float] = (0.5, 0.75)) -> None:
    """Precision against recall per class, one panel per IoU threshold, with the mean over classes in black."""
    fig, axes = new_figure(6.0 * len(ious), 5.0, 1, len(ious), squeeze=False)
    recalls = evaluation.recall_thresholds
    key = {0.5: "AP50", 0.75: "AP75"}
    for ax, iou in zip(axes[0], ious):
        t = evaluation.iou_index(iou)
        defined = []
        for k, name in enumerate(evaluation.class_names):
            precision = evaluation.precision[t, :, k]
            if (precision < 0).all():
                continue
            defined.append(np.clip(precision, 0, None))
            ap = float(np.mean(np.clip(precision, 0, None)))
            label = f"{name} {ap:.3f}" if iou not in key else f"{name} {evaluation.per_class[k][key[iou]]:.3f}"
            ax.plot(recalls, np.clip(precision, 0, None), linewidth=1.2, label=label)
        if defined:
            mean = np.mean(defined, axis=0)
            ax.plot(recalls, mean, color="black", linewidth=2.5, label=f"all classes {float(np.mean(mean)):.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"PR curves at IoU {iou:g}")
        ax.grid(alpha=0.3)
        _class_legend(ax, len(defined))
    save_figure(fig, path)


def plot_f1_curve(evaluation: CocoEvaluation, path: str | os.PathLike, iou: float = 0.5) -> tuple[float, float]:
    """F1 against the score threshold per class and averaged; the best threshold of the mean is marked.

    Returns ``(best threshold, mean F1 there)``; ``(0.5, 0.0)`` when no class has ground truth or detections.
    """
    f1 = f1_by_threshold(evaluation, iou)
    fig, ax = new_figure(7.0, 5.0)
    for k, name in enumerate(evaluation.class_names):
        if not np.isnan(f1[k]).all():
            ax.plot(SCORE_GRID, f1[k], linewidth=1.2, label=name)
    best_threshold, best_f1 = 0.5, 0.0
    defined = ~np.isnan(f1).all(axis=1)
    if defined.any():
        mean = f1[defined].mean(axis=0)
        # the highest threshold that reaches the best mean F1: the same detections count, fewer low-score ones
        best = int(np.flatnonzero(mean >= mean.max() - 1e-9)[-1])
        best_threshold, best_f1 = float(SCORE_GRID[best]), float(mean[best])
        ax.plot(SCORE_GRID, mean, color="black", linewidth=2.5, label="all classes")
        ax.axvline(best_threshold, color="gray", linestyle="--", linewidth=1)
        ax.plot([best_threshold], [best_f1], "o", color="black")
        ax.annotate(f"best {best_f1:.3f} at score {best_threshold:.2f}", (best_threshold, best_f1),
                    textcoords="offset points", xytext=(8, 8))  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1", title=f"F1 at IoU {iou:g}")
    ax.grid(alpha=0.3)
    _class_legend(ax, int(defined.sum()))
    save_figure(fig, path)
    return best_threshold, best_f1


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, score_threshold: float
) -> None:
    """Counts, coloured by each true row's share (how a class's boxes were found); background last."""
    names = [*class_names, "background"]
    size = max(5.0, 0.45 * len(names) + 3)
    fig, ax = new_figure(size + 1.0, size)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true row")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion at IoU {CONFUSION_IOU:g}, score >= {score_threshold:.2f}")  # fmt: skip
    if len(names) <= MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            if count or i == j:
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize="small")
    save_figure(fig, path)


def write_confusion_csv(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """The matrix as CSV: a header of predicted classes, one row per true class (background last)."""
    names = [*class_names, "background"]
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, matrix.tolist()):
            writer.writerow([name, *row])


def write_evaluation_plots(
    evaluation: CocoEvaluation, data: DetectionData, detections: Sequence[dict], out_dir: str | os.PathLike
) -> EvaluationPlots:
    """PR curves (IoU 0.5 and 0.75), the F1 curve and the confusion matrix at its best threshold, into ``out_dir``.

    ``detections`` are per record of ``data`` in annotation pixels, as :func:`efficientdet.validate.evaluate_model`
    returns them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_pr_curves(evaluation, out / "pr_curves.png")
    threshold, best_f1 = plot_f1_curve(evaluation, out / "f1_curve.png")
    matrix = confusion_matrix(data.records, detections, len(data.class_names), threshold)
    plot_confusion_matrix(matrix, data.class_names, out / "confusion_matrix.png", threshold)
    write_confusion_csv(matrix, data.class_names, out / "confusion_matrix.csv")
    return EvaluationPlots(
        out / "pr_curves.png", out / "f1_curve.png", out / "confusion_matrix.png", out / "confusion_matrix.csv",
        threshold, best_f1,
    )  # fmt: skip
