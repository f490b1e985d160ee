import json
import subprocess
import sys

from efficientdet.cli import main
from efficientdet.models.config import EFFDET_PARAMS, list_models


def test_info_json_lists_every_model(capsys):
    assert main(["info", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models()
    assert all(set(r) == {"name", "params", "flops", "image_size"} for r in rows)
    d0 = rows[0]
    assert d0["params"] == EFFDET_PARAMS["efficientdet-d0"] and d0["image_size"] == 512
    assert 2.4e9 < d0["flops"] < 2.6e9


def test_info_table_for_chosen_models(capsys):
    assert main(["info", "efficientdet-d0", "efficientdet-lite0"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("efficientdet-")]
    assert len(lines) == 2 and "3,880,067" in lines[0] and "3,243,470" in lines[1]
    assert "64x3" in lines[0] and "exact" in lines[0]


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "efficientdet-d42"]) == 2
    assert "unknown model(s) efficientdet-d42" in capsys.readouterr().err


def test_console_entry_point_runs_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "efficientdet", "info", "efficientdet-lite0", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)[0]["params"] == 3_243_470
