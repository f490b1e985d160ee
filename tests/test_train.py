"""Training: the loss falls on real data, resume is exact, NaN steps are skipped, fine-tuning keeps what it should."""

import csv
import math
import os

import numpy as np
import pytest
import torch
from conftest import SHARED, require_shared

import efficientdet
from efficientdet.engine.tasks import detection as train_mod  # the detection task calls detection_loss
from efficientdet.engine.tasks.detection import DetectionTask, mixing_epochs
from efficientdet.engine.train import (
    ModelEma,
    TrainConfig,
    TrainingError,
    build_model,
    default_lr,
    lr_at,
    param_groups,
    resume_config,
    train,
)
from efficientdet.models.fuse import FoldedCopy
from efficientdet.models.weights import read_file
from efficientdet.ops.labeler import IGNORE, NEGATIVE, AnchorLabeler, AtssLabeler, box_iou
from efficientdet.utils.distributed import DistEnv


def raccoon_subset(tmp_path, n_train=8, n_val=4, name="raccoon"):
    """A VOC folder of symlinks to the first raccoon images (the shared data is never copied)."""
    src = require_shared(SHARED / "datasets" / "raccoon")
    ids = (src / "ImageSets" / "Main" / "train.txt").read_text().split()[: n_train + n_val]
    root = tmp_path / name
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for i in ids:
        os.symlink(src / "JPEGImages" / f"{i}.jpg", root / "JPEGImages" / f"{i}.jpg")
        os.symlink(src / "Annotations" / f"{i}.xml", root / "Annotations" / f"{i}.xml")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def tiny_config(tmp_path, data, **kw):
    base = dict(model="efficientdet-lite0", data=str(data), format="voc", img_size=128, batch_size=8, workers=0,
                output=str(tmp_path / "run"), val_split=None, scale_range=(1.0, 1.0), hflip=0.0, epochs=1,
                freeze_backbone=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def training_task(cfg):
    """The detection task of ``cfg`` with its data read, and its training dataset (no training run)."""
    task = DetectionTask(cfg, DistEnv(), torch.device("cpu"))
    task.read_data()
    return task, task.train_dataset(task.build_model())


def history(out_dir):
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_short_training_run_on_raccoon_lowers_the_loss(tmp_path):
    data = raccoon_subset(tmp_path)
    cfg = tiny_config(tmp_path, data, epochs=12, lr=0.05, warmup_epochs=0.0, pretrained_backbone=True)
    train(cfg)
    losses = [float(r["train_loss"]) for r in history(cfg.output)]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses  # measured: 4.44 -> 1.9


def test_resume_gives_the_same_next_step_loss(tmp_path):
    data = raccoon_subset(tmp_path)
    kw = dict(epochs=3, lr=0.01, scale_range=(0.5, 1.5), hflip=0.5)  # augmentation on: its RNG must resume too
    straight = tiny_config(tmp_path, data, output=str(tmp_path / "straight"), **kw)
    train(straight)
    interrupted = tiny_config(tmp_path, data, output=str(tmp_path / "interrupted"), max_steps=2, **kw)
    train(interrupted)  # stops after 2 of 3 epochs, as if killed after writing last.pt
    assert len(history(interrupted.output)) == 2
    train(resume_config(str(tmp_path / "interrupted" / "last.pt")))
    a, b = history(straight.output), history(interrupted.output)
    assert len(b) == 3
    assert float(b[2]["train_loss"]) == pytest.approx(float(a[2]["train_loss"]), rel=1e-6, abs=1e-7)
    final_a = read_file(tmp_path / "straight" / "last.pt")["state_dict"]
    final_b = read_file(tmp_path / "interrupted" / "last.pt")["state_dict"]
    assert all(torch.allclose(final_a[k].float(), final_b[k].float(), atol=1e-6) for k in final_a)


def test_checkpoints_metrics_and_plot_are_written(tmp_path):
    data = raccoon_subset(tmp_path)
    cfg = tiny_config(tmp_path, data, epochs=2, val_split="val")
    result = train(cfg)
    out = tmp_path / "run"
    assert {"last.pt", "best.pt", "metrics.csv", "metrics.png"} <= set(os.listdir(out))
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["class_names"] == ["raccoon"] and last["train_state"]["epoch"] == 2
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "AP50" in rows[0]
    model = efficientdet.load_checkpoint(result["best"])
    assert model.class_names == ["raccoon"] and model.config.image_size == 128
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_training_from_python_keeps_freed_memory_for_reuse(tmp_path, monkeypatch, caplog):
    """``train()`` called from Python applies the allocator policy the command line applies (utils/allocator.py)
    and says so; here the call is recorded rather than made, leaving this test process's malloc alone."""
    import efficientdet.engine.trainer as trainer_mod

    calls = []
    monkeypatch.setattr(trainer_mod, "retain_freed_memory", lambda: calls.append(1) or True)
    data = raccoon_subset(tmp_path, n_train=2, n_val=0)
    with caplog.at_level("INFO", logger="efficientdet"):
        train(tiny_config(tmp_path, data, batch_size=2, max_steps=1))
    assert calls and "memory: freed blocks stay in the process for reuse" in caplog.text


def test_non_finite_losses_are_skipped_and_counted(tmp_path, monkeypatch):
    data = raccoon_subset(tmp_path)
    real = train_mod.detection_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] % 3 == 0:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(train_mod, "detection_loss", sometimes_nan)
    result = train(tiny_config(tmp_path, data, epochs=2, batch_size=2))  # 8 steps, every 3rd NaN
    assert result["skipped_steps"] == 2 and result["steps"] == 6
    assert all(
        torch.isfinite(v).all() for v in read_file(result["last"])["state_dict"].values() if v.is_floating_point()
    )


