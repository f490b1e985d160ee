"""COCO metrics through pycocotools on hand-made cases whose AP can be worked out on paper."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from efficientdet.data.records import DetectionData, ImageRecord
from efficientdet.evaluation.coco import (
    METRIC_KEYS,
    coco_evaluation,
    coco_ground_truth,
    coco_metrics,
    detections_to_coco,
    evaluate_detections,
    format_metrics,
    format_per_class,
)

# COCO interpolates precision at 101 recall points 0.00, 0.01, ..., 1.00. With one TP then one FP over 2 GT boxes,
# recall stops at 0.5 with precision 1: the 51 points 0.00..0.50 have precision 1, the other 50 have 0.
HALF_RECALL_AP = 51 / 101


def record(image_id: int, boxes: list, labels: list, iscrowd: list | None = None, size: int = 400) -> ImageRecord:
    """An ImageRecord from plain lists (no crowd unless said)."""
    n = len(boxes)
    return ImageRecord(
        path=f"/data/img{image_id}.jpg",
        image_id=image_id,
        width=size,
        height=size,
        boxes=np.asarray(boxes, np.float32).reshape(n, 4),
        labels=np.asarray(labels, np.int64),
        iscrowd=np.asarray(iscrowd if iscrowd is not None else [False] * n, bool),
    )


def dets(boxes: list, labels: list, scores: list) -> dict:
    """One image's detections as the predictor returns them (torch tensors)."""
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def metrics_of(records: list[ImageRecord], detections: list[dict], num_classes: int = 2) -> dict[str, float]:
    names = [f"c{i}" for i in range(num_classes)]
    gt = coco_ground_truth(records, names)
    return coco_metrics(gt, detections_to_coco([r.image_id for r in records], detections))


@pytest.fixture
def mixed_records() -> list[ImageRecord]:
    """3 images, 2 classes, small (< 32^2), medium and large (> 96^2) boxes; the last image is a negative."""
    return [
        record(1, [[10, 10, 30, 30], [50, 60, 110, 140], [150, 150, 390, 390]], [0, 1, 0]),
        record(2, [[5, 5, 25, 20], [100, 100, 300, 250], [300, 20, 360, 70]], [1, 1, 0]),
        record(3, [], []),
    ]


def perfect(records: list[ImageRecord]) -> list[dict]:
    return [dets(r.boxes.tolist(), r.labels.tolist(), [1.0] * len(r.labels)) for r in records]


def test_perfect_predictions_score_one(mixed_records):
    m = metrics_of(mixed_records, perfect(mixed_records))
    assert set(m) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert m[key] == pytest.approx(1.0), key


def test_half_recall_gives_51_of_101():
    records = [record(1, [[10, 10, 60, 60], [100, 100, 160, 160]], [0, 0])]
    detections = [dets([[10, 10, 60, 60], [300, 300, 350, 350]], [0, 0], [0.9, 0.8])]
    m = metrics_of(records, detections, num_classes=1)
    # the TP is exact, so every IoU threshold gives the same curve
    assert m["AP50"] == pytest.approx(HALF_RECALL_AP, abs=1e-6)
    assert m["AP"] == pytest.approx(HALF_RECALL_AP, abs=1e-6)


def test_iou_06_counts_at_50_not_at_75():
    records = [record(1, [[0, 0, 100, 100]], [0])]
    detections = [dets([[0, 0, 60, 100]], [0], [0.9])]  # IoU 6000 / 10000 = 0.6
    m = metrics_of(records, detections, num_classes=1)
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert 0.0 < m["AP"] < 1.0


def test_wrong_class_is_a_false_positive():
    records = [record(1, [[10, 10, 110, 110], [200, 200, 300, 300]], [0, 1])]
    right = dets([[10, 10, 110, 110], [200, 200, 300, 300]], [0, 1], [0.9, 0.9])
    assert metrics_of(records, [right])["AP"] == pytest.approx(1.0)
    # class 1 also predicted on the class-0 box, ranked first: class 1's precision is 0.5 at every recall,
    # class 0 keeps AP 1, so the mean over classes is 0.75
    wrong = dets([[10, 10, 110, 110], [200, 200, 300, 300], [10, 10, 110, 110]], [0, 1, 1], [0.9, 0.9, 0.95])
    m = metrics_of(records, [wrong])
    assert m["AP50"] == pytest.approx(0.75, abs=1e-6)
    assert m["AP"] == pytest.approx(0.75, abs=1e-6)


