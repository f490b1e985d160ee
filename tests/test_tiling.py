"""Sliced inference: the tile grid, merging across tiles, batching, and small objects found only by tiling.

Most tests use ``SquareNet``, a deterministic stand-in for the network rather than a trained model: it gives
the outputs EfficientDet gives (per-level class logits and box codes for the config's anchors) and "detects"
bright squares exactly, but only when they are at least ``MIN_SIDE`` px in its input. That is what a real
detector does too (objects shrunk to a few pixels are lost), and it makes the tiling and merging machinery
testable to the pixel. Training a real model in the test on synthetic shapes was not chosen: it takes minutes
on this CPU, and its boxes would be too loose to check merging within a few pixels. One CLI test runs a real
(random) Lite0 checkpoint through ``predict --tile``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import tiny_detector_checkpoint
from torch import nn

from efficientdet.cli import main
from efficientdet.inference import Detector
from efficientdet.inference.predict import predict
from efficientdet.inference.tiling import merge_detections, tile_grid
from efficientdet.models.config import get_config
from efficientdet.ops.anchors import anchors_for_config, encode_boxes, feature_sizes
from efficientdet.ops.postprocess import batched_nms

INPUT = 128
MIN_SIDE = 12  # input px: smaller squares are invisible to SquareNet
BRIGHT = 200  # a pixel is part of a square when all its channels are above this
LOGIT = 4.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Hundreds of tiny tensors: the whole module runs on one torch thread (see ``conftest.one_torch_thread``)."""


