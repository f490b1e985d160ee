"""The segmentation variant (paper, section 5.2): model shapes and sizes, mask reading and its errors, metrics,
training, CLI.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, SHARED, require_shared
from PIL import Image

import efficientdet
from efficientdet.cli import main
from efficientdet.data.readers import DatasetError
from efficientdet.data.segmentation import (
    CAMVID_CLASSES,
    IGNORE,
    check_masks,
    load_mask,
    mask_statistics,
    pair_by_stem,
    read_segmentation_split,
    read_voc_segmentation,
    resize_nearest,
    to_targets,
    train_transform,
)
from efficientdet.engine.train_segmentation import resolve_class_weights, segmentation_loss
from efficientdet.evaluation.segmentation_metrics import json_safe, metrics_from_confusion
from efficientdet.inference.segmentation import class_palette
from efficientdet.models.bifpn import bifpn_graph, panet_graph, prune_graph
from efficientdet.segmentation import (
    ConfusionMatrix,
    EfficientDetSegmentation,
    Segmenter,
    get_segmentation_config,
    list_segmentation_models,
    predict_segmentation,
    segmentation_stats,
)

CAMVID = SHARED / "datasets" / "camvid"


# ----------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    "name,size", [("efficientdet-seg-lite0", (64, 64)), ("efficientdet-seg-lite0", (97, 130)),
                  ("efficientdet-seg-d0", (75, 64))],
)  # fmt: skip
def test_output_is_full_resolution_logits_for_any_size(name, size):
    model = efficientdet.create_model(name, num_classes=5).eval()
    assert isinstance(model, EfficientDetSegmentation)
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient():
    """The last BiFPN cell is pruned to what P2 needs: no dead nodes (DDP would reject them, FLOPs wasted)."""
    model = efficientdet.create_model("efficientdet-seg-lite0", num_classes=3).train()
    model(torch.randn(2, 3, 64, 96)).logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_table_follows_the_paper_d4_and_scales_monotonically():
    d4 = get_segmentation_config("efficientdet-seg-d4")
    assert (d4.backbone, d4.fpn_channels, d4.head_channels, d4.fpn_repeats, d4.head_repeats) == (
        "efficientnet-b4", 128, 256, 3, 3,
    )  # fmt: skip
    assert (d4.min_level, d4.max_level) == (2, 7)
    assert set(list_segmentation_models()) == {f"efficientdet-seg-{n}" for n in
                                               ("d0", "d1", "d2", "d3", "d4", "lite0", "lite1", "lite2")}  # fmt: skip
    for family in (("d0", "d1", "d2", "d3", "d4"), ("lite0", "lite1", "lite2")):
        stats = [segmentation_stats(f"efficientdet-seg-{n}", 256) for n in family]
        params = [s["params"] for s in stats]
        print(family, params, [round(s["flops"] / 1e9, 2) for s in stats])
        assert params == sorted(params) and len(set(params)) == len(params)
    lite0 = segmentation_stats("efficientdet-seg-lite0")["params"]
    assert 2.9e6 < lite0 < 3.3e6  # Lite0 backbone (~2.9M without its ImageNet head) + a small BiFPN and head


def test_prune_graph_keeps_only_what_p2_needs():
    g = bifpn_graph(2, 7)
    pruned = prune_graph(g, [2])
    assert len(pruned.nodes) == 5 and all(len(n.inputs) == 2 for n in pruned.nodes)  # the top-down path
    assert pruned.outputs[0] == 6 + 4  # 6 inputs (P2-P7), P2 out is the 5th and last node
    assert prune_graph(g, list(range(2, 8))) == g
    assert prune_graph(panet_graph(3, 7), [7]) == panet_graph(3, 7)  # P7 out depends on everything


def test_pretrained_backbone_and_checkpoint_round_trip(tmp_path):
    model = efficientdet.create_model("efficientdet-seg-lite0", num_classes=12, pretrained_backbone=True).eval()
    det = efficientdet.create_model("efficientdet-lite0", pretrained_backbone=True)
    assert torch.equal(model.backbone.stem.conv.weight, det.backbone.stem.conv.weight)
    path = tmp_path / "seg.pt"
    efficientdet.save_model(model, path, class_names=[f"c{i}" for i in range(12)])
    loaded = efficientdet.load_checkpoint(path).eval()
    assert isinstance(loaded, EfficientDetSegmentation) and loaded.class_names[3] == "c3"
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(efficientdet.CheckpointError, match="12 classes"):
        efficientdet.create_model("efficientdet-seg-lite0", num_classes=5, checkpoint=path)


# ----------------------------------------------------------------------------------------------------- data


def test_camvid_masks_read_and_pair():
    root = require_shared(CAMVID)
    data = pair_by_stem(root / "train", root / "trainannot")
    assert len(data) == 367
    mask = load_mask(data.pairs[0].mask)
    assert mask.shape == (360, 480) and mask.dtype == np.int64
    assert mask.min() >= 0 and mask.max() <= 11
    subset = type(data)(data.pairs[:3], data.source)
    counts = check_masks(subset, num_classes=11, ignore_index=11)
    assert counts.sum() > 0.9 * 3 * 360 * 480
    with pytest.raises(DatasetError, match=r"0001TP_006690\.png: label value\(s\) 9 outside 0..8"):
        check_masks(subset, num_classes=9, ignore_index=11)


def _write_voc(root, ids, size=(40, 30), bad=None):
    """A tiny VOC segmentation set: palette masks (left half class 1, a 255 border column, rest 0)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    palette = class_palette().ravel().tolist()
    for i in ids:
        w, h = size
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        ids_arr = np.zeros((h, w), np.uint8)
        ids_arr[:, : w // 2] = 1
        ids_arr[:, w // 2] = 255
        mask = Image.frombytes("P", (w, h), ids_arr.tobytes())
        mask.putpalette(palette)
        mask.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")


def test_voc_palette_masks(tmp_path):
    _write_voc(tmp_path, ["a", "b"])
    data = read_voc_segmentation(tmp_path, "train")
    assert [p.stem for p in data.pairs] == ["a", "b"] and data.class_names[0] == "background"
    mask = load_mask(data.pairs[0].mask)
    assert set(np.unique(mask)) == {0, 1, 255}  # palette indices, not colours
    targets = to_targets(mask, 21, 255)
    assert (targets[:, 20] == IGNORE).all() and (targets[:, 0] == 1).all()
    assert check_masks(data, 21, 255).tolist()[:2] == [2 * 30 * 19, 2 * 30 * 20]


def test_voc_errors_name_the_file(tmp_path):
    _write_voc(tmp_path, ["a", "b"])
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\nc\n")
    with pytest.raises(DatasetError, match=r"no image for id\(s\) c"):
        read_voc_segmentation(tmp_path, "val")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "JPEGImages" / "c.jpg")
    with pytest.raises(DatasetError, match=r"SegmentationClass: no mask for id\(s\) c"):
        read_voc_segmentation(tmp_path, "val")
    # a mask of another size than its image
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(tmp_path / "SegmentationClass" / "c.png")
    with pytest.raises(DatasetError, match=r"c\.png: mask is 40x31 .* is 40x30"):
        check_masks(read_voc_segmentation(tmp_path, "val"), 21, 255)
    # a label that is neither a class nor the ignore index
    Image.fromarray(np.full((30, 40), 21, np.uint8)).save(tmp_path / "SegmentationClass" / "c.png")
    with pytest.raises(DatasetError, match=r"c\.png: label value\(s\) 21 outside 0..20"):
        check_masks(read_voc_segmentation(tmp_path, "val"), 21, 255)
    # a colour-coded mask
    Image.fromarray(np.dstack([np.full((30, 40), v, np.uint8) for v in (128, 0, 0)])).save(
        tmp_path / "SegmentationClass" / "c.png"
    )
    with pytest.raises(DatasetError, match="colour-coded"):
        load_mask(tmp_path / "SegmentationClass" / "c.png")


def test_folder_pairs_errors_name_the_unpaired_file(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    masks.mkdir()
    for stem in ("x", "y"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / f"{stem}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / f"{stem}.png")
    assert len(read_segmentation_split(images, masks)) == 2
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "orphan.png")
    with pytest.raises(DatasetError, match=r"no image for mask\(s\) orphan\.png"):
        pair_by_stem(images, masks)
    os.remove(masks / "orphan.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "lonely.jpg")
    with pytest.raises(DatasetError, match=r"no mask for image\(s\) lonely\.jpg"):
        pair_by_stem(images, masks)
    # one folder of the pair alone: the folder given is named ("give both ..." named neither)
    with pytest.raises(DatasetError, match=f"^{re.escape(str(images))}: an image folder without its mask folder"):
        read_segmentation_split(images, None)
    with pytest.raises(DatasetError, match=f"^{re.escape(str(masks))}: a mask folder without its image folder"):
        read_segmentation_split(None, masks)


def test_jpeg_masks_are_named_as_the_reason_no_mask_was_found(tmp_path):
    """Masks saved as JPEG were "no mask for image(s) a.jpg" beside a folder full of a.jpg masks; the error says
    they are JPEG and why a mask cannot be: its compression changes the ids along every edge."""
    images, masks = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "a.jpg")
    with pytest.raises(DatasetError, match=r"no mask for image\(s\) a\.jpg of .*img \(ann holds JPEG files of those "
                       r"names: masks must be lossless, PNG, BMP or TIFF"):  # fmt: skip
        pair_by_stem(images, masks)


def test_joint_augmentation_keeps_image_and_mask_aligned():
    """Colour encodes the class, so after flip + scale + crop every pixel's colour must still match its label."""
    h, w = 60, 90
    labels = np.zeros((h, w), np.int64)
    labels[:, 30:] = 1
    labels[40:, :] = 2
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    image = colours[labels]
    rng = np.random.default_rng(0)
    seen_pad = False
    for _ in range(12):
        x, t = train_transform(image, labels, 96, 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), rng, (0.3, 2.0), 0.5)
        assert x.shape == (3, 64, 64) and t.shape == (64, 64)
        valid = t != IGNORE
        seen_pad |= bool((~valid).any())
        assert (x[:, ~valid] == 0).all()  # padding: zero image, ignored labels
        argmax = x.argmax(0)  # the dominant colour channel = the class (bilinear blurs edges only)
        pure = (x.max(0).values > 250) & valid
        assert (argmax[pure] == t[pure]).float().mean() > 0.99
    assert seen_pad
    small = resize_nearest(labels, (7, 11))
    assert set(np.unique(small)) <= {0, 1, 2}


# ----------------------------------------------------------------------------------------------------- metrics


def test_iou_by_hand():
    pred = torch.tensor([[0, 0, 1], [1, 2, 2]])
    target = torch.tensor([[0, 1, 1], [IGNORE, 2, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 1, FN 1 -> 1/2 (its FP pixel is ignored); class 2: TP 1, FP 1
    assert m["per_class_iou"][:3] == pytest.approx([1 / 3, 1 / 2, 1 / 2])
    assert math.isnan(m["per_class_iou"][3])  # absent from both: excluded from the mean
    assert m["mIoU"] == pytest.approx(4 / 9)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    assert json_safe(m)["per_class_iou"][3] is None
    # a class predicted but absent from the ground truth has IoU 0 and does count
    cm2 = ConfusionMatrix(3)
    cm2.update(torch.tensor([0, 0, 2]), torch.tensor([0, 0, 0]))
    m2 = cm2.compute()
    assert m2["per_class_iou"][2] == 0.0 and math.isnan(m2["per_class_iou"][1])
    assert m2["mIoU"] == pytest.approx((2 / 3 + 0) / 2)


def test_metrics_accumulate_and_all_ignored_is_nan():
    rng = torch.Generator().manual_seed(0)
    p = torch.randint(0, 5, (2, 20, 20), generator=rng)
    t = torch.randint(-1, 5, (2, 20, 20), generator=rng)
    one, two = ConfusionMatrix(5), ConfusionMatrix(5)
    one.update(p, t)
    two.update(p[0], t[0])
    two.update(p[1], t[1])
    assert torch.equal(one.counts, two.counts)
    empty = metrics_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(empty["mIoU"]) and math.isnan(empty["pixel_acc"])
    assert json.loads(json.dumps(json_safe(empty)))["mIoU"] is None


def test_median_frequency_weights_by_hand(tmp_path):
    """Two 4x1 masks: [0 0 0 1] and [0 0 2 2]; class 3 never occurs; 9 (the ignore id) is skipped."""
    for sub in ("img", "mask"):
        (tmp_path / sub).mkdir()
    masks = {"a": [[0, 0, 0, 1]], "b": [[0, 0, 2, 2]], "c": [[9, 9, 9, 9]]}
    for stem, rows in masks.items():
        Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(tmp_path / "img" / f"{stem}.png")
        Image.fromarray(np.array(rows, np.uint8)).save(tmp_path / "mask" / f"{stem}.png")
    data = pair_by_stem(tmp_path / "img", tmp_path / "mask")
    counts, present = mask_statistics(data, 4, 9)
    assert counts.tolist() == [5, 1, 2, 0] and present.tolist() == [8, 4, 4, 0]
    # freq: 5/8, 1/4, 2/4 -> median 1/2 -> weights 0.8, 2, 1; the absent class keeps 1
    weights = resolve_class_weights("median-freq", counts, present)
    assert weights.tolist() == pytest.approx([0.8, 2.0, 1.0, 1.0])
    assert resolve_class_weights(None, counts, present) is None
    assert resolve_class_weights("none", counts, present) is None
    assert resolve_class_weights("1, 2,3 4", counts, present).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="need 4 finite weights"):
        resolve_class_weights([1.0, 2.0], counts, present)
    with pytest.raises(ValueError, match="expected 'median-freq'"):
        resolve_class_weights("inverse", counts, present)


def test_median_frequency_weights_on_camvid():
    """On the real CamVid train masks: the median class (pavement) weighs 1, the rare thin classes weigh several
    times more, and the large surfaces a fraction of that (as in SegNet's median frequency balancing)."""
    root = require_shared(CAMVID)
    counts, present = mask_statistics(pair_by_stem(root / "train", root / "trainannot"), 11, 11)
    w = dict(zip(CAMVID_CLASSES, resolve_class_weights("median-freq", counts, present).tolist()))
    assert w["pavement"] == pytest.approx(1.0)  # measured 1.000; the 6th-largest of 11 frequencies
    assert min(w["pole"], w["pedestrian"], w["bicyclist"]) > 4  # measured 4.79, 6.39, 8.82
    assert max(w["road"], w["building"], w["sky"]) < 0.3  # measured 0.15, 0.20, 0.28


def test_weighted_loss_by_hand():
    # two pixels: class 0 with p(0) = 1/2, class 1 with p(1) = 1/4 (logits chosen so), one ignored pixel
    logits = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.2, 0.3, 0.5]]) + 1e-30)
    logits = logits.T.reshape(1, 3, 1, 3)
    targets = torch.tensor([[[0, 1, IGNORE]]])
    plain = segmentation_loss(logits, targets)
    assert float(plain) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-5)
    weighted = segmentation_loss(logits, targets, torch.tensor([1.0, 3.0, 5.0]))
    assert float(weighted) == pytest.approx((math.log(2) + 3 * math.log(4)) / 4, rel=1e-5)
    all_ignored = torch.full_like(targets, IGNORE)
    assert float(segmentation_loss(logits, all_ignored, torch.tensor([1.0, 3.0, 5.0]))) == 0.0


