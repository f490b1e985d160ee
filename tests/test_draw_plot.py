"""Drawing detections on images and the Pillow-only training plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from efficientdet import draw as draw_module
from efficientdet.draw import class_color, draw_detections
from efficientdet.plot import DEFAULT_SIZE, nice_ticks, plot_curves, plot_training_metrics, read_metrics_csv


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


def test_nice_ticks_cover_the_range():
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(1, 50) == [0, 10, 20, 30, 40, 50]
    ticks = nice_ticks(0.31, 1.23)
    assert ticks[0] <= 0.31 and ticks[-1] >= 1.23


def test_plot_curves_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "loss.png"
    series = {
        "loss": [(e, 1.0 / e) for e in range(1, 11)],
        "val": [(e, math.nan if e % 3 else 0.5) for e in range(1, 11)],
    }
    plot_curves(path, series, title="loss")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == DEFAULT_SIZE
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]  # the temp file was renamed away


@pytest.mark.parametrize(
    "series",
    [{"one": [(3.0, 0.25)]}, {"empty": []}, {}, {"all_nan": [(1.0, math.nan), (math.nan, 2.0)]}],
    ids=["single-point", "empty-series", "no-series", "all-nan"],
)
def test_plot_curves_edge_cases(tmp_path, series):
    path = tmp_path / "p.png"
    plot_curves(path, series, size=(300, 200))
    with Image.open(path) as im:
        im.load()
        assert im.size == (300, 200)


def test_plot_training_metrics_with_missing_cells(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    rows = ["epoch,train_loss,train_cls_loss,train_box_loss,AP,AP50,lr"]
    for e in range(1, 7):
        ap = f"{0.1 * e:.2f},{0.15 * e:.2f}" if e % 2 == 0 else ","
        rows.append(f"{e},{2 / e:.3f},{1.5 / e:.3f},{0.5 / e:.3f},{ap},0.01")
    rows.append(",,,,,,")  # a row without an epoch is ignored
    csv_path.write_text("\n".join(rows) + "\n")
    curves = read_metrics_csv(csv_path)
    assert len(curves["train_loss"]) == 6 and math.isnan(curves["AP"][0][1]) and curves["AP"][1] == (2.0, 0.2)

    png = tmp_path / "metrics.png"
    plot_training_metrics(csv_path, png)
    with Image.open(png) as im:
        assert im.size == (DEFAULT_SIZE[0], 2 * DEFAULT_SIZE[1])


def test_plot_training_metrics_header_only_and_no_ap_columns(tmp_path):
    for text in ("epoch,train_loss,AP,AP50\n", "epoch,train_loss\n1,0.5\n2,0.4\n"):
        csv_path = tmp_path / "metrics.csv"
        csv_path.write_text(text)
        plot_training_metrics(csv_path, tmp_path / "m.png")
        with Image.open(tmp_path / "m.png") as im:
            assert im.size == (DEFAULT_SIZE[0], 2 * DEFAULT_SIZE[1])
