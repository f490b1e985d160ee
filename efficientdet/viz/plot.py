"""Training curves as PNG files, drawn with matplotlib's object-oriented API.

Only ``matplotlib.figure.Figure`` and the Agg canvas are used, never ``pyplot``: there is no global backend or
"current figure" state, so plotting works headless, from any thread, and a figure is freed like any object once
it goes out of scope (nothing to ``close``). Files are written atomically so a viewer refreshing ``metrics.png``
during training never reads half an image.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..utils.atomic import atomic_open

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: every command would pay ~0.3 s to load it
    from matplotlib.figure import Figure

Curve = list[tuple[float, float]]  # (epoch, value) points of one metrics.csv column

PANEL_SIZE_IN = (8.0, 4.5)  # width, height of one panel in inches: 800 x 450 pixels at DPI
DPI = 100
MAX_MARKED_POINTS = 100  # beyond this many points per series, markers would only blur the line


def new_figure(
    width_in: float = PANEL_SIZE_IN[0],
    height_in: float = PANEL_SIZE_IN[1],
    nrows: int = 1,
    ncols: int = 1,
    **subplots_kwargs: Any,
) -> tuple[Figure, Any]:
    """A figure with an Agg canvas and its axes (one ``Axes``, or an array of them, as ``Figure.subplots`` gives).

    The figure is ``width_in`` x ``height_in`` inches at :data:`DPI` (so 8 x 4.5 is an 800 x 450 PNG) and uses
    the constrained layout, which keeps titles, tick labels and legends of several panels from overlapping.
    ``subplots_kwargs`` go to ``Figure.subplots`` (``sharex=True``, ``squeeze=False``, ...).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering needs no pyplot backend
    return fig, fig.subplots(nrows, ncols, **subplots_kwargs)


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG to ``path`` atomically (parent folders are created; nothing global is closed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=fig.dpi)


@dataclass(frozen=True)
class MetricPanel:
    """One panel of a metrics plot: which metrics.csv columns it shows, over the epochs.

    ``columns`` is a list of names (missing ones are left out) or a predicate on a column's name.
    ``ylim`` fixes the y range (e.g. 0..1 for AP or mIoU). ``drop_negative`` skips values below 0, for
    pycocotools' -1, which means "undefined" rather than a score.
    """

    title: str
    columns: Sequence[str] | Callable[[str], bool]
    ylim: tuple[float, float] | None = None
    drop_negative: bool = False

    def select(self, names: Sequence[str]) -> list[str]:
        if callable(self.columns):
            return [n for n in names if self.columns(n)]
        return [n for n in self.columns if n in names]


def _is_loss_column(name: str) -> bool:
    return "loss" in name.lower()


DETECTION_PANELS = (
    MetricPanel("training loss", _is_loss_column),
    MetricPanel("validation AP", ("AP", "AP50"), ylim=(0.0, 1.0), drop_negative=True),
)
SEGMENTATION_PANELS = (
    MetricPanel("training loss", ("train_loss",)),
    MetricPanel("validation", ("mIoU", "pixel_acc"), ylim=(0.0, 1.0)),
)


def _parse_float(cell: str | None) -> float:
    """A csv cell as a float; empty or unparsable cells are missing values (NaN)."""
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_metrics_csv(csv_path: str | os.PathLike) -> dict[str, Curve]:
    """Every column of a trainer's metrics.csv as ``(epoch, value)`` points; rows without an epoch dropped.

    Missing or non-numeric cells are NaN (AP, for instance, is only filled on evaluation epochs).
    """
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c != "epoch"]
        curves: dict[str, Curve] = {c: [] for c in columns}
        for row in reader:
            epoch = _parse_float(row.get("epoch"))
            if math.isnan(epoch):
                continue
            for column in columns:
                curves[column].append((epoch, _parse_float(row.get(column))))
    return curves


def _finite_points(points: Curve, drop_negative: bool) -> Curve:
    """Points with both coordinates finite, in x order. NaN cells are skipped rather than left as gaps, so a
    metric evaluated every few epochs is still one connected line."""
    kept = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y) and not (drop_negative and y < 0)]
    return sorted(kept)


def _draw_panel(ax: Any, panel: MetricPanel, curves: dict[str, Curve]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(panel.title)
    ax.grid(True, color="0.9")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    drawn = 0
    for name in panel.select(list(curves)):
        points = _finite_points(curves[name], panel.drop_negative)
        if not points:
            continue  # the legend lists only what is drawn
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=name, linewidth=1.8, marker="o" if len(points) <= MAX_MARKED_POINTS else None,
                markersize=3.5)  # fmt: skip
        drawn += 1
    if drawn:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_metric_panels(csv_path: str | os.PathLike, png_path: str | os.PathLike, panels: Sequence[MetricPanel]) -> None:
    """The panels stacked top to bottom on a shared epoch axis, from a trainer's metrics.csv, as one PNG.

    Each panel is 800 x 450 pixels. NaN/empty cells are skipped; a panel with nothing to draw says "no data".
    """
    curves = read_metrics_csv(csv_path)
    fig, axes = new_figure(PANEL_SIZE_IN[0], PANEL_SIZE_IN[1] * len(panels), nrows=len(panels), sharex=True,
                           squeeze=False)  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels):
        _draw_panel(ax, panel, curves)
    axes[-1, 0].set_xlabel("epoch")
    epochs = [x for points in curves.values() for x, _ in points]
    if epochs and max(epochs) - min(epochs) < 2:  # room for integer ticks around one or two epochs
        axes[-1, 0].set_xlim(min(epochs) - 1, max(epochs) + 1)
    save_figure(fig, png_path)


def plot_training_metrics(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Detection: training losses (every column with "loss" in its name) and validation AP/AP50 on 0..1."""
    plot_metric_panels(csv_path, png_path, DETECTION_PANELS)


def plot_segmentation_metrics(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Segmentation: the training loss and validation mIoU / pixel accuracy on 0..1."""
    plot_metric_panels(csv_path, png_path, SEGMENTATION_PANELS)


__all__ = [
    "DETECTION_PANELS",
    "SEGMENTATION_PANELS",
    "MetricPanel",
    "new_figure",
    "plot_metric_panels",
    "plot_segmentation_metrics",
    "plot_training_metrics",
    "read_metrics_csv",
    "save_figure",
]
