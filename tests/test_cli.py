import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_only_train_mentions_resume(capsys):
    """``eval`` has no --resume: its --data help must not tell of one (it shared train's wording)."""
    assert "--resume" in _help(capsys, "train")
    for task in ("detection", "segmentation"):
        assert "--resume" not in _help(capsys, "eval", "--task", task)


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


def test_eval_of_a_model_for_another_class_count_says_it_plainly(tmp_path, capsys):
    """ "the model predicts 1 classes, the data has 2 (cat, dog...)": a plural for one, and an ellipsis after a
    complete list (a model without class names, as the published ones, is compared by count)."""
    from test_train import raccoon_subset

    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    (data / "classes.txt").write_text("raccoon\nbadger\n")
    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["efficientdet eval: the model predicts 1 class, the data has 2 (raccoon, badger)"]


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


MPS_MISSING = not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


@pytest.mark.parametrize("command", ["train", "eval", "predict", "predict-segmentation", "bench"])
@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("foo", "--device foo: not a device torch knows (auto, cpu, cuda, cuda:1, mps ...)"),
        pytest.param("mps", "--device mps: MPS is not available on this machine",
                     marks=pytest.mark.skipif(not MPS_MISSING, reason="this machine has MPS")),
        pytest.param("cuda:3", "--device cuda:3: CUDA is not available on this machine",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    ],
)  # fmt: skip
def test_a_device_this_machine_cannot_run_is_one_line(tmp_path, capsys, command, device, expected):
    """torch's RuntimeError, or bench's AssertionError, as a traceback before, or a line not naming --device."""
    from test_train import raccoon_subset

    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    image = str(next((data / "JPEGImages").iterdir()))
    det, seg, out = tmp_path / "det.pt", tmp_path / "seg.pt", tmp_path / "out"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), det)
    efficientdet.save_model(efficientdet.create_model("efficientdet-seg-lite0", num_classes=3), seg)
    argv = {
        "train": ["train", "--data", str(data), "--output", str(out), "--no-pretrained-backbone"],
        "eval": ["eval", "--checkpoint", str(det), "--data", str(data), "--split", "val"],
        "predict": ["predict", image, "--checkpoint", str(det), "--output", str(out)],
        "predict-segmentation": ["predict", "--task", "segmentation", image, "--checkpoint", str(seg), "--output",
                                 str(out)],
        "bench": ["bench", "--checkpoint", str(det), "--iterations", "1"],
    }[command]  # fmt: skip
    assert main([*argv, "--device", device]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"efficientdet {argv[0]}: {expected}"]
    assert not out.exists()