def test_training_stops_clearly_when_the_loss_keeps_diverging(tmp_path, monkeypatch):
    data = raccoon_subset(tmp_path)
    real = train_mod.detection_loss

    def always_inf(*args, **kwargs):
        out = real(*args, **kwargs)
        out["loss"] = out["loss"] * float("inf")
        return out

    monkeypatch.setattr(train_mod, "detection_loss", always_inf)
    with pytest.raises(TrainingError, match="NaN/inf for 20 consecutive steps"):
        train(tiny_config(tmp_path, data, epochs=30, batch_size=2))


def test_finetuning_from_other_classes_keeps_backbone_and_bifpn(tmp_path):
    donor = efficientdet.create_model("efficientdet-lite0", num_classes=5)
    path = tmp_path / "donor.pt"
    efficientdet.save_model(donor, path)
    cfg = TrainConfig(model="efficientdet-lite0", checkpoint=str(path))
    model = build_model(cfg, ["raccoon"])
    own, theirs = model.state_dict(), donor.state_dict()
    for key in ("backbone.stem.conv.weight", "fpn.cells.2.nodes.7.conv.pointwise.weight"):
        assert torch.equal(own[key], theirs[key])
    assert model.class_net.predict.pointwise.weight.shape[0] == 9 and model.class_names == ["raccoon"]
    same = build_model(TrainConfig(model="efficientdet-lite0", checkpoint=str(path)), list("abcde"))
    assert torch.equal(
        same.state_dict()["class_net.predict.pointwise.weight"], theirs["class_net.predict.pointwise.weight"]
    )


def test_freeze_backbone_leaves_backbone_weights_and_statistics_alone(tmp_path):
    data = raccoon_subset(tmp_path)
    cfg = tiny_config(tmp_path, data, epochs=2, freeze_backbone=True, pretrained_backbone=True, ema_decay=0.0)
    result = train(cfg)
    trained = read_file(result["last"])["train_state"]["model"]
    fresh = build_model(TrainConfig(model="efficientdet-lite0", pretrained_backbone=True), ["raccoon"]).state_dict()
    for key in ("backbone.blocks.3.0.dw.conv.weight", "backbone.blocks.3.0.dw.bn.running_mean"):
        assert torch.equal(trained[key], fresh[key])
    assert not torch.equal(trained["fpn.cells.0.nodes.0.conv.pointwise.weight"],
                           fresh["fpn.cells.0.nodes.0.conv.pointwise.weight"])  # fmt: skip


