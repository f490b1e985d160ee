"""Line plots of training curves written as PNG with Pillow alone (matplotlib is not a dependency).

Just enough of a plotting library for a training run's progress: polylines with markers, "nice" axis ticks,
a legend, and atomic writes so a viewer refreshing the file never reads half an image.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

from PIL import Image, ImageDraw

from .atomic import atomic_open
from .draw import default_font, text_box

Series = dict[str, Sequence[tuple[float, float]]]

DEFAULT_SIZE = (800, 450)  # width, height of one plot_curves image
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 36, 50  # margins around the plot area: room for ticks, title and axis label
# dark, well-separated colours that read on white; series i gets COLORS[i % len(COLORS)]
COLORS = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (127, 127, 127),
    (188, 189, 34),
)
MAX_MARKED_POINTS = 100  # beyond this many points per series, markers would only blur the line
LOSS_COLUMNS_HINT = "loss"  # every metrics.csv column whose name contains this goes into the loss panel
AP_COLUMNS = ("AP", "AP50")


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` evenly spaced round ticks (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi].

    The first and last tick enclose the range, so using them as the axis limits labels both ends of the axis.
    """
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [(first + i) * step for i in range(last - first + 1)]


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    """The span of ``values``, widened around a single value so that it still has a width to plot."""
    lo, hi = min(values), max(values)
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 if lo != 0 else 1.0
    return lo - pad, hi + pad


def _axis(values: Sequence[float], limits: tuple[float, float] | None) -> tuple[float, float, list[float]]:
    """Axis limits and ticks: fixed ``limits`` when given (ticks inside them), else round numbers around the data."""
    if limits is not None:
        lo, hi = _padded_range(limits)
        ticks = nice_ticks(lo, hi)
        min_gap = 0.3 * (ticks[1] - ticks[0])  # an inner tick this close to an end label would overlap it
        inner = [t for t in ticks if lo + min_gap < t < hi - min_gap]
        return lo, hi, [lo, *inner, hi]
    ticks = nice_ticks(*_padded_range(values))
    return ticks[0], ticks[-1], ticks


def _finite_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points with both coordinates finite, in x order; NaN/inf (missing values) are skipped, not plotted as gaps."""
    kept = [(float(x), float(y)) for x, y in points if math.isfinite(float(x)) and math.isfinite(float(y))]
    return sorted(kept, key=lambda p: p[0])


def _format_tick(value: float) -> str:
    """Short tick label: ``0.6`` not ``0.6000000000000001``, ``0`` not ``-0``."""
    return f"{round(value, 9) + 0.0:.6g}"


class _Frame:
    """Maps data coordinates to pixels of the plot area (y grows upwards in data, downwards in pixels)."""

    def __init__(self, size: tuple[int, int], xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
        self.x0, self.y0 = LEFT, TOP
        self.x1, self.y1 = max(size[0] - RIGHT, LEFT + 1), max(size[1] - BOTTOM, TOP + 1)
        self.xlim, self.ylim = xlim, ylim

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Pixel of a data point, clamped to the plot area so out-of-range values stay visible at the edge."""
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        px = self.x0 + min(max(fx, 0.0), 1.0) * (self.x1 - self.x0)
        py = self.y1 - min(max(fy, 0.0), 1.0) * (self.y1 - self.y0)
        return px, py


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, anchor: str, font: object) -> None:
    """Text placed by its ink box: ``anchor`` is two letters, horizontal (l/m/r) then vertical (t/m/b)."""
    dx, dy, w, h = text_box(draw, text, font)
    x = xy[0] - {"l": 0, "m": w / 2, "r": w}[anchor[0]]
    y = xy[1] - {"t": 0, "m": h / 2, "b": h}[anchor[1]]
    draw.text((x - dx, y - dy), text, fill=(0, 0, 0), font=font)


def _draw_axes(
    draw: ImageDraw.ImageDraw, frame: _Frame, xticks: list[float], yticks: list[float], font: object
) -> None:
    """Grid lines, the plot border and the tick labels of both axes."""
    grid = (225, 225, 225)
    for t in xticks:
        px, _ = frame.to_pixel(t, frame.ylim[0])
        draw.line([(px, frame.y0), (px, frame.y1)], fill=grid)
        _draw_text(draw, (px, frame.y1 + 6), _format_tick(t), "mt", font)
    for t in yticks:
        _, py = frame.to_pixel(frame.xlim[0], t)
        draw.line([(frame.x0, py), (frame.x1, py)], fill=grid)
        _draw_text(draw, (frame.x0 - 6, py), _format_tick(t), "rm", font)
    draw.rectangle([frame.x0, frame.y0, frame.x1, frame.y1], outline=(0, 0, 0))


def _draw_series(draw: ImageDraw.ImageDraw, frame: _Frame, points: list[tuple[float, float]], color: tuple) -> None:
    """One series as a polyline, with a dot per point when there are few (so a single point is visible too)."""
    pixels = [frame.to_pixel(x, y) for x, y in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=color, width=2, joint="curve")
    if len(pixels) <= MAX_MARKED_POINTS:
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)