# ----------------------------------------------------------------------------------------------------- training + CLI


def _camvid_subset(tmp_path, n_train=4, n_val=2):
    src = require_shared(CAMVID).resolve()
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in (split, split + "annot"):
            (tmp_path / sub).mkdir()
        for name in sorted(os.listdir(src / split))[:n]:
            stem = os.path.splitext(name)[0]
            os.symlink(src / split / name, tmp_path / split / name)
            os.symlink(src / (split + "annot") / f"{stem}.png", tmp_path / (split + "annot") / f"{stem}.png")
    return tmp_path


def test_data_names_a_folder_of_split_and_annotation_folders(tmp_path):
    """`--data camvid` (train/ + trainannot/, val/ + valannot/: CamVid as SegNet prepared it, the layout the README
    trains on) said "not a VOC segmentation root"; every command wanted the four folders spelt out."""
    root = _camvid_subset(tmp_path, n_train=3, n_val=2)
    by_folders = pair_by_stem(root / "val", root / "valannot")
    by_root = read_segmentation_split(voc_root=root, split="val")
    assert [p.image for p in by_root.pairs] == [p.image for p in by_folders.pairs] and len(by_root) == 2
    assert len(read_segmentation_split(voc_root=root, split="train")) == 3
    with pytest.raises(DatasetError, match=r"nor a folder of test/ and testannot/"):
        read_segmentation_split(voc_root=root, split="test")


