"""Label spaces: COCO's 90 slots, category ids kept from a COCO JSON to the checkpoint and the written results,
and fine-tuning that keeps the class-head rows of the classes a checkpoint already knows. No network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import efficientdet
from efficientdet.cli import main
from efficientdet.data.labels import COCO_UNUSED_IDS, coco_slot_ids, coco_slot_names, match_class_names
from efficientdet.data.records import DetectionData, ImageRecord
from efficientdet.engine.train import TrainConfig, build_model, train
from efficientdet.models.finetune import describe_mapping
from efficientdet.models.weights import checkpoint_dict, read_checkpoint

IDS = [1, 2, 3, 5, 90]  # COCO's ids have gaps


def test_coco_slots_are_category_ids_with_the_unused_ones_marked():
    names, ids = coco_slot_names(), coco_slot_ids()
    assert len(names) == 90 and ids == list(range(1, 91))
    assert names[0] == "person" and names[4] == "airplane" and names[71] == "tv" and names[89] == "toothbrush"
    assert COCO_UNUSED_IDS == (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
    assert [names[i - 1] for i in COCO_UNUSED_IDS] == [f"unused-{i}" for i in COCO_UNUSED_IDS]
    assert len({n for n in names if not n.startswith("unused-")}) == 80


def test_class_names_match_without_case_and_through_voc_spellings():
    voc = ["aeroplane", "Bicycle", "diningtable", "motorbike", "pottedplant", "sofa", "tvmonitor", "raccoon"]
    found = match_class_names(coco_slot_names(), voc)
    assert {voc[j]: coco_slot_names()[i] for j, i in found.items()} == {
        "aeroplane": "airplane", "Bicycle": "bicycle", "diningtable": "dining table", "motorbike": "motorcycle",
        "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv",
    }  # fmt: skip
    assert match_class_names(coco_slot_names(), ["unused-12"]) == {}  # never-trained slots never match


def test_coco_split_meets_a_90_slot_model_by_name_with_its_own_ids():
    names = coco_slot_names()
    records = [ImageRecord("a.jpg", 1, 100, 100, np.array([[0, 0, 10, 10]] * 5, np.float32), np.arange(5))]
    data = DetectionData(records, [names[i - 1] for i in IDS], "coco", category_ids=IDS)
    aligned = data.with_class_names(names, coco_slot_ids())
    assert aligned.records[0].labels.tolist() == [i - 1 for i in IDS]  # label = slot
    assert aligned.category_ids == coco_slot_ids()  # the split's ids where it has them, the model's elsewhere
    # a custom COCO JSON whose ids mean other classes: its own ids win, the model's colliding ids are not reused
    custom = DetectionData(records[:0], ["dog", "cat"], "coco", category_ids=[1, 2])
    ids = custom.with_class_names(names, coco_slot_ids()).category_ids
    assert ids[17] == 1 and ids[16] == 2 and ids[0] == -1 and ids[1] == -1 and ids[2] == 3


def test_old_checkpoints_without_category_ids_still_load(tmp_path):
    model = efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=64)
    old = checkpoint_dict(model.state_dict(), model.config.to_dict(), ["a", "b"])
    assert "category_ids" not in old
    torch.save(old, tmp_path / "old.pt")
    loaded = efficientdet.load_checkpoint(tmp_path / "old.pt")
    assert loaded.class_names == ["a", "b"] and loaded.category_ids is None
    model.class_names, model.category_ids = ["a", "b"], [7, 3]
    efficientdet.save_model(model, tmp_path / "new.pt")
    assert read_checkpoint(tmp_path / "new.pt").category_ids == [7, 3]
    assert efficientdet.load_checkpoint(tmp_path / "new.pt").category_ids == [7, 3]


def _coco_dataset(tmp_path: Path) -> Path:
    """A COCO JSON with COCO's id gaps (1, 2, 3, 5, 90) and names, over 4 small images."""
    names = coco_slot_names()
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    content = {"images": [], "annotations": [], "categories": [{"id": i, "name": names[i - 1]} for i in IDS]}
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "images" / f"{k}.jpg")
        content["images"].append({"id": k + 1, "file_name": f"{k}.jpg", "width": 80, "height": 64})
        cid = IDS[k % len(IDS)]
        content["annotations"].append({"id": k + 1, "image_id": k + 1, "category_id": cid,
                                       "bbox": [10, 8, 30, 40], "area": 1200, "iscrowd": 0})  # fmt: skip
    path = root / "instances.json"
    path.write_text(json.dumps(content))
    return path