def _draw_legend(draw: ImageDraw.ImageDraw, frame: _Frame, names: list[str], font: object) -> None:
    """Series names with their colour swatch, boxed in the top-right corner of the plot area."""
    if not names:
        return
    boxes = [text_box(draw, name, font) for name in names]
    row_h = max(h for *_, h in boxes) + 6
    swatch, pad = 18, 6
    width = swatch + 3 * pad + max(w for _, _, w, _ in boxes)
    left, top = frame.x1 - width - pad, frame.y0 + pad
    draw.rectangle([left, top, left + width, top + row_h * len(names) + pad], fill=(255, 255, 255), outline=(0, 0, 0))
    for i, name in enumerate(names):
        cy = top + pad + row_h * i + row_h / 2 - 3
        color = COLORS[i % len(COLORS)]
        draw.line([(left + pad, cy), (left + pad + swatch, cy)], fill=color, width=3)
        _draw_text(draw, (left + 2 * pad + swatch, cy), name, "lm", font)


def render_curves(
    series: Series,
    title: str = "",
    xlabel: str = "epoch",
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Image.Image:
    """The plot of :func:`plot_curves` as an in-memory RGB image (for composing several plots into one file)."""
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = default_font(12)
    if title:
        _draw_text(draw, (size[0] / 2, TOP / 2), title, "mm", default_font(15))
    if xlabel:
        _draw_text(draw, (LEFT + (size[0] - LEFT - RIGHT) / 2, size[1] - 8), xlabel, "mb", font)
    clean = {name: _finite_points(points) for name, points in series.items()}
    all_points = [p for points in clean.values() for p in points]
    if not all_points:
        frame = _Frame(size, (0.0, 1.0), (0.0, 1.0))
        draw.rectangle([frame.x0, frame.y0, frame.x1, frame.y1], outline=(0, 0, 0))
        _draw_text(draw, ((frame.x0 + frame.x1) / 2, (frame.y0 + frame.y1) / 2), "no data", "mm", default_font(15))
        return image
    x_lo, x_hi, xticks = _axis([x for x, _ in all_points], xlim)
    y_lo, y_hi, yticks = _axis([y for _, y in all_points], ylim)
    frame = _Frame(size, (x_lo, x_hi), (y_lo, y_hi))
    _draw_axes(draw, frame, xticks, yticks, font)
    for i, points in enumerate(clean.values()):
        _draw_series(draw, frame, points, COLORS[i % len(COLORS)])
    _draw_legend(draw, frame, list(clean), font)
    return image


def _save_png_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """Save atomically: a viewer never sees a partial PNG."""
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def plot_curves(
    path: str | os.PathLike,
    series: Series,
    title: str = "",
    xlabel: str = "epoch",
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Write named (x, y) series as coloured polylines with axes, ticks and a legend to the PNG ``path``.

    NaN/inf points are skipped (the line joins their neighbours: a metric evaluated every few epochs is still one
    line). With no finite point at all the image says "no data". ``xlim``/``ylim`` fix an axis range, e.g. (0, 1)
    for AP; values outside it are drawn at the edge.
    """
    _save_png_atomic(render_curves(series, title, xlabel, size=size, xlim=xlim, ylim=ylim), path)


def _parse_float(cell: str | None) -> float:
    """A csv cell as a float; empty or unparsable cells are missing values (NaN)."""
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_metrics_csv(csv_path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """Every numeric column of a trainer's metrics.csv as ``(epoch, value)`` points; rows without an epoch dropped."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c != "epoch"]
        curves: dict[str, list[tuple[float, float]]] = {c: [] for c in columns}
        for row in reader:
            epoch = _parse_float(row.get("epoch"))
            if math.isnan(epoch):
                continue
            for column in columns:
                curves[column].append((epoch, _parse_float(row.get(column))))
    return curves


def _with_values(curves: dict[str, list[tuple[float, float]]], names: Sequence[str]) -> Series:
    """The named curves that have at least one finite value, so the legend lists only what is drawn."""
    return {n: curves[n] for n in names if any(math.isfinite(y) for _, y in curves.get(n, []))}


def plot_training_metrics(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Training losses (top) and validation AP/AP50 on a fixed 0..1 axis (bottom) from a metrics.csv, as one PNG.

    Both panels share the epoch axis. Empty cells (AP is only computed on evaluation epochs) are skipped, and so
    are negative AP values: pycocotools' -1 means "undefined", not a score.
    """
    curves = read_metrics_csv(csv_path)
    for name in AP_COLUMNS:
        if name in curves:
            curves[name] = [(x, y if y >= 0 else math.nan) for x, y in curves[name]]
    epochs = [x for points in curves.values() for x, _ in points]
    xticks = nice_ticks(*_padded_range(epochs)) if epochs else None
    xlim = (xticks[0], xticks[-1]) if xticks else None  # one round-numbered epoch axis for both panels
    loss_names = [c for c in curves if LOSS_COLUMNS_HINT in c.lower()]
    width, height = DEFAULT_SIZE
    top = render_curves(_with_values(curves, loss_names), "training loss", size=(width, height), xlim=xlim)
    bottom = render_curves(
        _with_values(curves, AP_COLUMNS), "validation AP", size=(width, height), xlim=xlim, ylim=(0, 1)
    )
    canvas = Image.new("RGB", (width, 2 * height), (255, 255, 255))
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, height))
    _save_png_atomic(canvas, png_path)