class SquareNet(nn.Module):
    """EfficientDet's outputs for an input with bright squares: one P3 anchor per square of at least MIN_SIDE px.

    A square (any bright rectangle: squares cut by a tile border, or resized, stay rectangles) starts at a bright
    pixel with no bright pixel left of it or above it; its width and height are the runs of bright pixels from
    there. The P3 anchor nearest its centre gets logit ``LOGIT`` and the box code of its exact box.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = get_config("efficientdet-lite0", num_classes=1, image_size=INPUT)
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        self.batch_sizes.append(images.shape[0])
        cfg = self.config
        b, _, h, w = images.shape
        pixels = images * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)
        bright = (pixels > BRIGHT).all(1)
        left = nn.functional.pad(bright[:, :, :-1], (1, 0))
        above = nn.functional.pad(bright[:, :-1, :], (0, 0, 1, 0))
        a, sizes = cfg.num_anchors, feature_sizes((h, w), cfg.min_level, cfg.max_level)
        cls = [torch.full((b, a * cfg.num_classes, fh, fw), -20.0) for fh, fw in sizes]
        box = [torch.zeros(b, a * 4, fh, fw) for fh, fw in sizes]
        anchors = anchors_for_config(cfg, (h, w))
        stride = 2**cfg.min_level
        for i, y1, x1 in torch.nonzero(bright & ~left & ~above).tolist():
            x2 = x1 + int(bright[i, y1, x1:].int().cumprod(0).sum())  # the run of bright pixels to the right
            y2 = y1 + int(bright[i, y1:, x1].int().cumprod(0).sum())  # and down
            if min(y2 - y1, x2 - x1) < MIN_SIDE:
                continue
            cy, cx = (y1 + y2) // 2 // stride, (x1 + x2) // 2 // stride
            anchor = anchors[(cy * sizes[0][1] + cx) * a]  # P3, first anchor of the cell
            cls[0][i, 0, cy, cx] = LOGIT
            box[0][i, 0:4, cy, cx] = encode_boxes(torch.tensor([y1, x1, y2, x2], dtype=torch.float32), anchor)
        return cls, box


def canvas(size: int | tuple[int, int], squares: list[tuple[int, int, int]]) -> np.ndarray:
    """A dark image (H, W) with white squares (x, y, side)."""
    h, w = (size, size) if isinstance(size, int) else size
    image = np.full((h, w, 3), 40, np.uint8)
    for x, y, side in squares:
        image[y : y + side, x : x + side] = 255
    return image


def square_box(x: int, y: int, side: int) -> list[float]:
    return [x, y, x + side, y + side]


def matches(boxes: torch.Tensor, expected: list[list[float]], tolerance: float) -> list[int]:
    """For each expected box, how many detected boxes are within ``tolerance`` px of it on every side."""
    return [int(((boxes - torch.tensor(e)).abs().amax(1) <= tolerance).sum()) for e in expected]


# ---- the grid ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(1000, 700, 256, 0.25), (512, 512, 128, 0.0), (300, 2000, 128, 0.5)]
)
def test_grid_covers_the_image_with_the_overlap(h, w, tile, overlap):
    rects = tile_grid(h, w, tile, overlap)
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h  # inside the image, never padded
        assert (x1 - x0, y1 - y0) == (min(tile, w), min(tile, h))
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    want = round(overlap * tile)
    xs, ys = sorted({r[0] for r in rects}), sorted({r[1] for r in rects})
    for starts in (xs, ys):
        steps = np.diff(starts)
        assert (tile - steps >= want).all()  # neighbours overlap by at least the requested amount ...
        assert (tile - steps[:-1] == want).all()  # ... exactly, except the last tile moved back inside the image
    assert xs[-1] + tile == w and ys[-1] + tile == h


def test_tiny_image_gives_one_tile():
    assert tile_grid(20, 30, 128, 0.2) == [(0, 0, 30, 20)]
    assert tile_grid(128, 128, 128, 0.2) == [(0, 0, 128, 128)]
    assert tile_grid(100, 300, 128, 0.0) == [(0, 0, 128, 100), (128, 0, 256, 100), (172, 0, 300, 100)]


def test_bad_tile_options_are_refused():
    with pytest.raises(ValueError, match="tile must be 0 .* at least 32"):
        Detector(SquareNet(), tile=16)
    with pytest.raises(ValueError, match=r"tile overlap must be in \[0, 1\)"):
        Detector(SquareNet(), tile=128, tile_overlap=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        Detector(SquareNet(), tile=128, batch_size=0)


# ---- merging -----------------------------------------------------------------------------------------------------


def test_cut_piece_at_a_tile_border_is_reported_once():
    """A whole box from one tile and its 12 px piece from the neighbour: IoU 0.5 is not a duplicate for NMS, but the
    piece lies inside the whole box, so it goes. An uncut small box inside a large one stays."""
    boxes = torch.tensor([[90.0, 10, 114, 34], [102, 10, 114, 34], [300, 300, 400, 400], [320, 320, 340, 340]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    labels = torch.zeros(4, dtype=torch.long)
    sources = torch.tensor([0, 1, -1, -1])
    cut = torch.tensor([False, True, False, False])
    assert len(batched_nms(boxes, scores, labels, 0.5)) == 4  # NMS alone keeps the piece
    for nms in ("hard", "soft"):
        kept, kept_scores, _ = merge_detections(boxes, scores, labels, sources, cut, nms=nms)
        assert kept.tolist() == [boxes[0].tolist(), boxes[2].tolist(), boxes[3].tolist()]
        assert kept_scores.tolist() == pytest.approx([0.8, 0.7, 0.6])
    other_class = torch.tensor([0, 1, 0, 0])  # a piece is only a piece of the same class ...
    assert len(merge_detections(boxes, scores, other_class, sources, cut)[0]) == 4
    assert len(merge_detections(boxes, scores, other_class, sources, cut, class_agnostic=True)[0]) == 3  # ... unless


def test_soft_nms_merge_drops_duplicates_from_other_tiles_only():
    """Soft-NMS keeps overlapping boxes of one pass (decayed already); the same box from two tiles is kept once."""
    boxes = torch.tensor([[10.0, 10, 40, 40], [11, 10, 41, 40], [20, 10, 50, 40]])
    scores = torch.tensor([0.9, 0.85, 0.4])
    labels = torch.zeros(3, dtype=torch.long)
    cut = torch.zeros(3, dtype=torch.bool)
    for sources in ([0, 1, 0], [0, 1, 2]):  # box 1 (IoU 0.94 with box 0) from another tile is a duplicate
        kept, _, _ = merge_detections(boxes, scores, labels, torch.tensor(sources), cut, nms="soft")
        assert kept.tolist() == [boxes[0].tolist(), boxes[2].tolist()]  # box 2: IoU 0.5, not above it
    kept, _, _ = merge_detections(boxes, scores, labels, torch.tensor([0, 0, 0]), cut, nms="soft")
    assert len(kept) == 3
    kept, _, _ = merge_detections(boxes, scores, labels, torch.tensor([0, 0, 0]), cut, nms="hard")
    assert kept.tolist() == [boxes[0].tolist(), boxes[2].tolist()]  # hard NMS suppresses within a pass too


# ---- end to end with the stand-in network ------------------------------------------------------------------------

SMALL = [(300, 200, 24), (1500, 900, 24), (90, 1700, 24), (1800, 1800, 24), (1024, 410, 24)]
# (90, 10): whole in the first column of tiles, a 12 px piece in the second (tiles start every 102 px at 128/0.2);
# (103, 600): inside the overlap of the first two columns, found whole by both.
BORDER = [(90, 10, 24), (103, 600, 24)]
LARGE = (512, 1024, 704)  # 44 input px in the full-image pass (2048 -> 128 is exactly 1/16), larger than a tile


@pytest.fixture(scope="module")
def big_image():
    return canvas(2048, [*SMALL, *BORDER, LARGE])


@pytest.mark.parametrize("nms", ["hard", "soft"])
def test_tiling_finds_small_objects_that_plain_inference_misses(big_image, nms):
    plain = Detector(SquareNet(), score_threshold=0.3, nms=nms)(big_image)[0]
    small = [square_box(*s) for s in SMALL + BORDER]
    assert matches(plain["boxes"], small, 16) == [0] * len(small)  # 24 px -> 1.5 px: invisible to the network
    assert matches(plain["boxes"], [square_box(*LARGE)], 16) == [1]

    net = SquareNet()
    tiled = Detector(net, score_threshold=0.3, nms=nms, tile=128, tile_overlap=0.2, batch_size=16)(big_image)[0]
    assert matches(tiled["boxes"], small, 2) == [1] * len(small)  # each small square once, within 2 px
    assert matches(tiled["boxes"], [square_box(*LARGE)], 2) == [1]  # by the full-image pass, its pieces dropped
    assert len(tiled["boxes"]) == len(small) + 1  # nothing else: no pieces, no duplicates
    assert tiled["label_names"] == ["0"] * len(tiled["boxes"])
    assert sum(net.batch_sizes) == len(tile_grid(2048, 2048, 128, 0.2)) + 1 and max(net.batch_sizes) == 16


def test_tiled_list_input_and_small_images():
    """Lists give one merged result per image; an image no larger than a tile is one plain pass."""
    net = SquareNet()
    det = Detector(net, score_threshold=0.3, tile=128, batch_size=4)
    small_image = canvas((100, 120), [(10, 20, 30)])
    large_image = canvas((300, 500), [(400, 250, 20), (5, 5, 14)])
    out = det([small_image, large_image])
    assert len(out) == 2 and net.batch_sizes[0] == 1
    assert matches(out[0]["boxes"], [square_box(10, 20, 30)], 1.5) == [1] and len(out[0]["boxes"]) == 1
    assert matches(out[1]["boxes"], [square_box(400, 250, 20), square_box(5, 5, 14)], 1) == [1, 1]
    assert len(out[1]["boxes"]) == 2


def test_tiles_run_in_batches_on_a_large_image():
    """4000 x 4000 at tile 512: 100 tiles + the full image, never more than batch_size cut out (pre-processed) at
    once, nor per forward pass."""
    image = canvas(4000, [(3000, 100, 200)])
    net = SquareNet()
    detector = Detector(net, score_threshold=0.3, tile=512, tile_overlap=0.2, batch_size=6)
    preprocess, held = detector.preprocess, []
    detector.preprocess = lambda crops: held.append(len(crops)) or preprocess(crops)
    out = detector(image)[0]
    assert len(tile_grid(4000, 4000, 512, 0.2)) == 100
    assert max(net.batch_sizes) == 6 and sum(net.batch_sizes) == 101 and len(net.batch_sizes) == 17
    assert held == net.batch_sizes
    assert matches(out["boxes"], [square_box(3000, 100, 200)], 4) == [1] and len(out["boxes"]) == 1


def test_predict_with_tiles_writes_each_small_object_once(big_image, tmp_path):
    from PIL import Image

    Image.fromarray(big_image).save(tmp_path / "big.png")
    summary = predict([tmp_path / "big.png"], SquareNet(), tmp_path / "out", tile=128, batch_size=8, draw=False)
    entries = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert summary.exit_code == 0 and len(entries) == len(SMALL) + len(BORDER) + 1
    found = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (e["bbox"] for e in entries)])
    assert matches(found, [square_box(*s) for s in SMALL], 2) == [1] * len(SMALL)


def test_cli_predict_tile(tmp_path, capsys):
    from PIL import Image

    ckpt = tiny_detector_checkpoint(tmp_path / "m.pt", ["a", "b"])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "x.png"), "--checkpoint", str(ckpt), "--output", str(out), "--no-draw"]
    assert main([*args, "--tile", "128", "--tile-overlap", "0.25", "--device", "cpu"]) == 0
    entries = json.loads((out / "detections.json").read_text())
    assert entries and all(e["bbox"][0] + e["bbox"][2] <= 400.01 and e["bbox"][1] + e["bbox"][3] <= 300.01
                           for e in entries)  # fmt: skip
    assert any(e["bbox"][0] > 200 for e in entries)  # boxes mapped back from tiles beyond the first
    capsys.readouterr()
    bad_options = [
        (["--tile", "16"], r"--tile: must be 0 \(off\) or at least 32 pixels, got 16"),
        (["--tile", "128", "--tile-overlap", "1"], r"--tile-overlap: must be in \[0, 1\), got 1"),
    ]
    for bad, message in bad_options:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *bad])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err)


def test_an_image_needing_too_many_tiles_is_refused_by_name(tmp_path, capsys):
    """`--tile 512 --tile-overlap 0.99` on a 12 MP photo planned 348,801 tiles (a 5 px stride) and ran for hours
    without a word; past MAX_TILES the image is refused with the numbers, and the other images still run."""
    from PIL import Image

    from efficientdet.inference.tiling import MAX_TILES, tile_count

    assert tile_count(3000, 4000, 512, 0.99) == 348_801 > MAX_TILES
    assert tile_count(100_000, 100_000, 512, 0.2) == 59_536 <= MAX_TILES  # a huge scene at the default overlap
    assert tile_count(300, 400, 128, 0.25) == len(tile_grid(300, 400, 128, 0.25))
    with pytest.raises(ValueError, match=r"4000x3000 in 512 px tiles at overlap 0\.99 is 348,801 tiles"):
        tile_grid(3000, 4000, 512, 0.99)
    ckpt = tiny_detector_checkpoint(tmp_path / "m.pt", ["a", "b"])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "big.png"), str(tmp_path / "small.png"), "--checkpoint", str(ckpt),
            "--output", str(out), "--no-draw", "--tile", "32", "--tile-overlap", "0.98"]  # fmt: skip
    assert main(args) == 1
    captured = capsys.readouterr()
    assert (f"{tmp_path / 'big.png'}: 400x300 in 32 px tiles at overlap 0.98 is 99,261 tiles (more than 65,536): "
            "lower --tile-overlap or raise --tile") in captured.err  # fmt: skip
    assert "predict: 1 image," in captured.out and "1 failed" in captured.out
    assert {e["file_name"] for e in json.loads((out / "detections.json").read_text())} <= {str(tmp_path / "small.png")}
