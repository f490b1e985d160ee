"""Drawing detections on images, and the training plots (matplotlib, written as PNG)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from efficientdet import draw as draw_module
from efficientdet.viz.draw import class_color, draw_detections
from efficientdet.viz.plot import (
    new_figure,
    plot_segmentation_metrics,
    plot_training_metrics,
    read_metrics_csv,
    save_figure,
)

PANEL = (800, 450)  # pixels of one panel of a metrics plot


def gray_image(h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def test_draw_changes_the_box_border_and_keeps_the_input():
    image = gray_image()
    before = image.copy()
    out = draw_detections(image, [[40, 50, 120, 110]], [1], [0.9], class_names=["a", "b"])
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (160, 120)
    pixels = np.asarray(out)
    assert tuple(pixels[80, 40]) == class_color(1)  # left edge of the box
    assert tuple(pixels[80, 80]) == (128, 128, 128)  # inside the box: untouched
    assert not np.array_equal(pixels[40:50, 40:60], before[40:50, 40:60])  # the tag above the box
    np.testing.assert_array_equal(image, before)


def test_draw_accepts_pil_and_tensors_and_filters_by_score():
    image = Image.fromarray(gray_image())
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [80.0, 20.0, 150.0, 100.0]])
    out = draw_detections(image, boxes, torch.tensor([0, 1]), torch.tensor([0.9, 0.2]), score_threshold=0.5)
    pixels = np.asarray(out)
    assert tuple(pixels[40, 10]) == class_color(0)
    assert tuple(pixels[60, 150]) == (128, 128, 128)  # the low-score box is not drawn
    assert np.asarray(image).max() == 128  # the PIL input is untouched too


def test_draw_tiny_large_and_empty():
    tiny = draw_detections(np.zeros((1, 1, 3), np.uint8), [[0, 0, 1, 1]], [0], [0.5])
    assert tiny.size == (1, 1)
    empty = draw_detections(gray_image(), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))
    np.testing.assert_array_equal(np.asarray(empty), gray_image())
    outside = draw_detections(gray_image(), [[-50, -50, 1000, 1000], [math.nan, 0, 1, 1]], [3, 0], [0.7, 0.9])
    assert outside.size == (160, 120)
    large = draw_detections(Image.new("RGB", (4000, 3000)), [[100, 100, 3000, 2500]], [2], [0.8])
    assert large.size == (4000, 3000) and tuple(np.asarray(large)[1000, 101]) == class_color(2)


def test_draw_ground_truth_without_scores():
    out = draw_detections(gray_image(), [[20, 30, 100, 100]], [0], None, class_names=["cat"])
    assert tuple(np.asarray(out)[60, 20]) == class_color(0)


def test_draw_falls_back_when_load_default_takes_no_size(monkeypatch):
    real = ImageFont.load_default

    def old_load_default():  # Pillow < 10.1 has no size argument: calling it with one raises TypeError
        return real()

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    draw_module.default_font.cache_clear()
    try:
        out = draw_detections(gray_image(), [[20, 30, 100, 100]], [0], [0.5], class_names=["cat"])
        assert tuple(np.asarray(out)[60, 20]) == class_color(0)
    finally:
        draw_module.default_font.cache_clear()


def png_pixels(path, size):
    """The RGB pixels of the PNG ``path``, checked to be ``size`` (width, height) and not blank."""
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # something was drawn on the white background
    return pixels


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig, ax = new_figure(4, 3)
    ax.plot([0, 1, 2], [1, 0, 1])
    path = tmp_path / "plots" / "curve.png"
    save_figure(fig, path)
    png_pixels(path, (400, 300))
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]  # the temp file was renamed away
    _, axes = new_figure(nrows=2, ncols=3)
    assert axes.shape == (2, 3)


def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plot_training_metrics_with_missing_cells(tmp_path):
    rows = ["epoch,train_loss,train_cls_loss,train_box_loss,AP,AP50,lr"]
    for e in range(1, 7):
        ap = f"{0.1 * e:.2f},{0.15 * e:.2f}" if e % 2 == 0 else ","
        rows.append(f"{e},{2 / e:.3f},{1.5 / e:.3f},{0.5 / e:.3f},{ap},0.01")
    rows.append("7,nan,1.0,,-1,-1,0.01")  # NaN, empty and pycocotools' "undefined" cells
    rows.append(",,,,,,")  # a row without an epoch is ignored
    csv_path = write_csv(tmp_path / "metrics.csv", rows)
    curves = read_metrics_csv(csv_path)
    assert len(curves["train_loss"]) == 7 and math.isnan(curves["AP"][0][1]) and curves["AP"][1] == (2.0, 0.2)
    assert math.isnan(curves["train_loss"][6][1])

    png = tmp_path / "metrics.png"
    plot_training_metrics(csv_path, png)
    png_pixels(png, (PANEL[0], 2 * PANEL[1]))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize(
    "lines",
    [
        ["epoch,train_loss,AP,AP50"],  # header only
        ["epoch,train_loss,AP,AP50", "1,0.5,,"],  # a single row
        ["epoch,train_loss", "1,0.5", "2,0.4"],  # no AP columns
        ["epoch,train_loss,AP", "1,nan,-1", "2,,-1"],  # nothing finite
    ],
    ids=["header-only", "single-row", "no-ap-columns", "all-missing"],
)
def test_plot_training_metrics_edge_cases(tmp_path, lines):
    csv_path = write_csv(tmp_path / "metrics.csv", lines)
    plot_training_metrics(csv_path, tmp_path / "m.png")
    png_pixels(tmp_path / "m.png", (PANEL[0], 2 * PANEL[1]))


def test_plot_segmentation_metrics(tmp_path):
    lines = ["epoch,train_loss,lr,mIoU,pixel_acc,iou_road"]
    lines += [f"{e},{1 / e:.3f},0.01,{0.1 * e:.2f},{0.2 * e:.2f},0.5" for e in range(1, 4)]
    csv_path = write_csv(tmp_path / "metrics.csv", lines)
    plot_segmentation_metrics(csv_path, tmp_path / "seg.png")
    png_pixels(tmp_path / "seg.png", (PANEL[0], 2 * PANEL[1]))
