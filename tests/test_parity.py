"""Exactly what effdet computes: the three reference files of ``shared/fixtures/effdet_parity``."""

import pytest
import torch
from conftest import PARITY_CASES, PARITY_DIR

import efficientdet
from efficientdet.models.config import EFFDET_ASPECT_RATIOS
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.postprocess import postprocess

OUTPUT_TOL = 1e-4
BOX_TOL = 1e-3


@pytest.fixture(scope="module")
def loaded(parity_data):
    models = {}
    for fname, name, *_ in PARITY_CASES:
        model = efficientdet.create_model(name, checkpoint=PARITY_DIR / fname).eval()
        with torch.no_grad():
            models[fname] = (model, *model(parity_data[fname]["input"]))
    return models


@pytest.mark.parametrize("fname,name,padding,redundant_bias", PARITY_CASES)
def test_flavour_is_inferred_from_the_checkpoint(loaded, fname, name, padding, redundant_bias):
    cfg = loaded[fname][0].config
    assert (cfg.name, cfg.padding, cfg.redundant_bias, cfg.num_classes) == (name, padding, redundant_bias, 90)
    assert cfg.aspect_ratios == EFFDET_ASPECT_RATIOS


@pytest.mark.parametrize("fname", [c[0] for c in PARITY_CASES])
def test_raw_outputs_match_effdet(loaded, parity_data, fname):
    _, cls, box = loaded[fname]
    ref = parity_data[fname]
    assert len(cls) == len(ref["class_outputs"]) == 5
    for ours, theirs in zip(cls, ref["class_outputs"]):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= OUTPUT_TOL
    for ours, theirs in zip(box, ref["box_outputs"]):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= OUTPUT_TOL


@pytest.mark.parametrize("fname", [c[0] for c in PARITY_CASES])
def test_anchors_match_effdet(loaded, parity_data, fname):
    model = loaded[fname][0]
    ref = parity_data[fname]
    anchors = anchors_for_config(model.config, tuple(ref["input"].shape[-2:]))
    assert anchors.shape == ref["anchors_yxyx"].shape
    assert (anchors - ref["anchors_yxyx"].float()).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fname", [c[0] for c in PARITY_CASES])
def test_detections_match_effdet(loaded, parity_data, fname):
    """top-5000, decode with effdet's anchors, per-class hard NMS at 0.5, 100 kept (the fixture's recipe)."""
    model, cls, box = loaded[fname]
    ref = parity_data[fname]
    dets = postprocess(cls, box, ref["anchors_yxyx"].float(), 90, topk=5000, iou_threshold=0.5, max_det=100)
    for ours, theirs in zip(dets, ref["detections"]):
        n = len(ours["scores"])
        assert n > 0 and torch.all(theirs[n:] == 0), "same number of detections"
        theirs = theirs[:n]
        assert (ours["scores"] - theirs[:, 4]).abs().max().item() <= 1e-5  # same scores, rank by rank
        # Detections whose scores tie (to float32 rounding: this file has two at 0.94353) may come in either order:
        # the thread count alone changes the last bit. Each must equal one reference detection of the same score.
        unmatched = list(range(n))
        for box, score, label in zip(ours["boxes"], ours["scores"], ours["labels"] + 1):
            same = [j for j in unmatched if abs(float(theirs[j, 4] - score)) <= 1e-5 and int(theirs[j, 5]) == label
                    and (theirs[j, :4] - box).abs().max().item() <= BOX_TOL]  # fmt: skip
            assert same, f"no reference detection matches {box.tolist()} (score {float(score):.6f}, class {label})"
            unmatched.remove(same[0])


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "state_dict_ema", "module_prefix"])
def test_effdet_release_file_variants_load(tmp_path, parity_data, wrapper):
    """effdet's release files are raw state_dicts or training checkpoints that hold one."""
    fname = "efficientdet_d0_128.pt"
    sd = {k: v.float() for k, v in parity_data[fname]["state_dict"].items()}
    obj = {f"module.{k}": v for k, v in sd.items()} if wrapper == "module_prefix" else {wrapper: sd, "epoch": 3}
    path = tmp_path / "release.pth"
    torch.save(obj, path)
    model = efficientdet.create_model("efficientdet-d0", checkpoint=path).eval()
    with torch.no_grad():
        cls, _ = model(parity_data[fname]["input"])
    assert (cls[0] - parity_data[fname]["class_outputs"][0]).abs().max().item() <= OUTPUT_TOL