def test_trainable_stages_train_the_last_convs_with_bn_frozen(tmp_path):
    data = raccoon_subset(tmp_path)
    cfg = tiny_config(tmp_path, data, epochs=1, freeze_backbone=True, trainable_stages=2, pretrained_backbone=True,
                      ema_decay=0.0)  # fmt: skip
    trained = read_file(train(cfg)["last"])["train_state"]["model"]
    fresh = build_model(TrainConfig(model="efficientdet-lite0", pretrained_backbone=True), ["raccoon"]).state_dict()
    for key in ("backbone.blocks.4.0.dw.conv.weight", "backbone.blocks.6.0.dw.bn.weight",
                "backbone.blocks.6.0.dw.bn.running_mean", "backbone.blocks.5.0.project.bn.running_var"):  # fmt: skip
        assert torch.equal(trained[key], fresh[key]), key  # stages 0-4 and every BN: untouched
    for key in ("backbone.blocks.5.0.dw.conv.weight", "backbone.blocks.6.0.project.conv.weight"):
        assert not torch.equal(trained[key], fresh[key]), key  # the last two stages' convs: trained
    unused = str(tmp_path / "refused")  # run/ holds the run above, which would be refused first
    with pytest.raises(TrainingError, match="--trainable-stages only applies with --freeze-backbone"):
        train(tiny_config(tmp_path, data, trainable_stages=2, output=unused))
    with pytest.raises(TrainingError, match="has 7 stages"):
        train(tiny_config(tmp_path, data, freeze_backbone=True, trainable_stages=8, output=unused))


def test_unfreeze_epochs_train_the_backbone_convs_in_the_closing_epochs_and_resume_exactly(tmp_path):
    data = raccoon_subset(tmp_path)  # 8 images, batch 8: one step per epoch
    kw = dict(epochs=3, freeze_backbone=True, unfreeze_epochs=2, pretrained_backbone=True, ema_decay=0.0, lr=0.01)
    fresh = build_model(TrainConfig(model="efficientdet-lite0", pretrained_backbone=True), ["raccoon"]).state_dict()
    conv, stem, bn = "backbone.blocks.3.0.dw.conv.weight", "backbone.stem.conv.weight", "backbone.blocks.3.0.dw.bn"
    straight = read_file(train(tiny_config(tmp_path, data, output=str(tmp_path / "a"), **kw))["last"])
    first_epoch = read_file(train(tiny_config(tmp_path, data, output=str(tmp_path / "b"), max_steps=1, **kw))["last"])
    assert torch.equal(first_epoch["train_state"]["model"][conv], fresh[conv])  # epoch 1 of 3: still frozen
    assert len(first_epoch["train_state"]["optimizer"]["param_groups"]) == 2
    trained = straight["train_state"]["model"]
    for key in (conv, stem):
        assert not torch.equal(trained[key], fresh[key]), key  # epochs 2-3: every backbone conv trains
    for key in (f"{bn}.weight", f"{bn}.running_mean", f"{bn}.running_var"):
        assert torch.equal(trained[key], fresh[key]), key  # BN stays frozen
    # resumed before the unfreezing (b) and after it (c, whose optimiser already holds the backbone's groups)
    train(tiny_config(tmp_path, data, output=str(tmp_path / "c"), max_steps=2, **kw))
    for name in ("b", "c"):
        resumed = read_file(train(resume_config(str(tmp_path / name / "last.pt"), max_steps=None))["last"])
        resumed = resumed["state_dict"]
        assert all(torch.allclose(straight["state_dict"][k].float(), resumed[k].float(), atol=1e-6) for k in resumed)
    with pytest.raises(TrainingError, match="--unfreeze-epochs only applies with --freeze-backbone"):
        train(tiny_config(tmp_path, data, unfreeze_epochs=1))
    with pytest.raises(TrainingError, match="--unfreeze-epochs is 4, more than the 3 epochs"):
        train(tiny_config(tmp_path, data, freeze_backbone=True, epochs=3, unfreeze_epochs=4))


