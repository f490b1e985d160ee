"""The confusion matrix on hand-made cases, and the evaluation plots written from pycocotools' arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.data.records import DetectionData, ImageRecord
from efficientdet.evaluation.coco import evaluate_split
from efficientdet.evaluation.confusion import confusion_matrix
from efficientdet.evaluation.plots import SCORE_GRID, f1_by_threshold, write_evaluation_plots


def record(image_id: int, boxes: list, labels: list, crowd: list | None = None) -> ImageRecord:
    n = len(boxes)
    return ImageRecord(
        f"/data/{image_id}.jpg", image_id, 400, 400, np.asarray(boxes, np.float32).reshape(n, 4),
        np.asarray(labels, np.int64), np.asarray(crowd or [False] * n, bool),
    )  # fmt: skip


def dets(boxes: list, labels: list, scores: list) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def test_confusion_matrix_hand_counted():
    """Image 1: a class-0 box found as 0, a class-1 box found as 0 (a confusion), a class-1 box missed, and a
    false alarm of class 1 on empty ground. Image 2: a class-0 box found twice (the second copy is a false alarm)
    and a low-score detection below the threshold (not counted at all)."""
    records = [
        record(1, [[0, 0, 100, 100], [200, 200, 300, 300], [0, 300, 50, 350]], [0, 1, 1]),
        record(2, [[10, 10, 110, 110]], [0]),
    ]
    detections = [
        dets([[2, 2, 100, 100], [205, 200, 300, 300], [300, 0, 380, 60]], [0, 0, 1], [0.9, 0.8, 0.7]),
        dets([[10, 10, 110, 110], [12, 10, 110, 110], [0, 300, 50, 350]], [0, 0, 1], [0.9, 0.6, 0.1]),
    ]
    m = confusion_matrix(records, detections, num_classes=2, score_threshold=0.5)
    # rows: true 0 (both found as 0), true 1 (one found as 0, one missed), background (a duplicate of class 0 and
    # a class-1 detection on nothing); columns: predicted 0, predicted 1, missed
    expected = [[2, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert m.tolist() == expected
    # at threshold 0.05 image 2's low-score class-1 detection counts too: no class-1 box is there, a false alarm
    m_low = confusion_matrix(records, detections, num_classes=2, score_threshold=0.05)
    assert m_low[2].tolist() == [1, 2, 0]


def test_confusion_matrix_ignores_detections_on_crowd_regions():
    records = [record(1, [[0, 0, 100, 100], [200, 200, 400, 400]], [0, 0], crowd=[False, True])]
    detections = [dets([[0, 0, 100, 100], [210, 210, 390, 390]], [0, 0], [0.9, 0.9])]
    m = confusion_matrix(records, detections, num_classes=1, score_threshold=0.5)
    assert m.tolist() == [[1, 0], [0, 0]]


def test_confusion_matching_is_one_to_one_by_iou():
    """Two boxes, two detections: the pairing with the larger IoU wins, each box and detection used once."""
    records = [record(1, [[0, 0, 100, 100], [50, 0, 150, 100]], [0, 1])]
    detections = [dets([[48, 0, 150, 100], [0, 0, 98, 100]], [1, 0], [0.9, 0.8])]
    m = confusion_matrix(records, detections, num_classes=2, score_threshold=0.5)
    assert m.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_f1_curve_from_the_coco_arrays():
    """One class, two boxes: a hit at score 0.95, a false alarm at 0.8, the second box found at 0.3. Above 0.9:
    P 1, R 0.5, F1 0.667. Above 0.3 (all three): P 2/3, R 1 -> F1 0.8, the best; above 0.31 it is 0.667 again."""
    records = [record(1, [[0, 0, 100, 100], [200, 200, 300, 300]], [0])]
    records[0].labels = np.array([0, 0])
    detections = [dets([[0, 0, 100, 100], [300, 0, 380, 60], [200, 200, 300, 300]], [0, 0, 0], [0.95, 0.8, 0.3])]
    data = DetectionData(records, ["cell"], "voc")
    evaluation = evaluate_split(data, detections)
    f1 = f1_by_threshold(evaluation)[0]
    at = {round(float(t), 2): float(v) for t, v in zip(SCORE_GRID, f1)}
    assert at[0.9] == pytest.approx(2 / 3, abs=1e-6)
    assert at[0.29] == pytest.approx(0.8, abs=1e-6) and at[0.31] == pytest.approx(2 / 3, abs=1e-6)
    assert at[0.96] == 0.0


def test_evaluation_plots_are_written(tmp_path):
    records = [record(1, [[0, 0, 100, 100], [200, 200, 300, 300]], [0, 1]), record(2, [[10, 10, 60, 60]], [0])]
    detections = [dets([[0, 0, 100, 100], [200, 200, 290, 300]], [0, 1], [0.9, 0.6]), dets([], [], [])]
    data = DetectionData(records, ["a", "b", "never-seen"], "voc")
    evaluation = evaluate_split(data, detections)
    plots = write_evaluation_plots(evaluation, data, detections, tmp_path / "plots")
    for path in (plots.pr_curves, plots.f1_curve, plots.confusion_matrix_png):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 300
            assert len(set(np.asarray(image.convert("L")).ravel().tolist())) > 10  # not blank
    rows = plots.confusion_matrix_csv.read_text().splitlines()
    assert rows[0] == "true \\ predicted,a,b,never-seen,background"
    assert rows[1] == "a,1,0,0,1"  # image 2's box was missed
    assert 0.6 <= plots.best_threshold <= 0.9
