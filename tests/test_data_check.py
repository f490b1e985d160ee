"""Data and anchor diagnostics: coverage of crafted boxes, counts on tiny datasets, the proposal, the CLI, and the
anchor flags of `efficientdet train` reaching the checkpoint."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, require_shared
from PIL import Image

from efficientdet.cli import anchor_overrides, build_parser, main
from efficientdet.data.readers import read_dataset
from efficientdet.engine.train import TrainConfig, build_model, resume_config
from efficientdet.evaluation.data_check import (
    RECOMMEND_MARGIN,
    best_anchor_iou,
    check_dataset,
    check_split,
    cluster_aspect_ratios,
    coverage,
    data_summary,
    format_report,
    propose_anchors,
)
from efficientdet.models.config import OFFICIAL_ASPECT_RATIOS, aspect_pairs, aspect_ratio_values, get_config
from efficientdet.models.factory import load_checkpoint
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.labeler import MATCH_IOU, box_iou

LITE0 = get_config("efficientdet-lite0")


def _xyxy(anchor_yxyx: torch.Tensor) -> np.ndarray:
    return anchor_yxyx[[1, 0, 3, 2]].numpy().reshape(1, 4)


def write_voc(root: Path, images: dict[str, list[tuple[str, int, int, int, int]]], splits: dict[str, list[str]],
              size: tuple[int, int] = (64, 48), classes: list[str] | None = None) -> Path:  # fmt: skip
    """A tiny VOC dataset: ``images`` maps an id to its objects (name, xmin, ymin, xmax, ymax; VOC 1-based)."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, objects in images.items():
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{stem}.jpg")
        xml = [f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
        for name, *box in objects:
            corners = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
            xml.append(f"<object><name>{name}</name><bndbox>{corners}</bndbox></object>")
        (root / "Annotations" / f"{stem}.xml").write_text("".join(xml) + "</annotation>")
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    images = {
        "a": [("cat", 5, 5, 30, 40), ("cat", 30, 10, 60, 45), ("dog", 10, 20, 20, 30)],
        "b": [],  # a negative image
        "c": [("dog", 2, 2, 60, 46)],
    }
    return write_voc(tmp_path / "voc", images, {"train": ["a", "b", "c"], "val": ["c"]}, classes=["bird", "cat", "dog"])


# --------------------------------------------------------------------------------------------- anchor coverage


def test_aspect_pairs_convert_ratios_and_refuse_bad_values():
    assert aspect_pairs([1.0, 2.0, 0.5]) == OFFICIAL_ASPECT_RATIOS  # bit for bit
    w, h = aspect_pairs([5.0])[0]
    assert w / h == pytest.approx(5.0) and w * h == pytest.approx(1.0)  # same area as the square anchor
    assert aspect_ratio_values(aspect_pairs([3.0, 0.25])) == pytest.approx([3.0, 0.25])
    for bad in ([0.0], [-1.0], [math.nan], [math.inf], []):
        with pytest.raises(ValueError):
            aspect_pairs(bad)


def test_best_anchor_iou_equals_the_maximum_over_every_anchor():
    rng = np.random.default_rng(0)
    corner = rng.uniform(-20, 140, (400, 2))
    boxes = np.concatenate([corner, corner + np.exp(rng.uniform(0, 5, (400, 2)))], 1).astype(np.float32)
    config = LITE0.replace(anchor_scale=2.5, aspect_ratios=aspect_pairs([1.0, 3.0, 0.4]))
    anchors = anchors_for_config(config, (128, 128))[:, [1, 0, 3, 2]]
    brute = box_iou(torch.from_numpy(boxes), anchors).amax(1).numpy()
    np.testing.assert_allclose(best_anchor_iou(boxes, config, 128), brute, rtol=0, atol=1e-6)


def test_a_box_too_thin_for_every_anchor_is_uncovered_and_listed(tmp_path):
    root = write_voc(tmp_path / "thin", {"t": [("wire", 101, 11, 102, 310)]}, {"train": ["t"]}, size=(320, 320))
    check = check_split(read_dataset(root, "voc", "train"), "train", LITE0, 320)  # the box: 2 x 300 input px
    assert check.best_iou[0] < 0.1 and check.coverage == 0.0
    [row] = check.uncovered()
    assert row["file"] == "t.jpg" and row["class"] == "wire" and row["box"] == [100.0, 10.0, 102.0, 310.0]
    report = format_report(check_dataset(root, "voc", ["train"], LITE0, 320))
    assert "t.jpg" in report and "force-matches" in report


def test_a_box_equal_to_an_anchor_has_iou_one():
    anchors = anchors_for_config(LITE0, (320, 320))
    box = _xyxy(anchors[2 * 9 * 40 + 7])  # level 3 (40 x 40 cells), third cell, eighth shape
    assert best_anchor_iou(box, LITE0, 320)[0] == 1.0


def test_a_box_at_exactly_the_matching_iou_counts_as_covered():
    # one square shape per level: the box (an anchor at half its width, same centre) overlaps it at IoU 0.5 exactly,
    # and every other anchor (level 3 is 4 px off-centre, level 5 four times its area) less
    config = LITE0.replace(num_scales=1, aspect_ratios=((1.0, 1.0),), anchor_scale=4.0)
    anchors = anchors_for_config(config, (320, 320))
    y1, x1, y2, x2 = anchors[40 * 40 + 5 * 20 + 5].tolist()  # level 4, cell (5, 5): side 64, centre (88, 88)
    assert (x2 - x1, (x1 + x2) / 2) == (64.0, 88.0)
    box = np.array([[x1 + 16, y1, x2 - 16, y2]], np.float32)
    best = best_anchor_iou(box, config, 320)
    assert best[0] == MATCH_IOU and coverage(best) == 1.0


# --------------------------------------------------------------------------------------------- datasets


def test_counts_per_class_and_images_without_boxes(tiny_voc, tmp_path):
    check = check_dataset(tiny_voc, None, None, LITE0, 64)
    assert [s.name for s in check.splits] == ["train", "val"]
    assert any("'test'" in n for n in check.notes) and any("'trainval'" in n for n in check.notes)
    train, val = (s.to_dict() for s in check.splits)
    assert train["images"] == 3 and train["images_without_boxes"] == 1 and train["boxes"] == 4
    assert {k: v["boxes"] for k, v in train["classes"].items()} == {"bird": 0, "cat": 2, "dog": 2}
    assert train["classes"]["bird"]["coverage"] is None
    assert val["images_without_boxes"] == 0 and {k: v["boxes"] for k, v in val["classes"].items()}["dog"] == 1
    assert train["fixes"] == {"clipped_boxes": 0, "zero_area_boxes": 0, "unreadable_images": 0}
    assert sum(train["best_iou_histogram"]["counts"]) == 4
    report = format_report(check)
    assert "no boxes at all for: bird" in report and "== val:" in report
    line = data_summary(read_dataset(tiny_voc, "voc", "train"), "train", LITE0, 64)
    assert line.startswith("data: train 3 images (1 without boxes), 4 boxes: cat 2, dog 2; no boxes for bird")
    assert "anchor coverage at 64 px" in line and "check-data" in line


def test_image_files_listed_but_not_on_disk_are_named(tmp_path):
    """A COCO file carries the sizes, so reading it opens no image: a missing file went unsaid until training or
    evaluation met it (VOC's reader looks for each image already)."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    coco = {"images": [{"id": i, "file_name": f"{n}.jpg", "width": 64, "height": 48} for i, n in enumerate("abc")],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [5, 5, 20, 20]},
                            {"id": 2, "image_id": 0, "category_id": 1, "bbox": [5, 5, 0, 20]}],  # zero area
            "categories": [{"id": 1, "name": "cat"}]}  # fmt: skip
    (tmp_path / "val.json").write_text(json.dumps(coco))
    check = check_dataset(tmp_path / "val.json", None, None, LITE0, 64)
    assert check.splits[0].to_dict()["missing_files"] == ["b.jpg", "c.jpg"]
    report = format_report(check)
    assert "  image files not found: 2 of 3 (b.jpg, c.jpg)" in report
    assert "  fixed while reading: 1 zero area box\n" in report  # one box, not "1 zero area boxes"


def test_proposal_beats_the_defaults_on_extreme_aspects_and_its_flags_parse_back():
    rng = np.random.default_rng(0)
    corner = rng.uniform(10, 200, (300, 2))
    sizes = rng.uniform(20, 30, (300, 1)) * np.array([[5.0, 1.0]])  # every box 5 times as wide as it is high
    boxes = np.concatenate([corner, corner + sizes], 1).astype(np.float32)
    assert cluster_aspect_ratios(sizes[:, 0] / sizes[:, 1]) == pytest.approx([5.0] * 3)
    proposal = propose_anchors(boxes, LITE0, 320)
    assert proposal.recommended and proposal.coverage >= proposal.default_coverage + RECOMMEND_MARGIN
    assert proposal.coverage > 0.9 > 0.5 > proposal.default_coverage
    assert proposal.aspect_ratios == [5.0, 5.0, 5.0]
    args = build_parser().parse_args(["train", "--data", "x", *proposal.flags.split()])
    overrides = anchor_overrides(args.aspect_ratios, args.anchor_scale)
    assert overrides == {"aspect_ratios": aspect_pairs(proposal.aspect_ratios), "anchor_scale": proposal.anchor_scale}
    again = best_anchor_iou(boxes, LITE0.replace(**overrides), 320)  # the flags reproduce the measured coverage
    assert coverage(again) == pytest.approx(proposal.coverage)


def test_check_data_command_writes_json_and_plots(tiny_voc, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["check-data", "--data", str(tiny_voc), "--splits", "train", "missing", "--img-size", "64",
               "--json", str(out), "--plots", str(tmp_path / "plots")])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "== train:" in printed and "split 'missing' not checked" in printed and "anchor proposal" in printed
    report = json.loads(out.read_text())
    assert report["image_size"] == 64 and report["match_iou"] == MATCH_IOU and list(report["splits"]) == ["train"]
    assert report["anchors"]["aspect_ratios"] == pytest.approx([1.0, 2.0, 0.5]) and not report["anchors"]["custom"]
    assert report["proposal"]["flags"].startswith("--aspect-ratios ")
    with Image.open(tmp_path / "plots" / "train_boxes.png") as img:
        assert img.format == "PNG" and img.width > 100


def test_a_split_named_twice_is_checked_once(tiny_voc, capsys):
    """`--splits train train` printed the train report twice."""
    assert main(["check-data", "--data", str(tiny_voc), "--splits", "train", "train", "--img-size", "64"]) == 0
    assert capsys.readouterr().out.count("== train:") == 1


def test_check_data_with_candidate_anchors(tiny_voc, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["check-data", "--data", str(tiny_voc), "--splits", "train", "--img-size", "64", "--aspect-ratios",
               "1", "3", "--anchor-scale", "2", "--json", str(out)])  # fmt: skip
    assert rc == 0 and "yours (flags)" in capsys.readouterr().out
    anchors = json.loads(out.read_text())["anchors"]
    assert anchors["custom"] and anchors["anchor_scale"] == 2.0 and anchors["aspect_ratios"] == pytest.approx([1, 3])


def test_check_data_counts_coverage_at_the_training_runs_matching_iou(tiny_voc, tmp_path, capsys):
    """``--match-iou`` (the IoU the training run will match at) sets what covered means: the shares, the boxes listed,
    the proposal's search and the report."""
    strict = 0.9
    data = read_dataset(tiny_voc, "voc", "train")
    official, stricter = (check_split(data, "train", LITE0, 64, iou) for iou in (MATCH_IOU, strict))
    assert stricter.coverage == np.mean(official.best_iou >= strict) < official.coverage  # 0.9 leaves boxes out
    assert len(stricter.uncovered()) == np.count_nonzero(official.best_iou < strict) > len(official.uncovered())
    out = tmp_path / "report.json"
    assert main(["check-data", "--data", str(tiny_voc), "--splits", "train", "--img-size", "64", "--match-iou",
                 str(strict), "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"overlaps it at IoU >= {strict:g} (--match-iou)" in printed and f"IoU>={strict:g}" in printed
    report = json.loads(out.read_text())
    assert report["match_iou"] == strict and report["splits"]["train"]["coverage"] == stricter.coverage
    proposal = report["proposal"]
    boxes = official.boxes.boxes
    overrides = {"aspect_ratios": aspect_pairs(proposal["aspect_ratios"]), "anchor_scale": proposal["anchor_scale"]}
    assert proposal["default"]["coverage"] == stricter.coverage
    assert proposal["coverage"] == coverage(best_anchor_iou(boxes, LITE0.replace(**overrides), 64), strict)
    assert "IoU >= 0.9" in data_summary(data, "train", LITE0, 64, match_iou=strict)
    assert main(["check-data", "--data", str(tiny_voc), "--match-iou", "0"]) == 1
    assert "--match-iou must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--data", "{tmp}/nowhere"], "dataset not found"),
        (["--data", "{voc}", "--splits", "nope"], "no split could be read"),
        (["--data", "{voc}", "--anchor-scale", "0"], "--anchor-scale"),
        (["--data", "{voc}", "--aspect-ratios", "nan"], "--aspect-ratios"),
    ],
)
def test_check_data_errors_are_one_line(tiny_voc, tmp_path, capsys, argv, expected):
    argv = [a.format(tmp=tmp_path, voc=tiny_voc) for a in argv]
    assert main(["check-data", *argv]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and err.startswith("efficientdet check-data: ")


# --------------------------------------------------------------------------------------------- training


def test_train_flags_reach_the_checkpoint_and_batch0_is_drawn(tiny_voc, tmp_path, caplog):
    out = tmp_path / "run"
    caplog.set_level("INFO", logger="efficientdet")
    rc = main(["train", "--data", str(tiny_voc), "--format", "voc", "--val-split", "none", "--epochs", "1",
               "--batch-size", "2", "--img-size", "64", "--output", str(out), "--workers", "0", "--max-steps", "1",
               "--aspect-ratios", "1.0", "3.0", "0.33", "--anchor-scale", "2.5", "--match-iou", "0.6"])  # fmt: skip
    assert rc == 0
    assert "data: train 3 images (1 without boxes), 4 boxes" in caplog.text
    assert "have an anchor at IoU >= 0.6" in caplog.text  # the data line counts at the run's matching IoU
    expected = aspect_pairs([1.0, 3.0, 0.33])
    model = load_checkpoint(out / "best.pt")
    assert model.config.aspect_ratios == expected and model.config.anchor_scale == 2.5
    with Image.open(out / "train_batch0.jpg") as img:
        img.load()
        assert img.format == "JPEG" and img.size == (2 * 64 + 4, 64)  # batch of 2 side by side
    # fine-tuning keeps the checkpoint's anchors, and the flags replace them
    kept = build_model(TrainConfig(checkpoint=str(out / "best.pt")), ["bird", "cat", "dog"])
    assert kept.config.aspect_ratios == expected and kept.config.anchor_scale == 2.5
    changed = build_model(
        TrainConfig(checkpoint=str(out / "best.pt"), model_overrides=anchor_overrides([2.0, 1.0, 0.5], 4.0)),
        ["bird", "cat", "dog"],
    )
    assert changed.config.aspect_ratios == aspect_pairs([2.0, 1.0, 0.5]) and changed.config.anchor_scale == 4.0
    assert resume_config(str(out / "last.pt")).model_overrides == {"aspect_ratios": expected, "anchor_scale": 2.5}


@pytest.mark.parametrize("flag, value", [("--anchor-scale", "0"), ("--anchor-scale", "nan"),
                                         ("--aspect-ratios", "-1"), ("--aspect-ratios", "inf")])  # fmt: skip
def test_invalid_anchor_flags_are_refused_by_name(tiny_voc, tmp_path, capsys, flag, value):
    rc = main(["train", "--data", str(tiny_voc), "--output", str(tmp_path / "o"), flag, value])
    assert rc == 1 and flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------- real data


def test_bccd_train_counts_match_the_xml_files(tmp_path, capsys):
    root = require_shared(SHARED / "datasets" / "bccd")
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    expected = Counter(
        obj.findtext("name").strip()
        for i in ids
        for obj in ET.parse(root / "Annotations" / f"{i}.xml").getroot().findall("object")
    )
    out = tmp_path / "bccd.json"
    assert main(["check-data", "--data", str(root), "--splits", "train", "--img-size", "512", "--json", str(out)]) == 0
    split = json.loads(out.read_text())["splits"]["train"]
    assert {k: v["boxes"] for k, v in split["classes"].items()} == dict(expected)
    assert len(expected) == 3 and split["boxes"] == sum(expected.values()) and split["images"] == len(ids) == 205
    assert "== train: 205 images" in capsys.readouterr().out


def test_check_data_checks_at_the_size_train_would_pick(tiny_voc, tmp_path, capsys):
    """`train` logs the anchor coverage at the input size it chose from the data (448 px for small data) and points
    to `check-data` for details: without --img-size check-data measures at that same size, and says so."""
    from efficientdet.engine.tasks.detection_recipe import SMALL_DATA_IMAGES, training_size

    assert training_size(10, 320) == 448 and training_size(10, 512) == 512  # never below the model's own
    assert training_size(SMALL_DATA_IMAGES, 320) == 320  # large data: the model's own size

    out = tmp_path / "report.json"
    assert main(["check-data", "--data", str(tiny_voc), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "input size: 448 px, what `train` picks for 3 training images (small data); --img-size checks another" in (
        printed
    )
    assert json.loads(out.read_text())["image_size"] == 448
    assert main(["check-data", "--data", str(tiny_voc), "--img-size", "320", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["image_size"] == 320 and "input size:" not in capsys.readouterr().out


def test_a_folder_of_images_and_xml_files_is_checked_once(tmp_path, capsys):
    """A labelImg folder is one set: every split name reads all of it, so check-data would report it four times
    (train, val, test, trainval) as if it held four splits; it is checked once, named after the folder."""
    flat = tmp_path / "labelled"
    flat.mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(flat / f"{stem}.jpg")
        (flat / f"{stem}.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>5</xmin><ymin>5</ymin>"
                                          "<xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>")  # fmt: skip
    assert main(["check-data", "--data", str(flat), "--img-size", "64", "--splits", "val"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("== labelled: 2 images") == 1 and "== val" not in printed
    assert "labelled is one set without named splits: --splits ignored" in printed


def test_a_coco_folder_is_checked_on_the_splits_it_has(tmp_path, capsys):
    """COCO's own folder (instances_train2017.json, instances_val2017.json) and CVAT's export (instances_default.json)
    name their splits otherwise than train / val / test / trainval: check-data without --splits read none of them
    ("no split could be read"); it checks the splits the folder has."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    coco = {"images": [{"id": 0, "file_name": "a.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [5, 5, 20, 20]}],
            "categories": [{"id": 1, "name": "cat"}]}  # fmt: skip
    (tmp_path / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    assert main(["check-data", "--data", str(tmp_path), "--img-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "== train2017: 1 image " in printed and "== val2017: 1 image " in printed and "not checked" not in printed


def test_an_image_denser_than_cocos_100_detections_is_named(tmp_path):
    """check-data says when a split's densest image holds more objects than COCO's 100 detections an image, and
    what eval and predict do about it."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(tmp_path / "images" / "shelf.jpg")
    boxes = [[20 * (i % 30), 40 * (i // 30), 15, 30] for i in range(150)]
    coco = {"images": [{"id": 0, "file_name": "shelf.jpg", "width": 640, "height": 480}],
            "annotations": [{"id": i + 1, "image_id": 0, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)],
            "categories": [{"id": 1, "name": "item"}]}  # fmt: skip
    (tmp_path / "val.json").write_text(json.dumps(coco))
    report = format_report(check_dataset(tmp_path / "val.json", None, None, LITE0, 64))
    assert (
        "  densest image: 150 objects, more than COCO's 100 detections: eval scores up to 300 an image (give "
        "predict --max-det 300)" in report
    )


def test_splits_that_fail_alike_are_named_once(tmp_path, capsys):
    """A folder or file that is no dataset fails every split for the same reason; the line said it four times."""
    stray = tmp_path / "notes.xml"
    stray.write_text("<annotation/>")
    assert main(["check-data", "--data", str(stray)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"efficientdet check-data: {stray}: no split could be read (split 'train' not checked: {stray}: "
                   "cannot tell the dataset format of a .xml file (and 'val', 'test', 'trainval' alike))"]  # fmt: skip
    (tmp_path / "photos").mkdir()
    assert main(["check-data", "--data", str(tmp_path / "photos")]) == 1
    err = capsys.readouterr().err
    # val is looked for in one more place (valid/, Roboflow's name), so its reason differs and stays apart
    assert err.count("not checked") == 2 and "annotations/instances_test.json" not in err, err
    assert "annotations/instances_train.json (COCO)" in err and "(and 'test', 'trainval' alike)" in err
