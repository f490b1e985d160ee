import json
import re
import subprocess
import sys

import pytest

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


# ---------------------------------------------------------------------------------- options from the configs


def _help(capsys, *argv):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare on single spaces


def test_help_shows_each_tasks_own_defaults(capsys):
    """The help is generated from the task's config: segmentation shows its 50 epochs and its output folder."""
    from efficientdet.engine.tasks.detection import TrainConfig
    from efficientdet.engine.tasks.segmentation import SegTrainConfig

    detection = _help(capsys, "train")
    segmentation = _help(capsys, "train", "--task", "segmentation")
    assert "--epochs EPOCHS epochs (default: 60)" in detection  # small and large data alike (detection_recipe)
    assert f"--epochs EPOCHS epochs (default: {SegTrainConfig.epochs})" in segmentation
    assert TrainConfig.epochs is None  # chosen from the data (engine/tasks/detection_recipe.py)
    assert "(default: runs/segment)" in segmentation and "(default: runs/train)" in detection
    assert "--box-loss-weight" in detection and "--box-loss-weight" not in segmentation
    assert "--crop-size" in segmentation and "--crop-size" not in detection
    assert "--masks" in _help(capsys, "eval", "--task", "segmentation") and "--masks" not in _help(capsys, "eval")
    assert re.search(r"--nms \{hard,soft\}.*?\(default: soft\)", _help(capsys, "eval"), re.S)  # paper's evaluation


def test_every_config_field_is_a_flag_with_help():
    """A field added to a training config is on the command line at once, with a help text."""
    import argparse

    from efficientdet.cli.options import add_config_options, cli_fields
    from efficientdet.engine.tasks.detection import TrainConfig
    from efficientdet.engine.tasks.segmentation import SegTrainConfig
    from efficientdet.utils.fields import field_metadata, flag_name

    for config in (TrainConfig, SegTrainConfig):
        parser = argparse.ArgumentParser()
        add_config_options(parser, config)
        usage = parser.format_usage()
        for f in cli_fields(config):
            assert f"[{flag_name(f.name)}" in usage, f.name
            assert field_metadata(config, f.name).get("help"), f"{config.__name__}.{f.name} has no help text"


@pytest.mark.parametrize(
    ("argv", "flag", "task"),
    [
        (["train", "--task", "segmentation", "--box-loss-weight", "10"], "--box-loss-weight", "detection"),
        (["train", "--task", "segmentation", "--aspect-ratios", "1", "2"], "--aspect-ratios", "detection"),
        (["train", "--crop-size", "64", "--data", "x"], "--crop-size", "segmentation"),
        (["eval", "--checkpoint", "x.pt", "--masks", "m"], "--masks", "segmentation"),
        (["eval", "--task", "segmentation", "--checkpoint", "x.pt", "--nms", "soft"], "--nms", "detection"),
    ],
)
def test_a_flag_of_the_other_task_is_an_error(capsys, argv, flag, task):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"efficientdet {argv[0]}: {flag}: {task} only"), err


def test_an_unknown_flag_is_still_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "x", "--no-such-flag"])
    assert info.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_version_names_the_package_and_torch(capsys):
    import torch

    import efficientdet

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"efficientdet {efficientdet.__version__} (torch {torch.__version__})"


def test_export_help_names_every_format(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal's width
    with pytest.raises(SystemExit):
        main(["--help"])
    export_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("export"))
    assert "ONNX" in export_line and "OpenVINO" in export_line