def test_no_detections_give_zero_without_crashing(mixed_records):
    m = metrics_of(mixed_records, [dets([], [], []) for _ in mixed_records])
    assert m == {key: 0.0 for key in METRIC_KEYS}
    assert coco_metrics(coco_ground_truth(mixed_records, ["a", "b"]), []) == m


def test_area_range_without_ground_truth_is_minus_one():
    records = [record(1, [[0, 0, 200, 200]], [0])]  # only a large box: APs and APm are undefined
    for detections in ([dets([[0, 0, 200, 200]], [0], [1.0])], [dets([], [], [])]):
        m = metrics_of(records, detections, num_classes=1)
        assert m["APs"] == -1.0 and m["APm"] == -1.0


def test_detection_on_crowd_region_is_not_a_false_positive():
    crowd_box, box = [200, 200, 380, 380], [10, 10, 110, 110]
    detections = [dets([crowd_box, box], [0, 0], [0.95, 0.9])]  # the crowd hit outranks the true positive
    with_crowd = metrics_of([record(1, [box, crowd_box], [0, 0], [False, True])], detections, num_classes=1)
    assert with_crowd["AP"] == pytest.approx(1.0)
    # control: without the crowd region the same detection is a false positive ranked first (precision 0.5)
    without = metrics_of([record(1, [box], [0])], detections, num_classes=1)
    assert without["AP"] == pytest.approx(0.5, abs=1e-6)


def test_ground_truth_dict_shape(mixed_records):
    gt = coco_ground_truth(mixed_records, ["a", "b"])
    assert [img["id"] for img in gt["images"]] == [1, 2, 3]
    assert gt["images"][0] == {"id": 1, "width": 400, "height": 400, "file_name": "img1.jpg"}
    assert [a["id"] for a in gt["annotations"]] == list(range(1, 7))  # id 0 would mean "unmatched" to COCOeval
    first = gt["annotations"][1]
    assert first["bbox"] == [50.0, 60.0, 60.0, 80.0] and first["area"] == 4800.0
    assert first["category_id"] == 2 and first["iscrowd"] == 0
    assert gt["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_coco_metrics_leaves_its_inputs_unchanged(mixed_records):
    gt = coco_ground_truth(mixed_records, ["a", "b"])
    results = detections_to_coco([1, 2, 3], perfect(mixed_records))
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    coco_metrics(gt, results)
    assert gt == gt_before and results == results_before


def test_results_are_xywh_python_floats():
    detections = [{"boxes": np.array([[10.123, 20.0, 30.0, 60.5]]), "scores": np.array([0.5]), "labels": [1]}]
    (res,) = detections_to_coco([7], detections)
    assert res == {"image_id": 7, "category_id": 2, "bbox": [10.12, 20.0, 19.88, 40.5], "score": 0.5}
    assert all(type(v) is float for v in res["bbox"]) and type(res["score"]) is float
    json.dumps(res)


def test_category_ids_mapping(mixed_records, tmp_path):
    detections = perfect(mixed_records)
    results = detections_to_coco([1, 2, 3], detections, category_ids=[1, 3])
    assert sorted({r["category_id"] for r in results}) == [1, 3]
    labels = np.concatenate([r.labels for r in mixed_records])
    assert [r["category_id"] for r in results] == [{0: 1, 1: 3}[int(v)] for v in labels]

    data = DetectionData(mixed_records, ["a", "b"], "coco")
    data.category_ids = [1, 3]  # what a COCO reader that keeps the file's ids provides
    m = evaluate_detections(data, detections, detections_path=tmp_path / "dets.json")
    assert m["AP"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "dets.json").read_text())
    assert {r["category_id"] for r in saved} == {1, 3}


def test_classes_missing_from_the_annotation_file_get_spare_ids(mixed_records):
    # with_class_names() writes -1 for model classes the split's file lacks; several of them must not collide
    data = DetectionData(mixed_records, ["a", "b", "x", "y"], "coco", category_ids=[5, 9, -1, -1])
    detections = perfect(mixed_records)
    detections[2] = dets([[0, 0, 50, 50], [60, 60, 90, 90]], [2, 3], [0.3, 0.2])  # on the negative image
    gt = coco_ground_truth(data.records, data.class_names, data.category_ids)
    assert [c["id"] for c in gt["categories"]] == [5, 9, 10, 11]
    m = evaluate_detections(data, detections)
    assert m["AP"] == pytest.approx(1.0)  # classes without ground truth are left out of the mean