def test_a_model_trained_on_a_coco_json_writes_the_datasets_ids(tmp_path, capsys):
    data = _coco_dataset(tmp_path)
    cfg = TrainConfig(model="efficientdet-lite0", data=str(data), format="coco", val_split=None, img_size=64,
                      batch_size=2, epochs=1, max_steps=1, workers=0, output=str(tmp_path / "run"))  # fmt: skip
    result = train(cfg)
    model = efficientdet.load_checkpoint(result["best"])
    assert model.category_ids == IDS and model.class_names == [coco_slot_names()[i - 1] for i in IDS]
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", result["best"], str(data.parent / "images"), "--output", str(out),
               "--score-threshold", "0", "--max-det", "10", "--no-draw", "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "detections.json").read_text())
    by_id = dict(zip(IDS, model.class_names))
    assert results and {r["category_id"] for r in results} <= set(IDS)
    assert all(r["category_name"] == by_id[r["category_id"]] for r in results)
    metrics = tmp_path / "metrics.json"
    rc = main(["eval", "--checkpoint", result["best"], "--data", str(data), "--format", "coco", "--json",
               str(metrics), "--workers", "0", "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    written = json.loads(metrics.read_text())
    assert [row["category_id"] for row in written["per_class"]] == IDS
    assert {d["category_id"] for d in json.loads(Path(written["detections"]).read_text())} <= set(IDS)


def test_fine_tuning_keeps_the_rows_of_known_classes_and_the_rest_of_the_heads(tmp_path, caplog):
    source = efficientdet.create_model("efficientdet-lite0", num_classes=4, image_size=64)
    source.class_names = ["cat", "airplane", "tv", "dog"]
    efficientdet.save_model(source, tmp_path / "source.pt")
    caplog.set_level("INFO", logger="efficientdet")
    target = ["tvmonitor", "raccoon", "Cat"]
    model = build_model(TrainConfig(model="efficientdet-lite0", checkpoint=str(tmp_path / "source.pt")), target)
    fresh = efficientdet.create_model("efficientdet-lite0", num_classes=3, image_size=64)
    ours, theirs = model.class_net.predict.pointwise, source.class_net.predict.pointwise
    for anchor in range(model.config.num_anchors):
        for new, old in [(0, 2), (2, 0)]:
            assert torch.equal(ours.weight[anchor * 3 + new], theirs.weight[anchor * 4 + old])
            assert torch.equal(ours.bias[anchor * 3 + new], theirs.bias[anchor * 4 + old])
        assert ours.bias[anchor * 3 + 1] == fresh.class_net.predict.pointwise.bias[1]  # raccoon: the prior bias
    mine, src = model.state_dict(), source.state_dict()
    for key in ("class_net.convs.0.pointwise.weight", "class_net.predict.depthwise.weight",
                "box_net.predict.pointwise.weight", "box_net.norms.1.2.running_var"):  # fmt: skip
        assert torch.equal(mine[key], src[key]), key
    assert "2 of 3 classes keep their rows (tvmonitor <- tv, Cat <- cat); new: raccoon" in caplog.text
    assert describe_mapping({}, None, ["a"]) == "0 of 1 classes keep their rows; new: a"


def test_other_anchors_start_both_prediction_convs_afresh(tmp_path):
    source = efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=64)
    source.class_names = ["a", "b"]
    efficientdet.save_model(source, tmp_path / "source.pt")
    cfg = TrainConfig(model="efficientdet-lite0", checkpoint=str(tmp_path / "source.pt"),
                      model_overrides={"aspect_ratios": ((1.0, 1.0),)})  # fmt: skip
    model = build_model(cfg, ["a", "b"])
    assert model.class_net.predict.pointwise.weight.shape[0] == 3 * 2
    assert torch.equal(model.fpn.state_dict()["cells.0.nodes.0.conv.pointwise.weight"],
                       source.fpn.state_dict()["cells.0.nodes.0.conv.pointwise.weight"])  # fmt: skip


def test_train_and_predict_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.jpg", "--checkpoint", "a.pt", "--pretrained", "--model", "efficientdet-d0"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["predict", "x.jpg", "--pretrained"]) == 1
    assert "--pretrained needs --model NAME" in capsys.readouterr().err
    assert main(["eval", "--task", "segmentation", "--pretrained", "--model", "efficientdet-seg-lite0"]) == 2
    from efficientdet.cli import build_parser

    args = build_parser().parse_args(["train", "--no-pretrained-backbone", "--pretrained"])
    assert args.pretrained_backbone is False and args.pretrained is True
    assert "pretrained_backbone" not in vars(build_parser().parse_args(["train"]))  # not given: TrainConfig's, on
    assert TrainConfig().pretrained_backbone is True
