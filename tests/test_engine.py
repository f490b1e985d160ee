"""The one training engine (both tasks get every feature of the loop) and the model registry."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

import efficientdet
from efficientdet.cli import main
from efficientdet.engine import Trainer
from efficientdet.engine.tasks.segmentation import SegmentationTask, SegTrainConfig
from efficientdet.engine.train_segmentation import resume_segmentation_config, train_segmentation
from efficientdet.layers.checkpoint import checkpointing_active
from efficientdet.models.registry import UnknownModelError, family_for, model_names
from efficientdet.models.weights import read_file
from efficientdet.utils.distributed import DistEnv, SyncBatchNorm2d

CPU = torch.device("cpu")


def _pairs(root, n=4, size=48, classes=3):
    """``n`` random images with blocky masks of ``classes`` ids (a dataset in milliseconds, no shared data)."""
    rng = np.random.default_rng(0)
    for sub in ("img", "mask"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        mask = np.kron(rng.integers(0, classes, (size // 8, size // 8)), np.ones((8, 8))).astype(np.uint8)
        Image.fromarray(mask).save(root / "mask" / f"{i}.png")
    return root


def _seg_config(root, **kw) -> SegTrainConfig:
    base = dict(num_classes=3, ignore_index=None, train_images=str(root / "img"), train_masks=str(root / "mask"),
                epochs=2, batch_size=2, img_size=48, crop_size=48, scale_range=(1.0, 1.0), hflip=0.0, workers=0,
                warmup_epochs=0, lr=0.05, output=str(root / "run"), pretrained_backbone=False)  # fmt: skip
    base.update(kw)
    return SegTrainConfig(**base)


def _set_up(cfg, env: DistEnv | None = None) -> Trainer:
    env = env or DistEnv()
    trainer = Trainer(cfg, SegmentationTask(cfg, env, CPU), env, CPU)
    trainer.setup()
    return trainer


# ----------------------------------------------------------------------------------------------- segmentation


def test_segmentation_trainable_stages_and_grad_checkpoint_are_applied(tmp_path):
    cfg = _seg_config(_pairs(tmp_path), freeze_backbone=True, trainable_stages=2, grad_checkpoint=True)
    trainer = _set_up(cfg)
    model = trainer.model
    assert model.grad_checkpoint and model.backbone.grad_checkpoint and model.fpn.grad_checkpoint
    model.train()
    assert checkpointing_active(model.backbone) and checkpointing_active(model.fpn)
    stages = model.backbone.blocks
    assert not any(p.requires_grad for p in stages[0].parameters())
    assert all(p.requires_grad for p in stages[-1][0].dw.conv.parameters())
    assert not stages[-1][0].dw.bn.weight.requires_grad  # BN stays frozen in the trainable stages
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(stages[-1][0].dw.conv.weight) in trained and id(stages[0][0].dw.conv.weight) not in trained


def test_segmentation_trainable_stages_train_only_the_last_convs(tmp_path):
    root = _pairs(tmp_path)
    fresh = efficientdet.create_model("efficientdet-seg-lite0", num_classes=3, image_size=48).state_dict()
    cfg = _seg_config(root, epochs=1, freeze_backbone=True, trainable_stages=1, grad_checkpoint=True, ema_decay=0.0)
    trained = read_file(train_segmentation(cfg)["last"])["train_state"]["model"]
    for key in ("backbone.blocks.5.0.dw.conv.weight", "backbone.blocks.6.0.dw.bn.running_mean"):
        assert torch.equal(trained[key], fresh[key]), key  # frozen stages and every BN: untouched
    key = "backbone.blocks.6.0.dw.conv.weight"
    assert not torch.equal(trained[key], fresh[key])  # the last stage's convs: trained


def test_segmentation_sync_bn_under_a_gloo_group(tmp_path, monkeypatch):
    """With --sync-bn and a process group, every BN of the segmentation model is synchronised and DDP wraps it."""
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        cfg = _seg_config(_pairs(tmp_path), sync_bn=True)
        trainer = _set_up(cfg, DistEnv(0, 0, 2))  # the trainer's view of a 2-process job (one group member here)
        norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, SyncBatchNorm2d) for m in norms)
        assert isinstance(trainer.net, torch.nn.parallel.DistributedDataParallel)
        assert not any(isinstance(m, SyncBatchNorm2d) for m in trainer.ema.module.modules())  # the EMA evaluates
    finally:
        dist.destroy_process_group()


def test_box_loss_weight_with_segmentation_is_an_error(tmp_path, capsys):
    root = _pairs(tmp_path)
    args = ["train", "--task", "segmentation", "--train-images", str(root / "img"), "--train-masks",
            str(root / "mask"), "--num-classes", "3", "--box-loss-weight", "10",
            "--output", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    assert "--box-loss-weight" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_passes_the_loop_options_to_segmentation(tmp_path):
    from efficientdet.cli import build_parser, train_config

    args = build_parser("segmentation").parse_args(
        ["train", "--task", "segmentation", "--train-images", "i", "--train-masks", "m", "--num-classes", "3",
         "--sync-bn", "--grad-checkpoint", "--freeze-backbone", "--trainable-stages", "2", "--no-channels-last"]
    )  # fmt: skip
    cfg = train_config(args)
    assert cfg.sync_bn and cfg.grad_checkpoint and cfg.freeze_backbone and cfg.trainable_stages == 2
    assert not cfg.channels_last


def _history(out):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _to_old_layout(path, best_key, new_fields=()):
    """Rewrite a last.pt as the code before the one engine wrote it (best_ap / best_miou, fewer keys)."""
    saved = torch.load(path, weights_only=True)
    state = saved["train_state"]
    state[best_key] = state.pop("best_metric")
    for key in ("world_size", "global_batch") if best_key == "best_miou" else ():
        del state[key]
    for key in new_fields:
        del state["train_config"][key]
    torch.save(saved, path)


def test_old_segmentation_last_pt_resumes_exactly(tmp_path):
    root = _pairs(tmp_path)
    val = dict(val_images=str(root / "img"), val_masks=str(root / "mask"))
    straight = _seg_config(root, epochs=3, output=str(tmp_path / "a"), hflip=0.5, scale_range=(0.8, 1.2), **val)
    train_segmentation(straight)
    cut = _seg_config(root, epochs=3, max_steps=4, output=str(tmp_path / "b"), hflip=0.5, scale_range=(0.8, 1.2),
                      **val)  # fmt: skip
    train_segmentation(cut)
    last = tmp_path / "b" / "last.pt"
    _to_old_layout(last, "best_miou", ("sync_bn", "grad_checkpoint", "trainable_stages"))
    result = train_segmentation(resume_segmentation_config(str(last), max_steps=None))
    a, b = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert len(b) == 3 and result["steps"] == 6
    assert float(b[2]["train_loss"]) == pytest.approx(float(a[2]["train_loss"]), rel=1e-6, abs=1e-7)
    assert result["best_miou"] == result["best_metric"] >= float(b[0]["mIoU"])
    assert "best_metric" in read_file(last)["train_state"]


def test_old_detection_last_pt_resumes(tmp_path):
    from efficientdet.data.synthetic import make_synthetic_dataset
    from efficientdet.engine.train import TrainConfig, resume_config, train

    data = make_synthetic_dataset(tmp_path / "shapes", n_train=4, n_val=2)
    cfg = TrainConfig(data=str(data), img_size=64, batch_size=2, workers=0, epochs=1, val_split=None,
                      pretrained_backbone=False, output=str(tmp_path / "run"))  # fmt: skip
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    _to_old_layout(last, "best_ap")
    result = train(resume_config(str(last), epochs=2))
    assert result["epochs_done"] == 2 and result["steps"] == 4 and result["best_ap"] == result["best_metric"]
    with pytest.raises(efficientdet.models.weights.CheckpointError, match="detection training checkpoint"):
        resume_segmentation_config(str(last))


def test_detection_last_pt_saved_before_the_giou_and_jitter_options_resumes_without_them(tmp_path):
    """A run saved before ``iou_loss_weight`` and ``color_jitter`` existed trained without a GIoU loss and without
    jitter; resumed, it goes on that way (0, not the small-data recipe's values, not an unset None), and its next
    checkpoint says so."""
    from efficientdet.data.synthetic import make_synthetic_dataset
    from efficientdet.engine.train import TrainConfig, resume_config, train

    data = make_synthetic_dataset(tmp_path / "shapes", n_train=4, n_val=2)
    cfg = TrainConfig(data=str(data), img_size=64, batch_size=2, workers=0, epochs=1, val_split=None,
                      pretrained_backbone=False, iou_loss_weight=0.0, color_jitter=0.0,
                      output=str(tmp_path / "run"))  # fmt: skip
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    _to_old_layout(last, "best_ap", ("iou_loss_weight", "color_jitter"))
    resumed = resume_config(str(last), epochs=2)
    train(resumed)
    saved = read_file(last)["train_state"]["train_config"]
    assert saved["iou_loss_weight"] == 0.0 and saved["color_jitter"] == 0.0
    rows = _history(tmp_path / "run")
    assert len(rows) == 2 and all(not r.get("train_iou_loss") for r in rows)


def _seg_worker(config_json: str) -> None:
    """torchrun's entry (``tests/test_engine.py seg <json>``): train, or resume with ``changes``."""
    fields = json.loads(config_json)
    if fields.get("resume"):
        train_segmentation(resume_segmentation_config(fields["resume"], **fields.get("changes", {})))
    else:
        train_segmentation(SegTrainConfig(**fields))


@pytest.mark.slow
def test_segmentation_two_processes_train_like_one_process_with_twice_the_batch(tmp_path):
    """Segmentation under torchrun: 2 x batch 2 with SyncBN and activation checkpointing, stopped after epoch 1 and
    resumed, equals 1 x batch 4 (same data order and augmentation, global pixel normaliser, gradient averaging, EMA).

    Seg-D0 (smooth SiLU) without stochastic depth, NCHW, small steps: as the detection test of test_distributed.py
    explains, ReLU6 or channels-last rounding would be amplified past what this test checks.
    """
    from test_distributed import torchrun

    root = _pairs(tmp_path, n=8)
    common = dict(model="efficientdet-seg-d0", num_classes=3, ignore_index=None, train_images=str(root / "img"),
                  train_masks=str(root / "mask"), val_images=str(root / "img"), val_masks=str(root / "mask"),
                  epochs=2, img_size=48, crop_size=40, scale_range=[0.8, 1.2], hflip=0.5, workers=0, lr=1e-3,
                  warmup_epochs=0.0, channels_last=False, model_overrides={"drop_path_rate": 0.0},
                  pretrained_backbone=False, amp="off")  # fmt: skip  # Seg-D0's ImageNet weights would be a
    # download; fp32: --amp auto trains in bf16 on CPUs with AVX512-BF16 / AMX, whose rounding this test would see
    train_segmentation(SegTrainConfig(**common, batch_size=4, output=str(tmp_path / "single")))
    ddp_out = tmp_path / "ddp"
    ddp = dict(common, batch_size=2, output=str(ddp_out), sync_bn=True, grad_checkpoint=True, max_steps=2)
    worker = [str(Path(__file__)), "seg"]
    torchrun(worker + [json.dumps(ddp)])
    first = read_file(ddp_out / "last.pt")["train_state"]
    assert first["epoch"] == 1 and first["world_size"] == 2 and len(first["rng_per_rank"]) == 2
    torchrun(worker + [json.dumps({"resume": str(ddp_out / "last.pt"), "changes": {"max_steps": None}})])
    a, b = read_file(tmp_path / "single" / "last.pt"), read_file(ddp_out / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 4

    def max_diff(x, y):
        return max((x[k].double() - y[k].double()).abs().max().item() for k in x if x[k].is_floating_point())

    raw_diff = max_diff(a["train_state"]["model"], b["train_state"]["model"])
    ema_diff = max_diff(a["state_dict"], b["state_dict"])
    print(f"max abs diff: raw {raw_diff:.3g}, EMA {ema_diff:.3g}")
    assert raw_diff <= 2e-5 and ema_diff <= 2e-5  # the tolerance of the detection test
    for ra, rb in zip(_history(tmp_path / "single"), _history(ddp_out), strict=True):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-5)
        assert float(ra["mIoU"]) == pytest.approx(float(rb["mIoU"]), abs=1e-3)


# ----------------------------------------------------------------------------------------------- registry


def test_registry_finds_each_family_and_names_unknown_models():
    assert family_for("efficientdet-d0").task == "detection"
    assert family_for("EfficientDet-Seg-Lite0").task == "segmentation"
    assert "efficientdet-seg-d4" in model_names("segmentation") and "efficientdet-d4" not in model_names("segmentation")
    model = efficientdet.create_model("efficientdet-seg-lite0", num_classes=4, image_size=64)
    assert type(model).__name__ == "EfficientDetSegmentation" and model.config.num_classes == 4
    with pytest.raises(UnknownModelError, match="unknown model 'efficientdet-d42'; available: efficientdet-d0"):
        efficientdet.create_model("efficientdet-d42")
    with pytest.raises(KeyError):  # still a KeyError, as before the registry
        efficientdet.create_model("nope")


def _imports(path):
    """Every module a file imports, at any depth (function-level imports included), as written."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_the_two_model_families_do_not_import_each_other():
    factory = _imports(REPO / "efficientdet" / "models" / "factory.py")
    seg = _imports(REPO / "efficientdet" / "models" / "segmenter.py")
    registry = _imports(REPO / "efficientdet" / "models" / "registry.py")
    assert not any("segmentation" in m for m in factory), factory
    assert not any(m.endswith("factory") for m in seg), seg
    assert not any(m.startswith(".") for m in registry), registry  # below both families
    code = ("import efficientdet.models.segmenter as s, efficientdet.models.factory as f; "
            "m = f.create_model('efficientdet-seg-lite0', num_classes=2); print(type(m).__name__)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "EfficientDetSegmentation", out.stderr


def test_reset_head_keeps_the_rest_and_predicts_the_new_classes():
    det = efficientdet.create_model("efficientdet-lite0", num_classes=5, image_size=64)
    before = {k: v.clone() for k, v in det.state_dict().items()}
    det.reset_head(2)
    after = det.state_dict()
    assert det.config.num_classes == 2 and after["class_net.predict.pointwise.weight"].shape[0] == 9 * 2
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("class_net.predict."))
    cls, _ = det.eval()(torch.zeros(1, 3, 64, 64))
    assert cls[0].shape[1] == 18
    seg = efficientdet.create_model("efficientdet-seg-lite0", num_classes=5, image_size=64)
    seg.reset_head(3)
    assert seg.config.num_classes == 3 and seg.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


if __name__ == "__main__":  # torchrun's entry: tests/test_engine.py seg <json>
    {"seg": _seg_worker}[sys.argv[1]](sys.argv[2])