def test_evaluate_detections_writes_both_files(mixed_records, tmp_path):
    data = DetectionData(mixed_records, ["a", "b"], "coco")
    metrics_path, dets_path = tmp_path / "out" / "metrics.json", tmp_path / "out" / "dets.json"
    m = evaluate_detections(data, perfect(mixed_records), json_path=metrics_path, detections_path=dets_path)
    assert set(m) == set(METRIC_KEYS)
    written = json.loads(metrics_path.read_text())
    assert set(written) == {*METRIC_KEYS, "per_class", "images", "unreadable_images", "detections"}
    assert [row["class"] for row in written["per_class"]] == ["a", "b"] and written["images"] == 3
    assert written["detections"] == str(dets_path)
    assert {k: written[k] for k in METRIC_KEYS} == m
    saved = json.loads(dets_path.read_text())
    assert len(saved) == 6 and set(saved[0]) == {"image_id", "category_id", "bbox", "score"}
    assert sorted(p.name for p in metrics_path.parent.iterdir()) == ["dets.json", "metrics.json"]  # no temp left

    evaluate_detections(data, perfect(mixed_records), json_path=metrics_path)
    assert json.loads(metrics_path.read_text())["detections"] is None


def test_evaluate_detections_rejects_misaligned_input(mixed_records):
    data = DetectionData(mixed_records, ["a", "b"], "coco")
    with pytest.raises(ValueError):
        evaluate_detections(data, perfect(mixed_records)[:2])


def test_format_metrics():
    m = {"AP": 0.6123, "AP50": 0.921, "AP75": 0.7, "APs": -1.0, "APm": 0.4, "APl": 0.65}
    assert format_metrics(m) == "AP 0.612 | AP50 0.921 | AP75 0.700 | APs -1.000 | APm 0.400 | APl 0.650"


def test_per_class_table_hand_computed():
    """Class a: 2 boxes, an exact hit ranked above a miss -> AP 51/101 at every IoU, AR 0.5. Class b: one box
    found at IoU 0.72 -> counted at the 5 thresholds 0.50..0.70 of 10: AP 0.5, AP50 1, AP75 0, AR 0.5. Class c has
    no ground truth: undefined (-1) and left out of the headline mean, which is the mean of the defined rows."""
    records = [record(1, [[10, 10, 60, 60], [100, 100, 160, 160], [200, 200, 300, 300]], [0, 0, 1])]
    detections = [dets([[10, 10, 60, 60], [300, 10, 350, 60], [200, 200, 272, 300]], [0, 0, 1], [0.9, 0.8, 0.7])]
    gt = coco_ground_truth(records, ["a", "b", "c"])
    evaluation = coco_evaluation(gt, detections_to_coco([1], detections))
    a, b, c = evaluation.per_class
    half = HALF_RECALL_AP
    assert (a["class"], a["AP"], a["AP50"], a["AP75"], a["AR100"]) == ("a", *[pytest.approx(half)] * 3, 0.5)
    assert (a["gt_boxes"], a["detections"]) == (2, 2)
    assert (b["AP"], b["AP50"], b["AP75"], b["AR100"]) == pytest.approx((0.5, 1.0, 0.0, 0.5))
    assert (b["gt_boxes"], b["detections"]) == (1, 1)
    assert (c["AP"], c["AP50"], c["AR100"], c["gt_boxes"], c["detections"]) == (-1, -1, -1, 0, 0)
    assert evaluation.metrics["AP"] == pytest.approx((half + 0.5) / 2)
    assert evaluation.metrics["AP50"] == pytest.approx((half + 1.0) / 2)
    # the arrays behind the table: class a's precision at IoU 0.5 is 1 up to recall 0.5, then 0
    p50 = evaluation.precision[evaluation.iou_index(0.5), :, 0]
    assert p50[:51] == pytest.approx(np.ones(51)) and (p50[51:] == 0).all()
    assert evaluation.scores[0, 0, 0] == pytest.approx(0.9)
    table = format_per_class(evaluation).splitlines()
    assert table[0].split() == ["class", "AP", "AP50", "AP75", "AR100", "boxes", "dets"]
    assert table[3].split() == ["c", "-", "-", "-", "-", "0", "0"]


def test_coco_area_field_decides_size_split(tmp_path):
    """COCO's APs/APm/APl use each annotation's ``area`` (the mask's area), not the box's: a 40x40 box (box area
    1600, medium) whose annotation says area 900 is a small object."""
    from efficientdet.data.readers import read_coco

    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 200}],
        "categories": [{"id": 3, "name": "cell"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [50, 50, 40, 40], "area": 900}],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(coco))
    data = read_coco(path)
    m = evaluate_detections(data, [dets([[50, 50, 90, 90]], [0], [0.9])])
    assert m["APs"] == pytest.approx(1.0) and m["APm"] == -1.0