@pytest.mark.parametrize(
    ("command", "option", "taken_by"),
    [("export", "--output", "folder"), ("check-data", "--json", "folder"), ("check-data", "--plots", "file")],
)
def test_output_paths_taken_by_the_other_kind_are_one_line_before_any_work(tmp_path, capsys, command, option, taken_by):
    """A traceback after the export or the data check before; nothing the user had is touched."""
    from test_train import raccoon_subset

    import efficientdet

    taken = tmp_path / "taken"
    taken.mkdir() if taken_by == "folder" else taken.write_text("mine")
    if command == "export":
        ckpt = tmp_path / "m.pt"
        efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), ckpt)
        argv = ["export", "--checkpoint", str(ckpt), option, str(taken)]
    else:
        argv = ["check-data", "--data", str(raccoon_subset(tmp_path, n_train=2, n_val=1)), option, str(taken)]
    assert main(argv) == 2
    what = "a folder, not a file" if taken_by == "folder" else "a file, not a folder"
    assert capsys.readouterr().err.strip().splitlines() == [f"efficientdet {command}: {option} {taken}: {what}"]
    assert (taken.is_dir() and not any(taken.iterdir())) if taken_by == "folder" else taken.read_text() == "mine"


SEGMENTATION_HELD = "holds a segmentation model; add --task segmentation"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["predict", "{image}", "--checkpoint", "{seg}"], "{seg}: " + SEGMENTATION_HELD),
        (["eval", "--checkpoint", "{seg}", "--data", "{data}"], "{seg}: " + SEGMENTATION_HELD),
        (["export", "--checkpoint", "{seg}"], "{seg}: holds a segmentation model; export writes detection models only"),
        (["bench", "--checkpoint", "{seg}", "--iterations", "1"],
         "{seg}: holds a segmentation model; bench times detection models only"),
        (["predict", "--task", "segmentation", "{image}", "--checkpoint", "{det}"],
         "{det}: holds a detection model; drop --task segmentation"),
    ],
)  # fmt: skip
def test_a_model_of_the_other_task_is_one_line(tmp_path, capsys, argv, expected):
    """A traceback or torch.export's failure report before (a segmentation model has no box outputs)."""
    from test_train import raccoon_subset

    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    names = {"seg": tmp_path / "seg.pt", "det": tmp_path / "det.pt", "data": data,
             "image": next((data / "JPEGImages").iterdir())}  # fmt: skip
    efficientdet.save_model(efficientdet.create_model("efficientdet-seg-lite0", num_classes=3), names["seg"])
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1), names["det"])
    argv = [a.format(**names) for a in argv]
    out = tmp_path / "out"
    assert main([*argv, "--output", str(out)] if argv[0] in ("predict", "export") else argv) == 1, argv
    assert capsys.readouterr().err.strip().splitlines() == [f"efficientdet {argv[0]}: {expected.format(**names)}"]
    assert not out.exists()


def test_predict_segmentation_with_no_readable_source_writes_nothing(tmp_path, capsys):
    import efficientdet

    seg = tmp_path / "seg.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-seg-lite0", num_classes=3), seg)
    out = tmp_path / "out"
    rc = main(["predict", "--task", "segmentation", str(tmp_path / "missing.jpg"), "--checkpoint", str(seg),
               "--output", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 and f"{tmp_path / 'missing.jpg'}: no such file or folder" in captured.err
    assert captured.out.strip() == "predict: no source could be read (1 source failed); nothing written"
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--epochs", "0"],
        ["demo", "--workers", "-1"],
        ["info", "--img-size", "0"],
        ["info", "--num-classes", "0"],
        ["bench", "--iterations", "0"],
        ["bench", "--img-size", "0"],
        ["bench", "--batch-size", "0"],
        ["bench", "--warmup", "-1"],
        ["bench", "--threads", "0"],
        ["export", "--checkpoint", "m.pt", "--batch-size", "0"],
        ["export", "--checkpoint", "m.pt", "--img-size", "0"],
        ["export", "--checkpoint", "m.pt", "--calibration-images", "0"],
        ["check-data", "--data", "d", "--img-size", "0"],
    ],
)
def test_counts_and_sizes_out_of_range_are_argparse_errors(tmp_path, capsys, monkeypatch, argv):
    """Tracebacks (an IndexError, a kernel larger than its input, an uncaught OptionError) or a silent default
    before; and `demo --epochs 0` had already made its output folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"argument {argv[-2]}: must be " in err.splitlines()[-1], err
    assert not any(tmp_path.iterdir())
