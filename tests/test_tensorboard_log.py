"""TensorBoard logs: what the logger writes reads back from the event files, and `train(tensorboard=True)` logs."""

import builtins
import math

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from efficientdet.data.synthetic import make_synthetic_dataset  # noqa: E402
from efficientdet.engine.tensorboard_log import INSTALL_HINT, TensorBoardLogger  # noqa: E402
from efficientdet.engine.train import TrainConfig, train  # noqa: E402

ALL = {"scalars": 0, "images": 0, "tensors": 0, "histograms": 0, "compressedHistograms": 0, "audio": 0}


def read_events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance=ALL)
    events.Reload()
    return events


def test_scalars_pr_curve_and_images_read_back(tmp_path):
    log_dir = tmp_path / "tb"
    with TensorBoardLogger(log_dir) as tb:
        assert not log_dir.exists()  # nothing is created before the first write
        tb.scalars("train", {"loss": 1.5, "lr": np.float32(0.01), "bad": math.nan, "inf": math.inf, "name": "x"}, 1)
        tb.scalars("train", {"loss": 1.25, "per_class": [0.1, 0.2], "none": None}, 2)
        precision = np.concatenate([np.linspace(1.0, 0.5, 81), np.zeros(20)])  # pycocotools: 101 recall thresholds
        recall = np.linspace(0.0, 1.0, 101)
        assert tb.pr_curve("val/pr/raccoon", precision, recall, 3)
        undefined = np.full(101, -1.0)  # a class without ground truth: precision -1 everywhere
        assert not tb.pr_curve("val/pr/absent", undefined, recall, 3)
        images = [np.zeros((20, 30, 3), np.uint8), np.full((10, 12, 3), 200, np.uint8)]  # sizes may differ
        tb.images("val/predictions", images, 3)
        tb.flush()
    events = read_events(log_dir)
    tags = events.Tags()
    assert set(tags["scalars"]) == {"train/loss", "train/lr"}
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.5), (2, 1.25)]
    assert events.Scalars("train/lr")[0].value == pytest.approx(0.01)
    assert tags["tensors"] == ["val/pr/raccoon"]
    (pr,) = events.Tensors("val/pr/raccoon")
    data = np.frombuffer(pr.tensor_proto.tensor_content, np.float32) if pr.tensor_proto.tensor_content else None
    data = np.asarray(pr.tensor_proto.float_val, np.float32).reshape(6, -1) if data is None else data.reshape(6, -1)
    assert pr.step == 3 and data.shape == (6, 101)
    np.testing.assert_allclose(data[5], recall[::-1], atol=1e-6)  # recall falls as the threshold rises
    np.testing.assert_allclose(data[4], precision[::-1], atol=1e-6)
    assert sorted(tags["images"]) == ["val/predictions/0", "val/predictions/1"]
    (image,) = events.Images("val/predictions/0")
    assert (image.step, image.width, image.height) == (3, 30, 20)


def test_pr_curve_drops_undefined_points_and_checks_shapes(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        assert tb.pr_curve("c", np.array([1.0, -1.0, 0.5]), np.array([0.0, 0.5, 1.0]), 0)
        with pytest.raises(ValueError, match="precision has 2 points, recall 3"):
            tb.pr_curve("c", np.zeros(2), np.zeros(3), 0)
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            tb.images("i", [np.zeros((4, 4), np.uint8)], 0)
    (pr,) = read_events(tmp_path).Tensors("c")
    assert len(pr.tensor_proto.float_val) == 6 * 2


def test_a_missing_tensorboard_package_is_a_clear_error(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(RuntimeError, match="pip install 'efficientdet\\[tensorboard\\]'") as info:
        TensorBoardLogger(tmp_path)
    assert str(info.value) == INSTALL_HINT


def test_training_with_tensorboard_logs_steps_epochs_and_images(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=2)
    out = tmp_path / "run"
    cfg = TrainConfig(model="efficientdet-lite0", data=str(data), format="coco", img_size=64, batch_size=2, epochs=2,
                      eval_interval=2, workers=0, output=str(out), scale_range=(1.0, 1.0), hflip=0.0,
                      tensorboard=True)  # fmt: skip
    train(cfg)
    events = read_events(out / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/cls_loss", "train/box_loss", "train/lr"} <= scalars
    assert {"epoch/train_loss", "epoch/lr", "epoch/AP", "epoch/AP50"} <= scalars and "epoch/epoch" not in scalars
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]  # the global step: one per epoch here
    assert [e.step for e in events.Scalars("epoch/train_loss")] == [1, 2]
    assert [e.step for e in events.Scalars("epoch/AP")] == [2]  # evaluated at the last epoch only
    assert sorted(events.Tags()["images"]) == ["val/predictions/0", "val/predictions/1"]
    assert [e.step for e in events.Images("val/predictions/0")] == [2]
    pr_tags = [t for t in events.Tags()["tensors"] if t.startswith("val/pr/")]
    assert pr_tags and all(e.step == 2 for t in pr_tags for e in events.Tensors(t))
    # the final evaluation's plots
    made = {p.name for p in (out / "plots").iterdir()}
    assert made == {"pr_curves.png", "f1_curve.png", "confusion_matrix.png", "confusion_matrix.csv"}
