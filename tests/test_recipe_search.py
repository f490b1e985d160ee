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
    cmd = [sys.executable, str(REPO / "benchmarks" / "recipe_search.py"), "--data", str(data), "--seeds", "0", "1",
           "--only", "default", "frozen-448-bw200-130ep", "--extra", SMOKE, "--output", str(out)]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = {r["setting"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"default", "frozen-448-bw200-130ep"}
    assert all(r["runs"] == 2 and r["val_AP_mean"] is not None and r["val_AP_std"] is not None for r in rows.values())
    for run in out.glob("*/seed*"):  # every run evaluated the same 4 held-out images (holdout seed 0)
        assert "holding out 4 of 20 'train' images (seed 0, --holdout-fraction 0.2)" in (run / "train.log").read_text()
    stamp = (out / "default" / "seed0" / "last.pt").stat().st_mtime
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)  # finished runs are read back
    assert again.returncode == 0 and (out / "default" / "seed0" / "last.pt").stat().st_mtime == stamp
    assert "| default |" in (out / "results.md").read_text()