def test_a_warm_up_longer_than_the_run_is_refused_before_any_output(tmp_path):
    """`--warmup-epochs 100 --epochs 2` trained the whole run in the warm-up: the rate never reached --lr and the
    cosine decay never began, without a word."""
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    with pytest.raises(TrainingError, match=r"--warmup-epochs 100 is longer than the run \(2 epochs\)"):
        train(tiny_config(tmp_path, data, epochs=2, warmup_epochs=100))
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_training_set_scales_the_rate_by_the_images_it_holds(tmp_path, caplog):
    """`--batch-size 8` on 2 training images trained each step on the 2 at the rate scaled for 8 (4x the linear
    rule's), without a word: the default rate follows the batch the steps really hold, and a line says so."""
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    with caplog.at_level("WARNING"):
        out = train(tiny_config(tmp_path, data, epochs=1, warmup_epochs=0.0))
    with open(tmp_path / "run" / "metrics.csv") as f:
        first = next(csv.DictReader(f))
    assert math.isclose(float(first["lr"]), default_lr(2), rel_tol=1e-6)
    assert read_file(out["last"])["train_state"]["global_batch"] == 2
    assert "--batch-size 8 is more than the 2 training images" in caplog.text


def test_a_wholly_frozen_backbone_trains_through_its_folded_copy_until_it_wakes(tmp_path, monkeypatch):
    data = raccoon_subset(tmp_path)  # 8 images, batch 8: one step per epoch
    used = []
    original = FoldedCopy.__call__

    def counting(self, module, *args):
        out = original(self, module, *args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(FoldedCopy, "__call__", counting)
    kw = dict(epochs=3, freeze_backbone=True, ema_decay=0.0, lr=0.01)
    train(tiny_config(tmp_path, data, output=str(tmp_path / "a"), unfreeze_epochs=2, **kw))
    assert used == [True]  # epoch 1's step; then the convs train and the trainer drops the copy (the EMA evaluates)
    used.clear()
    train(tiny_config(tmp_path, data, output=str(tmp_path / "b"), trainable_stages=1, **kw))
    assert used == []  # part of the backbone trains: no copy


def test_backbone_lr_scale_slows_the_trainable_backbone_only_and_resumes_exactly(tmp_path):
    """One SGD step from the same weights on the same batch: the trainable backbone convs move by the scale times
    what they move at scale 1, the BiFPN exactly as much; the groups' scales survive a resume."""
    data = raccoon_subset(tmp_path)  # 8 images, batch 8: one step per epoch
    kw = dict(freeze_backbone=True, trainable_stages=1, pretrained_backbone=True, ema_decay=0.0, lr=0.1,
              warmup_epochs=0.0)  # fmt: skip
    fresh = build_model(TrainConfig(model="efficientdet-lite0", pretrained_backbone=True), ["raccoon"]).state_dict()
    conv, fpn = "backbone.blocks.6.0.project.conv.weight", "fpn.cells.0.nodes.0.conv.pointwise.weight"
    moved = {}
    for scale in (1.0, 0.25):
        run = tiny_config(tmp_path, data, output=str(tmp_path / f"s{scale}"), max_steps=1, backbone_lr_scale=scale,
                          **kw)  # fmt: skip
        saved = read_file(train(run)["last"])["train_state"]
        moved[scale] = {k: saved["model"][k] - fresh[k] for k in (conv, fpn)}
        scales = sorted(g.get("lr_scale", 1.0) for g in saved["optimizer"]["param_groups"])
        assert scales == ([1.0, 1.0] if scale == 1.0 else [scale, scale, 1.0, 1.0])  # two groups when unscaled
    assert moved[1.0][conv].abs().max() > 0
    # (the differences of float32 weights carry their rounding: ~1e-8 at these magnitudes)
    assert torch.allclose(moved[0.25][conv], 0.25 * moved[1.0][conv], rtol=1e-3, atol=1e-7)
    assert torch.allclose(moved[0.25][fpn], moved[1.0][fpn], rtol=1e-4, atol=1e-7)
    # two epochs straight, and one epoch then a resume, end the same
    straight = read_file(train(tiny_config(tmp_path, data, output=str(tmp_path / "a"), epochs=2, backbone_lr_scale=0.25,
                                           **kw))["last"])["state_dict"]  # fmt: skip
    train(tiny_config(tmp_path, data, output=str(tmp_path / "b"), epochs=2, max_steps=1, backbone_lr_scale=0.25, **kw))
    resumed = read_file(train(resume_config(str(tmp_path / "b" / "last.pt"), max_steps=None))["last"])["state_dict"]
    assert all(torch.allclose(straight[k].float(), resumed[k].float(), atol=1e-6) for k in resumed)
    with pytest.raises(ValueError, match="--backbone-lr-scale must be a finite number > 0"):
        tiny_config(tmp_path, data, backbone_lr_scale=0.0)


def test_adamw_takes_its_own_default_rate_and_decoupled_decay_and_resumes_exactly(tmp_path):
    """``--optimizer adamw`` without ``--lr``/``--weight-decay``: rate 1e-3 at batch 8 and decay 0.05 on conv weights
    only. Adam's first step moves every weight with a clear gradient by the rate (m / sqrt(v) = sign of the gradient)
    after shrinking it by rate x decay; SGD's would move it by rate x gradient. Its state survives a resume."""
    data = raccoon_subset(tmp_path)  # 8 images, batch 8: one step per epoch
    kw = dict(optimizer="adamw", freeze_backbone=True, ema_decay=0.0, warmup_epochs=0.0)
    fresh = build_model(TrainConfig(model="efficientdet-lite0"), ["raccoon"]).state_dict()
    cfg = tiny_config(tmp_path, data, output=str(tmp_path / "one"), max_steps=1, **kw)
    saved = read_file(train(cfg)["last"])["train_state"]
    groups = saved["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.05]
    assert float(history(cfg.output)[0]["lr"]) == pytest.approx(1e-3)
    assert all("exp_avg_sq" in state for state in saved["optimizer"]["state"].values())
    weight, bias = "fpn.cells.0.nodes.0.conv.pointwise.weight", "class_net.predict.pointwise.bias"
    undecayed = saved["model"][weight] - fresh[weight] * (1 - 1e-3 * 0.05)  # the step without the decay
    assert undecayed.abs().max() == pytest.approx(1e-3, rel=1e-3)
    assert (saved["model"][bias] - fresh[bias]).abs().max() == pytest.approx(1e-3, rel=1e-3)  # no decay on biases
    # an explicit --weight-decay and --lr win over the optimiser's defaults
    explicit = tiny_config(tmp_path, data, output=str(tmp_path / "wd"), max_steps=1, weight_decay=0.0, lr=2e-3, **kw)
    groups = read_file(train(explicit)["last"])["train_state"]["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0]
    assert float(history(explicit.output)[0]["lr"]) == pytest.approx(2e-3)
    # two epochs straight, and one epoch then a resume, end the same
    straight = read_file(train(tiny_config(tmp_path, data, output=str(tmp_path / "a"), epochs=2, **kw))["last"])
    train(tiny_config(tmp_path, data, output=str(tmp_path / "b"), epochs=2, max_steps=1, **kw))
    resumed = read_file(train(resume_config(str(tmp_path / "b" / "last.pt"), max_steps=None))["last"])["state_dict"]
    assert all(torch.allclose(straight["state_dict"][k].float(), resumed[k].float(), atol=1e-6) for k in resumed)
    with pytest.raises(ValueError, match="--optimizer must be one of sgd, adamw"):
        tiny_config(tmp_path, data, optimizer="adam")


def test_box_loss_weight_sets_the_share_of_the_box_loss(tmp_path):
    data = raccoon_subset(tmp_path)
    for weight in (0.0, 120.0):
        cfg = tiny_config(tmp_path, data, output=str(tmp_path / f"w{weight}"), max_steps=1, box_loss_weight=weight,
                          iou_loss_weight=0.0)  # fmt: skip
        train(cfg)
        row = history(cfg.output)[0]
        loss, cls, box = (float(row[k]) for k in ("train_loss", "train_cls_loss", "train_box_loss"))
        assert box > 0 and loss == pytest.approx(cls + weight * box, rel=1e-5)
        assert "train_iou_loss" not in row  # no IoU loss: no column


def test_iou_loss_weight_adds_a_logged_iou_loss_of_the_chosen_type_to_the_total(tmp_path):
    data = raccoon_subset(tmp_path)
    cfg = tiny_config(tmp_path, data, max_steps=1, box_loss_weight=50.0, iou_loss_weight=3.0)
    train(cfg)
    row = history(cfg.output)[0]
    loss, cls, box, iou = (float(row[k]) for k in ("train_loss", "train_cls_loss", "train_box_loss", "train_iou_loss"))
    assert 0 < iou < 0.5  # (1 - GIoU) / 4 per positive anchor: at most 0.5
    assert loss == pytest.approx(cls + 50.0 * box + 3.0 * iou, rel=1e-5)
    # the same first step with the distance-IoU loss: the same class and box losses, another IoU loss
    cfg = tiny_config(tmp_path, data, output=str(tmp_path / "diou"), max_steps=1, box_loss_weight=50.0,
                      iou_loss_weight=3.0, iou_loss_type="diou")  # fmt: skip
    train(cfg)
    row = history(cfg.output)[0]
    assert (float(row["train_cls_loss"]), float(row["train_box_loss"])) == pytest.approx((cls, box), rel=1e-5)
    assert 0 < float(row["train_iou_loss"]) != pytest.approx(iou, rel=1e-3)
    with pytest.raises(ValueError, match="--iou-loss-type must be one of giou, diou, ciou"):
        tiny_config(tmp_path, data, iou_loss_type="siou")


def test_focal_alpha_and_gamma_reach_the_class_loss(tmp_path, monkeypatch):
    """--focal-alpha / --focal-gamma are the constants the training loss uses; by default the paper's 0.25 and 1.5."""
    data = raccoon_subset(tmp_path)
    real, seen = train_mod.detection_loss, []

    def recording(*args, **kwargs):
        seen.append((kwargs["alpha"], kwargs["gamma"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "detection_loss", recording)
    train(tiny_config(tmp_path, data, max_steps=1))
    default_cls = float(history(tmp_path / "run")[0]["train_cls_loss"])
    train(tiny_config(tmp_path, data, output=str(tmp_path / "other"), max_steps=1, focal_alpha=0.5, focal_gamma=2.0))
    assert seen == [(0.25, 1.5), (0.5, 2.0)]
    assert float(history(tmp_path / "other")[0]["train_cls_loss"]) != pytest.approx(default_cls, rel=1e-3)
    with pytest.raises(ValueError, match="--focal-alpha must be a finite number > 0 and < 1"):
        tiny_config(tmp_path, data, focal_alpha=1.0)
    with pytest.raises(ValueError, match="which --quality-focal replaces"):  # it would ignore them
        tiny_config(tmp_path, data, focal_gamma=2.0, quality_focal=True)
    assert tiny_config(tmp_path, data, quality_focal=True).quality_focal  # with the paper's values: no conflict


def test_match_iou_sets_which_anchors_train_as_positives(tmp_path):
    """A stricter matching IoU leaves fewer positives on the same raccoon image; every box keeps its best anchor."""
    data = raccoon_subset(tmp_path)
    positives = {}
    for match_iou in (0.5, 0.6, 1.0):
        task, dataset = training_task(tiny_config(tmp_path, data, match_iou=match_iou))
        sample = dataset[0].data
        assert task.labeler.match_iou == match_iou
        positives[match_iou] = task.labeler.label_image(sample.boxes, sample.labels)[2]
    assert positives[0.5] > positives[0.6] > positives[1.0] == len(sample.boxes) >= 1, positives
    assert TrainConfig(data="x").match_iou == 0.5  # the official matcher's threshold by default
    with pytest.raises(ValueError, match="--match-iou must be a finite number > 0 and <= 1"):
        tiny_config(tmp_path, data, match_iou=0.0)


def test_unmatched_iou_ignores_the_anchors_in_the_band_on_a_raccoon_image(tmp_path):
    """--unmatched-iou 0.4 (RetinaNet's band) turns background anchors at IoU 0.4-0.5 into ignored ones; the
    positives stay; by default there is no band; above --match-iou it is refused."""
    data = raccoon_subset(tmp_path)
    task, dataset = training_task(tiny_config(tmp_path, data))
    sample = dataset[0].data
    plain, _, positives = task.labeler.label_image(sample.boxes, sample.labels)
    assert TrainConfig(data="x").unmatched_iou is None and not (plain == IGNORE).any()
    band_task, _ = training_task(tiny_config(tmp_path, data, unmatched_iou=0.4))
    banded, _, band_positives = band_task.labeler.label_image(sample.boxes, sample.labels)
    assert band_positives == positives and torch.equal(banded >= 0, plain >= 0)
    ignored = banded == IGNORE
    best = box_iou(task.labeler.anchors_xyxy, sample.boxes).amax(1)
    assert ignored.any() and torch.equal(ignored, (plain == NEGATIVE) & (best >= 0.4))
    with pytest.raises(ValueError, match="must not exceed --match-iou"):
        tiny_config(tmp_path, data, unmatched_iou=0.6)


def test_assigner_atss_labels_the_training_images_by_atss(tmp_path):
    """--assigner atss swaps the fixed-IoU matcher for ATSS on the run's anchors; --match-iou / --unmatched-iou
    beside it are refused."""
    data = raccoon_subset(tmp_path)
    assert TrainConfig(data="x").assigner == "iou"  # the official matcher by default
    task, dataset = training_task(tiny_config(tmp_path, data, assigner="atss"))
    assert isinstance(task.labeler, AtssLabeler)
    sample = dataset[0].data
    cls, _, positives = task.labeler.label_image(sample.boxes, sample.labels)
    expected = AtssLabeler(task.labeler.anchors_yxyx, task.labeler.level_counts, task.model_cfg.num_anchors)
    assert torch.equal(cls, expected.label_image(sample.boxes, sample.labels)[0]) and positives >= len(sample.boxes)
    iou_task, _ = training_task(tiny_config(tmp_path, data))
    assert type(iou_task.labeler) is AnchorLabeler
    assert not torch.equal(cls, iou_task.labeler.label_image(sample.boxes, sample.labels)[0])
    with pytest.raises(ValueError, match="which --assigner atss replaces"):  # it would ignore the values
        tiny_config(tmp_path, data, assigner="atss", match_iou=0.6)
    with pytest.raises(ValueError, match="which --assigner atss replaces"):
        tiny_config(tmp_path, data, assigner="atss", unmatched_iou=0.4)
    with pytest.raises(ValueError, match="--assigner must be one of"):
        tiny_config(tmp_path, data, assigner="ota")


def test_reduced_decoding_is_on_by_default_and_can_be_turned_off(tmp_path):
    """The raccoon photos (~650 px) trained at the tiny config's size are decoded at a reduced scale by default,
    boxes and all; --no-reduced-decoding decodes them in full."""
    data = raccoon_subset(tmp_path)
    _, reduced = training_task(tiny_config(tmp_path, data))
    _, full = training_task(tiny_config(tmp_path, data, reduced_decoding=False))
    record, frame = reduced.records[0], reduced[0].frame  # 650x417, decoded at 1/4: 163x105
    assert (frame.image_width, frame.image_height) == (163, 105) and full[0].frame.image_width == record.width
    # The same object on the same input pixels (the jitter draws are seeded per image), but for the last reduced
    # column and row, which cover only 650 / 4 - 162 and 417 / 4 - 104 of a block: they count as whole pixels when
    # the decoded picture is resized, so its content (and its boxes) come out smaller by 162.5 / 163, 104.25 / 105
    content = [record.width * frame.scale_x / frame.image_width, record.height * frame.scale_y / frame.image_height]
    np.testing.assert_allclose(reduced[0].data.boxes, full[0].data.boxes * torch.tensor(content * 2), atol=1e-3)


def test_learning_rate_schedule():
    peak, total, warm = 0.02, 100, 10
    assert lr_at(0, total, warm, peak) == pytest.approx(0.1 * peak)
    assert lr_at(warm, total, warm, peak) == pytest.approx(peak)
    assert lr_at(55, total, warm, peak) == pytest.approx(peak / 2)
    assert lr_at(total, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, total, warm, peak) for s in range(total)]
    assert values[:warm] == sorted(values[:warm]) and values[warm:] == sorted(values[warm:], reverse=True)
    assert TrainConfig().lr is None  # None means DEFAULT_LR_PER_64 per 64 images, scaled by the batch


def test_weight_decay_only_on_conv_and_linear_weights():
    model = efficientdet.create_model("efficientdet-d0", num_classes=2)
    decay, no_decay = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 for p in decay["params"])
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.fpn.cells[0].nodes[0].edge_weights) in ids
    assert id(model.backbone.stem.bn.weight) in ids and id(model.class_net.predict.pointwise.bias) in ids


def test_ema_decay_warms_up():
    lin = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    ema = ModelEma(lin, decay=0.9998)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)  # decay min(0.9998, 2/11)
    assert ema.module.weight.item() == pytest.approx(1 - 2 / 11)


def test_mosaic_tiles_other_images_until_its_closing_epochs(tmp_path):
    data = raccoon_subset(tmp_path, n_train=6)
    _, dataset = training_task(tiny_config(tmp_path, data, max_steps=1, mosaic=1.0, epochs=20))
    assert (dataset.mosaic, dataset.mixing_epochs) == (1.0, 18)  # the last 10% of 20 epochs: whole images
    one_box_each = [len(r.boxes) for r in dataset.records] == [1] * 6  # each of these raccoon images has one box
    assert one_box_each
    tiled = [len(dataset[i].data.boxes) for i in range(6)]
    assert max(tiled) >= 2  # raccoons of other images came in (measured: 3 or 4 of the 4 at this size)
    dataset.set_epoch(18)
    assert [len(dataset[i].data.boxes) for i in range(6)] == [1] * 6  # closed: one image, one raccoon
    _, plain_set = training_task(tiny_config(tmp_path, data, max_steps=1, epochs=20))
    plain_set.set_epoch(18)
    assert torch.equal(plain_set[0].data.image, dataset[0].data.image)  # the other draws do not move
    assert (mixing_epochs(60), mixing_epochs(5), mixing_epochs(1)) == (54, 4, 1)
    with pytest.raises(ValueError, match="--mosaic must be a finite number >= 0 and <= 1"):
        tiny_config(tmp_path, data, mosaic=1.5)


def test_mixup_blends_in_another_image_until_the_closing_epochs_and_erasing_reaches_the_dataset(tmp_path):
    data = raccoon_subset(tmp_path, n_train=6)

    def dataset_of(**kw):
        return training_task(tiny_config(tmp_path, data, max_steps=1, epochs=20, **kw))[1]

    mixed, plain = dataset_of(mixup=1.0), dataset_of()
    assert [len(r.boxes) for r in mixed.records] == [1] * 6  # each of these raccoon images has one box
    for i in range(6):
        sample, alone = mixed[i].data, plain[i].data
        assert len(sample.boxes) == 2 and torch.equal(sample.boxes[0], alone.boxes[0])  # its own box comes first
        assert not torch.equal(sample.boxes[1], alone.boxes[0])  # the other is another image's raccoon
        assert not torch.allclose(sample.image, alone.image)
    mixed.set_epoch(18)
    plain.set_epoch(18)
    assert all(torch.equal(mixed[i].data.image, plain[i].data.image) for i in range(6))  # closed: one image each
    erased = dataset_of(erase=1.0)
    assert erased.erase == 1.0 and torch.equal(erased[0].data.boxes, plain[0].data.boxes)
    assert not torch.equal(erased[0].data.image, plain[0].data.image)
    for option in ("mixup", "erase"):
        with pytest.raises(ValueError, match=f"--{option} must be a finite number >= 0 and <= 1"):
            tiny_config(tmp_path, data, **{option: -0.1})


def test_color_jitter_reaches_the_training_data(tmp_path):
    data = raccoon_subset(tmp_path)
    _, dataset = training_task(tiny_config(tmp_path, data, max_steps=1, color_jitter=0.3, hflip=0.0))
    assert dataset.color_strength == 0.3
    jittered = dataset[0].data.image
    dataset.color_strength = 0.0
    assert dataset[0].data.image.shape == jittered.shape and not torch.equal(dataset[0].data.image, jittered)
    with pytest.raises(ValueError, match="--color-jitter must be a finite number >= 0 and < 1"):
        tiny_config(tmp_path, data, color_jitter=1.0)