@pytest.mark.parametrize(("fmt", "name"), [("openvino", "x.onnx"), ("onnx", "x.xml"), ("pt2", "x.onnx"), ("onnx", "x")])
def test_export_output_of_another_format_is_one_line_before_any_work(tmp_path, capsys, fmt, name):
    """OpenVINO's check named the hidden temp file after the work, an ONNX file named .xml failed its verification
    the same way, and a torch.export program named .onnx was written (predict would hand it to onnxruntime)."""
    import efficientdet

    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), ckpt)
    out = tmp_path / "out" / name
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--output", str(out)]) == 2
    suffix = {"onnx": ".onnx", "openvino": ".xml (+ NAME.bin)", "pt2": ".pt2"}[fmt]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"efficientdet export: --output {out}: --format {fmt} writes NAME{suffix}; predict, eval and bench tell "
        "the format by the suffix"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("command", "option", "name"),
    [("train", "--output", "run"), ("eval", "--json", "m.json"), ("eval", "--plots", "plots"),
     ("export", "--output", "m.onnx"), ("check-data", "--json", "d.json"), ("check-data", "--plots", "plots")],
)  # fmt: skip
@pytest.mark.parametrize("under", ["a file", "/proc"])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys, command, option, name, under):
    """A traceback after the evaluation, the export or the data check before (an OSError from the temporary file
    beside the output, naming that file): below a file, or where the system refuses files (/proc, read-only
    mounts, another user's folder)."""
    from test_train import raccoon_subset

    import efficientdet

    if under == "/proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no Linux /proc here")
    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), ckpt)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    path = blocker / "sub" / name if under == "a file" else f"/proc/efficientdet-test/{name}"
    argv = {
        "train": ["train", "--data", str(data), "--no-pretrained-backbone", "--epochs", "1"],
        "eval": ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val"],
        "export": ["export", "--checkpoint", str(ckpt)],
        "check-data": ["check-data", "--data", str(data)],
    }[command]
    assert main([*argv, option, str(path)]) == (1 if command == "train" else 2)
    reason = f"{blocker} is a file, not a folder" if under == "a file" else "cannot write in /proc"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"efficientdet {command}: {option} {path}: {reason}"), err
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize(("command", "option"), [("eval", "--json"), ("export", "--output"), ("check-data", "--json")])
def test_a_file_output_named_as_a_folder_is_one_line_before_any_work(tmp_path, capsys, command, option):
    """``eval --json out/`` evaluated, made the folder ``out`` for its detections file, then failed with an
    IsADirectoryError naming the temporary file: a name ending in a path separator is a folder's."""
    from test_train import raccoon_subset

    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), ckpt)
    argv = {
        "eval": ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val"],
        "export": ["export", "--checkpoint", str(ckpt)],
        "check-data": ["check-data", "--data", str(data)],
    }[command]
    path = str(tmp_path / "out") + os.sep
    assert main([*argv, option, path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"efficientdet {command}: {option} {path}: a folder's name (it ends in {os.sep}), not a file's"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["detection", "segmentation"])
@pytest.mark.parametrize("under", ["a file", "/proc"])
def test_a_predict_output_that_cannot_be_written_is_one_line(tmp_path, capsys, task, under):
    """`predict --task segmentation` gave a traceback (FileExistsError / an OSError from mkdir), detection said
    "output X is a file" without the option, and neither looked past the folder itself."""
    from test_train import raccoon_subset

    import efficientdet

    if under == "/proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no Linux /proc here")
    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    image = str(next((data / "JPEGImages").iterdir()))
    model = "efficientdet-seg-lite0" if task == "segmentation" else "efficientdet-lite0"
    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model(model, num_classes=3), ckpt)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    for out, reason in ([(blocker, "a file, not a folder"), (blocker / "sub", f"{blocker} is a file, not a folder")]
                        if under == "a file" else [("/proc/efficientdet-test", "cannot write in /proc")]):  # fmt: skip
        assert main(["predict", "--task", task, image, "--checkpoint", str(ckpt), "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"efficientdet predict: --output {out}: {reason}"), err
    assert blocker.read_text() == "mine"


def test_demo_twice_keeps_the_first_and_a_bad_output_is_one_line(tmp_path, capsys, monkeypatch):
    """The README's first command, typed a second time, failed with a traceback once an --output holding a run was
    refused (before that, it replaced the first demo's model); a file as --output gave a NotADirectoryError after
    the synthetic data was half written."""
    import efficientdet.tools.demo as demo

    used = []

    def fake_run_demo(output, **kwargs):  # the folder handling is under test, not the training
        used.append(output)
        Path(output).mkdir(parents=True, exist_ok=True)
        (Path(output) / "last.pt").write_bytes(b"run")
        return {}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0 and main(["demo"]) == 0
    assert used == ["runs/demo", "runs/demo2"]
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("mine")
    for output, reason in [("runs/demo", "holds an earlier run (last.pt); choose another folder, or leave --output "
                            "out (runs/demo3 is free)"), ("notes.txt", "a file, not a folder")]:  # fmt: skip
        assert main(["demo", "--output", output]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"efficientdet demo: --output {output}: {reason}"]
    assert used == ["runs/demo", "runs/demo2"] and (tmp_path / "notes.txt").read_text() == "mine"
