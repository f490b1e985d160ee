"""benchmarks/recipe_search.py: settings compared on images held out of the training split, with the plain CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from test_train import raccoon_subset

SMOKE = "--epochs 1 --img-size 64 --batch-size 4 --workers 0 --no-pretrained-backbone"


@pytest.mark.slow
def test_search_scores_settings_on_held_out_training_images(tmp_path):
    data = raccoon_subset(tmp_path, n_train=20, n_val=0)
    (data / "ImageSets" / "Main" / "val.txt").unlink()  # a dataset with train (and test) only, like raccoon
    out = tmp_path / "search"
    settings = ["unfrozen-320-bw50-60ep", "frozen-448-bw200-130ep"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "recipe_search.py"), "--data", str(data), "--seeds", "0",
           "--holdout-seeds", "0", "1", "--only", *settings, "--extra", SMOKE, "--output", str(out)]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = {r["setting"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == set(settings)
    assert all(r["runs"] == 2 and r["val_AP_mean"] is not None and r["val_AP_std"] is not None for r in rows.values())
    assert all(set(r["val_AP_by_holdout"]) == {"0", "1"} for r in rows.values())
    variants = ("hard_nms", "soft_nms", "flip_tta_hard_nms", "flip_tta_soft_nms", "hard_nms_vote", "soft_nms_vote")
    for variant in variants:  # evaluations of the same weights on the same images
        assert all(r[f"val_AP_{variant}_mean"] is not None for r in rows.values())
    # a run's score is its final weights' AP under eval's default evaluation (soft-NMS), whatever training used
    assert all(r["val_AP_mean"] == pytest.approx(r["val_AP_soft_nms_mean"]) for r in rows.values())
    # each draw's runs held out (and were scored on) that draw's 4 images: draw 0's in SETTING/seed0, draw 1's in
    # SETTING/holdout1/seed0, the same for every setting
    for name in settings:
        for draw, run in ((0, out / name / "seed0"), (1, out / name / "holdout1" / "seed0")):
            log = (run / "train.log").read_text()
            assert f"holding out 4 of 20 'train' images (seed {draw}, --holdout-fraction 0.2)" in log
            assert json.loads((run / "variants.json").read_text()) | {"AP": None, "AP50": None} == {
                "AP": None, "AP50": None, "images": 4, "holdout_seed": draw}  # fmt: skip
    stamp = (out / "unfrozen-320-bw50-60ep" / "seed0" / "last.pt").stat().st_mtime
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)  # finished runs are read back
    assert again.returncode == 0 and (out / "unfrozen-320-bw50-60ep" / "seed0" / "last.pt").stat().st_mtime == stamp
    assert "| unfrozen-320-bw50-60ep |" in (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["paired_with"] == settings[0] and results["paired"][settings[1]]["pairs"] == 2  # same draws, seed
    a, b = (rows[name]["val_AP_by_holdout"] for name in settings)  # one seed: a draw's mean is its one run
    assert results["paired"][settings[1]]["differences"] == pytest.approx([b["0"] - a["0"], b["1"] - a["1"]])
    text = (out / "results.md").read_text()
    assert "0: " in text and "1: " in text and f"{settings[1]} minus {settings[0]}, paired" in text


@pytest.mark.slow
def test_raccoon_benchmark_runs_the_plain_commands_then_test_once(tmp_path):
    """benchmarks/raccoon.py: `train --data D --seed S` as typed, then `eval` of last.pt on `test`; read back after."""
    data = raccoon_subset(tmp_path, n_train=20, n_val=4)
    (data / "ImageSets" / "Main" / "val.txt").rename(data / "ImageSets" / "Main" / "test.txt")  # train + test only
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "raccoon.py"), "--data", str(data), "--seeds", "0",
           "--extra", SMOKE, "--output", str(out), "--json", str(tmp_path / "r.json")]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    train_cmd, eval_cmd = run["commands"]
    assert train_cmd.split(" -m efficientdet ")[1].startswith(f"train --data {data} --seed 0 --output {out}/seed0 ")
    assert f"eval --checkpoint {out}/seed0/last.pt --data {data} --split test" in eval_cmd
    assert run["AP"] == json.loads((out / "seed0" / "test.json").read_text())["AP"]
    # the plain command chose its settings from the data (those the smoke flags left open) and said so
    assert run["recipe"].startswith("small data (18 training images") and "box weight 200" in run["recipe"]
    assert "mean of 1: AP" in first.stdout
