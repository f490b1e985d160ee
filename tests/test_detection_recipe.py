"""The settings `efficientdet train` chooses from the data: which for which data, printed, stored, overridable."""

import logging

import pytest
from test_train import raccoon_subset

from efficientdet.cli import main
from efficientdet.engine.tasks.detection_recipe import LARGE_DATA, SMALL_DATA, SMALL_DATA_IMAGES, choose_settings
from efficientdet.models.weights import read_file

OPEN = dict.fromkeys(["freeze_backbone", "img_size", "epochs", "box_loss_weight", "color_jitter", "iou_loss_weight"])


def test_small_data_gets_the_frozen_448px_recipe():
    choice = choose_settings(OPEN, 144, model_size=320, backbone_pretrained=True)
    assert choice.values == {"freeze_backbone": True, "img_size": 448, "epochs": 60, "box_loss_weight": 200.0,
                             "color_jitter": 0.0, "iou_loss_weight": 8.0}  # fmt: skip
    assert choice.line.startswith(
        "recipe: small data (144 training images, fewer than 1,000) -> frozen backbone, 448 px, 60 epochs, "
        "box weight 200, no colour jitter, GIoU loss 8; each can be overridden"
    )
    assert "--iou-loss-weight)" in choice.line


def test_counts_of_one_read_in_the_singular():
    choice = choose_settings({**OPEN, "epochs": 1}, 1, model_size=320, backbone_pretrained=True)
    assert "recipe: small data (1 training image, fewer than 1,000) -> frozen backbone, 448 px, 1 epoch (given)," in (
        choice.line
    )


def test_large_data_gets_the_papers_recipe_at_the_models_size():
    choice = choose_settings(OPEN, SMALL_DATA_IMAGES, model_size=512, backbone_pretrained=True)
    assert choice.values == {"freeze_backbone": False, "img_size": 512, "epochs": 60, "box_loss_weight": 50.0,
                             "color_jitter": 0.0, "iou_loss_weight": 0.0}  # fmt: skip
    assert "large data (1,000 training images, not fewer than 1,000) -> backbone trained, 512 px" in choice.line
    assert "box weight 50, no colour jitter, no GIoU loss;" in choice.line
    assert choose_settings(OPEN, SMALL_DATA_IMAGES - 1, 512, True).values["freeze_backbone"] is True


def test_a_larger_model_keeps_its_own_larger_input_on_small_data():
    assert choose_settings(OPEN, 50, model_size=640, backbone_pretrained=True).values["img_size"] == 640


def test_given_options_win_and_are_marked_given():
    given = {**OPEN, "img_size": 256, "freeze_backbone": False}
    choice = choose_settings(given, 100, model_size=320, backbone_pretrained=True)
    assert choice.values == {"epochs": 60, "box_loss_weight": 200.0, "color_jitter": 0.0, "iou_loss_weight": 8.0}
    assert "backbone trained (given), 256 px (given), 60 epochs, box weight 200, no colour jitter, GIoU loss 8;" in (
        choice.line
    )
    off = choose_settings({**OPEN, "iou_loss_weight": 0.0}, 100, model_size=320, backbone_pretrained=True)
    assert "iou_loss_weight" not in off.values and "no GIoU loss (given);" in off.line
    jitter = choose_settings({**OPEN, "color_jitter": 0.3}, 100, model_size=320, backbone_pretrained=True)
    assert "color_jitter" not in jitter.values and "colour jitter 0.3 (given), GIoU loss 8;" in jitter.line


def test_a_random_backbone_is_never_frozen():
    choice = choose_settings(OPEN, 100, model_size=320, backbone_pretrained=False)
    assert choice.values["freeze_backbone"] is False
    assert "backbone trained because it starts from random weights" in choice.line
    # ... unless the user asks for it
    given = {**OPEN, "freeze_backbone": True}
    assert "freeze_backbone" not in choose_settings(given, 100, 320, False).values


def test_the_recipes_are_what_the_docs_say():
    assert (SMALL_DATA.freeze_backbone, SMALL_DATA.min_img_size, SMALL_DATA.epochs) == (True, 448, 60)
    assert (LARGE_DATA.freeze_backbone, LARGE_DATA.min_img_size, LARGE_DATA.box_loss_weight) == (False, None, 50.0)
    assert (SMALL_DATA.color_jitter, LARGE_DATA.color_jitter) == (0.0, 0.0)
    assert (SMALL_DATA.iou_loss_weight, LARGE_DATA.iou_loss_weight) == (8.0, 0.0)


def test_plain_train_prints_and_stores_the_recipe_and_resume_keeps_it(tmp_path, caplog):
    """`efficientdet train --data DIR` on 8 images: small data; the line is logged and saved in both checkpoints."""
    data = raccoon_subset(tmp_path, n_train=8, n_val=2)
    out = tmp_path / "run"
    # --img-size keeps the test fast; it shows as given. --epochs 2 with --max-steps 1 stops inside the run.
    args = ["train", "--data", str(data), "--img-size", "128", "--epochs", "2", "--max-steps", "1", "--workers", "0",
            "--output", str(out)]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="efficientdet"):
        assert main(args) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe:")]
    assert lines == [
        "recipe: small data (8 training images, fewer than 1,000) -> frozen backbone, 128 px (given), 2 epochs "
        "(given), box weight 200, no colour jitter, GIoU loss 8; each can be overridden (--[no-]freeze-backbone, "
        "--img-size, --epochs, --box-loss-weight, --color-jitter, --iou-loss-weight)"
    ]
    last, best = read_file(str(out / "last.pt")), read_file(str(out / "best.pt"))
    saved = last["train_state"]["train_config"]
    assert saved["recipe"] == lines[0] == last["recipe"] == best["recipe"]
    assert (saved["freeze_backbone"], saved["img_size"], saved["epochs"], saved["box_loss_weight"],
            saved["color_jitter"], saved["iou_loss_weight"]) == (True, 128, 2, 200.0, 0.0, 8.0)  # fmt: skip
    assert "train_iou_loss" in (out / "metrics.csv").read_text().splitlines()[0]  # the recipe's GIoU loss is logged
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="efficientdet"):
        assert main(["train", "--resume", str(out / "last.pt"), "--max-steps", "2"]) == 0
    assert not [r for r in caplog.records if r.getMessage().startswith("recipe:")]  # the saved run's settings
    resumed = read_file(str(out / "last.pt"))["train_state"]["train_config"]
    assert resumed["recipe"] == lines[0] and resumed["freeze_backbone"] is True


@pytest.mark.parametrize("flag", ["--no-freeze-backbone", "--freeze-backbone"])
def test_the_freeze_flag_overrides_the_recipe(tmp_path, flag):
    data = raccoon_subset(tmp_path, n_train=8, n_val=2)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--img-size", "128", "--epochs", "1", "--max-steps", "1", "--workers", "0",
            "--val-split", "none", "--output", str(out), flag]  # fmt: skip
    assert main(args) == 0
    saved = read_file(str(out / "last.pt"))["train_state"]["train_config"]
    assert saved["freeze_backbone"] is (flag == "--freeze-backbone")
    assert "(given)" in saved["recipe"].split("->")[1].split(",")[0]