def test_a_missing_class_count_is_answered_with_the_ids_the_masks_hold(tmp_path, capsys):
    """`train --task segmentation --data camvid` stopped with "give --num-classes" and no clue what to give; the
    error now says which ids the training masks hold and the two readings of a last, unlabelled id."""
    root = _camvid_subset(tmp_path, n_train=3, n_val=1)
    args = ["train", "--task", "segmentation", "--data", str(root), "--ignore-index", "none",
            "--output", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "give --num-classes (the number of class ids in the masks, the ignore index aside): the training masks hold "
        "ids 0, 1, 2, 3, 4, 5, 6, 8, 9, 11; --num-classes 12 trains each as a class, or, if 11 marks unlabelled "
        "pixels (as CamVid's void does), --num-classes 11 --ignore-index 11"  # three frames show no 7 nor 10
    ), err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run through the CLI: 4 CamVid frames, 64 px crops, 8 epochs of one step, evaluated every epoch."""
    root = _camvid_subset(tmp_path_factory.mktemp("camvid"))
    out = root / "run"
    args = ["train", "--task", "segmentation", "--model", "efficientdet-seg-lite0", "--train-images",
            str(root / "train"), "--train-masks", str(root / "trainannot"), "--val-images", str(root / "val"),
            "--val-masks", str(root / "valannot"), "--num-classes", "11", "--ignore-index", "11", "--epochs", "8",
            "--batch-size", "4", "--img-size", "80", "--crop-size", "64", "--lr", "0.1", "--warmup-epochs", "0",
            "--scale-range", "1", "1", "--workers", "0", "--pretrained-backbone", "--output", str(out),
            "--tensorboard", "--eval-interval", "1",
            "--class-weights", "none"]  # fmt: skip  # plain CE: the loss drop below was measured so
    assert main(args) == 0
    return root, out


def test_training_lowers_the_loss_and_writes_checkpoints(trained_run):
    _, out = trained_run
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < 0.85 * sum(losses[:2]) / 2, losses  # measured: 2.53 -> 1.93
    assert 0.0 <= float(rows[-1]["mIoU"]) <= 1.0 and "iou_10" in rows[0]
    for name in ("last.pt", "best.pt", "metrics.png"):
        assert (out / name).is_file()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # atomic writes leave no temp files
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["task"] == "segmentation" and saved["ignore_index"] == 11 and saved["train_state"]["epoch"] == 8


def test_tensorboard_scalars_per_step_and_per_epoch(trained_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = trained_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert {"train/loss", "train/lr", "epoch/train_loss", "epoch/mIoU", "epoch/iou_10"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))  # one step per epoch
    assert [e.step for e in events.Scalars("epoch/mIoU")] == list(range(1, 9))


def test_eval_cli_writes_the_json_schema(trained_run, tmp_path, capsys):
    root, out = trained_run
    path = tmp_path / "m.json"
    args = ["eval", "--task", "segmentation", "--checkpoint", str(out / "best.pt"), "--images", str(root / "val"),
            "--masks", str(root / "valannot"), "--json", str(path), "--workers", "0"]  # fmt: skip
    rc = main(args)
    assert rc == 0
    metrics = json.loads(path.read_text())
    assert set(metrics) == {"mIoU", "pixel_acc", "per_class_iou"}
    assert len(metrics["per_class_iou"]) == 11
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics["per_class_iou"])
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["pixel_acc"] <= 1.0
    assert "mIoU" in capsys.readouterr().out
    # the score best.pt was chosen by is the one `eval` gives it: training's evaluation ran under the run's bf16
    # autocast where the CPU has bf16 (4.15% against eval's 4.09% on one run), detection's and eval's in float32
    stored = torch.load(out / "best.pt", map_location="cpu", weights_only=True)["metrics"]
    assert stored["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-9)
    assert stored["pixel_acc"] == pytest.approx(metrics["pixel_acc"], abs=1e-9)


def test_resume_continues_the_run(trained_run, tmp_path):
    from efficientdet.engine.train_segmentation import resume_segmentation_config, train_segmentation

    _, out = trained_run
    cfg = resume_segmentation_config(str(out / "last.pt"), epochs=9, output=str(tmp_path / "resumed"))
    result = train_segmentation(cfg)
    assert result["epochs_done"] == 9 and result["steps"] == 9


def test_freeze_backbone_leaves_backbone_weights_and_statistics_alone(tmp_path):
    from efficientdet.engine.train_segmentation import SegTrainConfig, train_segmentation
    from efficientdet.models.weights import read_file

    root = _camvid_subset(tmp_path)
    cfg = SegTrainConfig(
        num_classes=11, ignore_index=11, train_images=str(root / "train"), train_masks=str(root / "trainannot"),
        epochs=1, batch_size=4, img_size=80, crop_size=64, scale_range=(1.0, 1.0), warmup_epochs=0, workers=0,
        freeze_backbone=True, pretrained_backbone=True, output=str(tmp_path / "run"),
    )  # fmt: skip
    trained = read_file(train_segmentation(cfg)["last"])["train_state"]["model"]
    fresh = efficientdet.create_model("efficientdet-seg-lite0", num_classes=11, pretrained_backbone=True).state_dict()
    for key in ("backbone.blocks.3.0.dw.conv.weight", "backbone.blocks.3.0.dw.bn.running_mean"):
        assert torch.equal(trained[key], fresh[key]), key
    assert not torch.equal(trained["head.predict.pointwise.weight"], fresh["head.predict.pointwise.weight"])


def test_predict_writes_overlays_and_id_masks(trained_run, tmp_path):
    root, out = trained_run
    results = predict_segmentation(str(out / "best.pt"), root / "val", tmp_path / "pred", img_size=64)
    assert len(results) == 2
    for r in results:
        overlay = Image.open(r["overlay"])
        assert overlay.mode == "RGB" and overlay.size == (480, 360)
        ids = np.asarray(Image.open(r["mask"]))
        assert ids.shape == (360, 480) and ids.max() < 11
        assert sorted(np.unique(ids).tolist()) == r["class_ids"]


def test_predict_keeps_inputs_with_the_same_stem_apart(trained_run, tmp_path):
    root, out = trained_run
    frame = sorted((root / "val").iterdir())[0]
    other = tmp_path / "elsewhere"
    other.mkdir()
    flipped = np.ascontiguousarray(np.asarray(Image.open(frame).convert("RGB"))[:, ::-1])
    Image.fromarray(flipped).save(other / f"{frame.stem}.jpg")  # same stem, another folder and picture
    results = predict_segmentation(str(out / "best.pt"), [frame, other], tmp_path / "pred", img_size=64)
    overlays = [r["overlay"] for r in results]
    assert [Path(o).name for o in overlays] == [f"{frame.stem}_overlay.png", f"{frame.stem}_2_overlay.png"]
    first, second = (np.asarray(Image.open(o)) for o in overlays)
    assert not np.array_equal(first, second)  # both kept: the second did not overwrite the first


def test_predict_cli_segmentation_task(trained_run, tmp_path, capsys):
    """Folders, files and image URLs (a loopback server); a broken file is named once and skipped."""
    import shutil

    from conftest import serve_folder

    root, out = trained_run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(sorted((root / "val").iterdir())[0], site / "from-url.png")
    with serve_folder(site) as url:
        args = ["predict", "--task", "segmentation", "--checkpoint", str(out / "best.pt"), str(root / "val"),
                str(bad), f"{url}/from-url.png", "--output", str(tmp_path / "pred"), "--img-size", "64"]  # fmt: skip
        assert main(args) == 1  # the broken file is named and skipped; the rest is done
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{bad}: cannot read image (")  # named once, not "X: X: ..."
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    stems = sorted([p.stem for p in (root / "val").iterdir()] + ["from-url"])
    assert written == sorted([f"{s}_mask.png" for s in stems] + [f"{s}_overlay.png" for s in stems])


def test_predict_segmentation_takes_pictures_through_source_and_lists(trained_run, tmp_path, capsys):
    """`--source photos/` (ultralytics' habit) was refused as a detection option, and a .txt list of images was
    read as an image itself; as for detection, they are pictures. A camera or video --source stays refused."""
    root, out = trained_run
    listing = tmp_path / "list.txt"
    first = sorted((root / "val").iterdir())[0]
    listing.write_text(f"{first}\n")
    for given, folder in ((["--source", str(root / "val")], "a"), ([str(listing)], "b")):
        args = ["predict", "--task", "segmentation", "--checkpoint", str(out / "best.pt"), *given,
                "--output", str(tmp_path / folder), "--img-size", "64"]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "a").glob("*_mask.png"))) == len(list((root / "val").iterdir()))
    assert [p.name for p in (tmp_path / "b").glob("*_mask.png")] == [f"{first.stem}_mask.png"]
    args = ["predict", "--task", "segmentation", "--checkpoint", str(out / "best.pt"), "--source", "0",
            "--output", str(tmp_path / "c")]  # fmt: skip
    assert main(args) == 2 and "--source is for detection models" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [["--save-txt"], ["--tile", "256"], ["--classes", "1"], ["--score-threshold", "0.5"], ["--max-det", "5"],
     ["--no-draw"], ["--nms", "soft", "--save-crop"]],
)  # fmt: skip
def test_predict_segmentation_refuses_the_detection_options(trained_run, tmp_path, capsys, extra):
    """They were taken and dropped without a word: a --tile or --classes run segmented as if neither was given."""
    root, out = trained_run
    image = str(sorted((root / "val").iterdir())[0])
    args = ["predict", "--task", "segmentation", "--checkpoint", str(out / "best.pt"), image,
            "--output", str(tmp_path / "pred"), *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"efficientdet predict: {extra[0]} is for detection models; --task segmentation takes sources, "
                   "--checkpoint/--pretrained, --model, --output, --device, --img-size and --recursive"]  # fmt: skip
    assert not (tmp_path / "pred").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--task", "segmentation", "--model", "efficientdet-lite0", "--train-images", "x"]) == 2
    assert "efficientdet-seg-*" in capsys.readouterr().err
    assert main(["train", "--task", "segmentation"]) == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2  # detection still needs --data
    assert "--data" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- Segmenter


def _direct_masks(model, images, img_size, out_sizes=None):
    """The masks prediction and evaluation computed before the Segmenter, written out here: the network on the
    image resized (longer side ``img_size``, no padding), logits upsampled bilinearly to the image (or to
    ``out_sizes``: a file's full size where the image is its reduced decoding), arg-max."""
    from efficientdet.data.segmentation import eval_resize
    from efficientdet.data.transforms import normalise

    masks = []
    with torch.no_grad():
        for i, image in enumerate(images):
            x = normalise(eval_resize(image, img_size), model.config.mean, model.config.std)[None]
            logits = model.eval()(x)
            size = image.shape[:2] if out_sizes is None else out_sizes[i]
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            masks.append(logits[0].argmax(0))
    return masks


def _file_masks(model, paths, img_size):
    """:func:`_direct_masks` of image files as a file reaches the network: decoded to cover ``img_size`` (the
    shared CamVid's 480x360 JPEGs at 1/4 for 64 px), the masks at the files' full size."""
    from efficientdet.data.images import decode_image

    decoded = [decode_image(p, (img_size, img_size)) for p in paths]
    assert all(d.reduction == 4 for d in decoded)
    return _direct_masks(model, [d.pixels for d in decoded], img_size, [d.full_size[::-1] for d in decoded])


def test_segmenter_masks_are_the_models_at_every_entry_point(trained_run, tmp_path):
    """``Segmenter`` (paths, arrays, a checkpoint), ``segment_image`` and ``predict_segmentation``'s PNGs all give
    the masks of a plain forward + upsampling + arg-max (of the reduced decoding a file reaches the network as)."""
    from efficientdet.data.images import load_image
    from efficientdet.inference.segmentation import segment_image

    root, out = trained_run
    model = efficientdet.load_checkpoint(out / "best.pt")
    paths = sorted((root / "val").iterdir())
    images = [load_image(p) for p in paths]
    expected = _file_masks(model, paths, 64)
    assert all(len(torch.unique(m)) > 1 for m in expected)  # trained: several classes per picture
    results = Segmenter(model, image_size=64)(paths, return_logits=True)
    for result, want, image in zip(results, expected, images, strict=True):
        assert result["mask"].dtype == torch.int64 and tuple(result["mask"].shape) == image.shape[:2]
        assert torch.equal(result["mask"], want)
        assert tuple(result["logits"].shape) == (11, *image.shape[:2])
        assert torch.equal(result["logits"].argmax(0), want)
    from_arrays = _direct_masks(model, images[:2], 64)  # arrays are used as they are
    assert torch.equal(Segmenter.from_checkpoint(out / "best.pt", image_size=64)(images[0])[0]["mask"], from_arrays[0])
    assert np.array_equal(segment_image(model, images[1], 64), from_arrays[1].numpy())
    written = predict_segmentation(model, paths, tmp_path / "pred", img_size=64)
    for r, want in zip(written, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(r["mask"])), want.numpy())


def test_segmentation_evaluation_counts_the_segmenters_masks(trained_run):
    """``evaluate_segmentation`` scores exactly those masks (a batch of one: no padding) against the mask files."""
    from efficientdet.evaluation.segmentation import evaluate_segmentation

    root, out = trained_run
    model = efficientdet.load_checkpoint(out / "best.pt").train()
    data = pair_by_stem(root / "val", root / "valannot")
    metrics = evaluate_segmentation(model, data, 11, 11, img_size=64, batch_size=1)
    assert model.training  # restored
    confusion = ConfusionMatrix(11)
    for pair, mask in zip(data.pairs, _file_masks(model, [p.image for p in data.pairs], 64)):
        confusion.update(mask, torch.from_numpy(to_targets(load_mask(pair.mask), 11, 11)))
    expected = confusion.compute()
    assert metrics["mIoU"] == expected["mIoU"] and metrics["pixel_acc"] == expected["pixel_acc"]
    np.testing.assert_array_equal(np.asarray(metrics["per_class_iou"]), np.asarray(expected["per_class_iou"]))


def test_segmenter_refuses_a_detection_checkpoint(tmp_path):
    from conftest import tiny_detector_checkpoint

    path = tiny_detector_checkpoint(tmp_path / "det.pt", ["a", "b"])
    with pytest.raises(TypeError, match="segmentation model"):
        Segmenter.from_checkpoint(path)


def test_segmenter_takes_a_model_file_path_and_checks_its_size(trained_run, tmp_path):
    """`Segmenter("best.pt")` failed with "'str' object has no attribute 'to'" (Detector took paths already), and
    image_size=-3 failed at the first image."""
    from conftest import tiny_detector_checkpoint

    _, out = trained_run
    image = np.full((60, 80, 3), 120, np.uint8)
    expected = Segmenter.from_checkpoint(out / "best.pt")(image)[0]["mask"]
    for given in (str(out / "best.pt"), out / "best.pt"):
        assert torch.equal(Segmenter(given)(image)[0]["mask"], expected)
    with pytest.raises(TypeError, match="segmentation model"):
        Segmenter(tiny_detector_checkpoint(tmp_path / "det.pt", ["a", "b"]))
    with pytest.raises(TypeError, match="a segmentation model or the path of its file, not int"):
        Segmenter(3)
    for size in (0, -3):
        with pytest.raises(ValueError, match=f"image_size must be >= 1, got {size}"):
            Segmenter(out / "best.pt", image_size=size)


# ----------------------------------------------------------------------------------------------------- ablation


def test_ablation_fast_part_runs():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--skip-train", "--img-size", "64", "--runs", "1",
         "--variants", "fpn", "panet", "bifpn-fast", "bifpn-softmax"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("fpn", "panet", "bifpn-fast", "bifpn-softmax", "softmax / fast"):
        assert name in proc.stdout
    panet_line = next(line for line in proc.stdout.splitlines() if line.startswith("panet "))
    assert "1.00x" in panet_line


def test_validation_on_the_training_images_is_said(tmp_path, caplog):
    """One folder given as --train-images and --val-images trained and chose best.pt on the same frames silently."""
    from efficientdet.engine.tasks.segmentation import SegmentationTask, SegTrainConfig
    from efficientdet.utils.distributed import DistEnv

    root = _camvid_subset(tmp_path, n_train=3, n_val=1)
    train_images, train_masks = str(root / "train"), str(root / "trainannot")
    for val_images, val_masks, said in ((str(root / "val"), str(root / "valannot"), False),
                                        (train_images, train_masks, True)):  # fmt: skip
        cfg = SegTrainConfig(train_images=train_images, train_masks=train_masks, val_images=val_images,
                             val_masks=val_masks, num_classes=12, ignore_index=11)  # fmt: skip
        caplog.clear()
        with caplog.at_level("WARNING", logger="efficientdet"):
            SegmentationTask(cfg, DistEnv(), torch.device("cpu")).read_data()
        line = f"--val-images {train_images} shares 3 of 3 images with --train-images {train_images}: its score"
        assert (line in caplog.text) == said, caplog.text


@pytest.mark.parametrize(
    ("ids", "ignore", "expected"),
    [
        (
            [0, 1, 2, 255],
            255,
            "ids 0-2 (255, the ignore index, aside); --num-classes 3 trains each as a class, or, if 2",
        ),
        ([0, 5], None, "ids 0, 5; --num-classes 6 trains each as a class, or, if 5 marks"),
        ([3], None, "hold id 3; --num-classes 4 trains each as a class"),
        ([255], 255, "the training masks hold no id but the ignore index 255"),
    ],
)
def test_class_count_hint_reads_the_ids(ids, ignore, expected):
    from efficientdet.engine.tasks.segmentation import _class_count_hint

    assert expected in _class_count_hint(ids, ignore)
