"""benchmarks/camvid_boxes.py: boxes of CamVid's car / pedestrian / bicyclist regions, written as a VOC folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from efficientdet.data.readers import read_voc

sys.path.insert(0, str(REPO / "benchmarks"))
import camvid_boxes  # noqa: E402

pytest.importorskip("scipy")  # region labelling; installed with scikit-image (the test extra)


def hand_mask() -> np.ndarray:
    """12 x 16 labels: two cars touching only at a corner (one 8-connected region), a separate car, a pedestrian,
    a 2-pixel car sliver, and sky/road elsewhere."""
    mask = np.zeros((12, 16), np.uint8)
    mask[6:, :] = 3  # road
    mask[1:4, 1:4] = 8  # car A: rows 1-3, columns 1-3
    mask[4:6, 4:7] = 8  # car B: rows 4-5, columns 4-6, touching A at the corner (3, 3) / (4, 4)
    mask[7:11, 10:14] = 8  # car C: rows 7-10, columns 10-13
    mask[2:10, 8] = 9  # pedestrian: rows 2-9, column 8
    mask[10, 1:3] = 8  # a 2-pixel car sliver
    mask[0, 15] = 11  # void
    return mask


def test_regions_become_boxes_in_voc_pixels_and_small_ones_are_dropped():
    boxes = camvid_boxes.region_boxes(hand_mask(), camvid_boxes.CLASSES, min_area=3)
    # VOC corners: xmin = first column + 1, xmax = last column + 1 (1-based, inclusive)
    assert sorted(boxes) == [
        ("car", 2, 2, 7, 6),  # A and B, one region through their touching corners
        ("car", 11, 8, 14, 11),
        ("pedestrian", 9, 3, 9, 10),
    ]
    assert ("car", 2, 11, 3, 11) in camvid_boxes.region_boxes(hand_mask(), camvid_boxes.CLASSES, min_area=2)


def test_convert_writes_a_voc_folder_the_reader_takes(tmp_path):
    camvid = tmp_path / "camvid"
    for folder, names in (("train", ["f1", "f2"]), ("val", ["f3"])):
        (camvid / folder).mkdir(parents=True)
        (camvid / f"{folder}annot").mkdir()
        for name in names:
            Image.new("RGB", (16, 12), (90, 90, 90)).save(camvid / folder / f"{name}.jpg")
            Image.fromarray(hand_mask()).save(camvid / f"{folder}annot" / f"{name}.png")
    out = tmp_path / "boxes"
    assert camvid_boxes.main(["--camvid", str(camvid), "--output", str(out), "--min-area", "3"]) == 0
    train, test = read_voc(out, "train"), read_voc(out, "test")
    assert [Path(r.path).name for r in train.records] == ["f1.jpg", "f2.jpg"] and len(test.records) == 1
    assert train.class_names == ["car", "pedestrian", "bicyclist"] == test.class_names
    assert (out / "JPEGImages" / "f3.jpg").resolve() == (camvid / "val" / "f3.jpg").resolve()  # linked, not copied
    record = test.records[0]
    got = sorted((train.class_names[label], *box) for box, label in zip(record.boxes.tolist(), record.labels.tolist()))
    assert got == [("car", 1, 1, 7, 6), ("car", 10, 7, 14, 11), ("pedestrian", 8, 2, 9, 10)]  # 0-based x1, y1


def test_missing_camvid_folder_is_one_line_and_exit_1(tmp_path, capsys):
    assert camvid_boxes.main(["--camvid", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 1
    assert "no CamVid frames" in capsys.readouterr().err
