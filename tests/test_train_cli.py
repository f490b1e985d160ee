"""`efficientdet train`, `eval` and `demo` from the command line, on real and synthetic data."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import interrupt_at_call
from PIL import Image
from test_train import history, raccoon_subset

from efficientdet.cli import main
from efficientdet.evaluation.coco import METRIC_KEYS


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    data = raccoon_subset(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--model", "efficientdet-lite0", "--data", str(data), "--train-split", "train",
               "--val-split", "val", "--epochs", "1", "--batch-size", "4", "--img-size", "128",
               "--output", str(out), "--workers", "0", "--max-steps", "2"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "AP50" in printed and "best AP" in printed
    report = tmp_path / "eval.json"
    plots = tmp_path / "plots"
    rc = main(["eval", "--checkpoint", str(out / "best.pt"), "--data", str(data), "--split", "val",
               "--json", str(report), "--workers", "0", "--plots", str(plots)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["class", "AP", "AP50", "AP75", "AR100", "boxes", "dets"]
    assert printed[1].split()[0] == "raccoon"
    metrics = json.loads(report.read_text())
    assert set(metrics) == set(METRIC_KEYS) | {"per_class", "images", "unreadable_images", "detections"}
    assert metrics["per_class"][0]["class"] == "raccoon" and metrics["unreadable_images"] == 0
    made = {p.name for p in plots.iterdir()}
    assert made == {"pr_curves.png", "f1_curve.png", "confusion_matrix.png", "confusion_matrix.csv"}
    with open(metrics["detections"]) as f:
        detections = json.load(f)
    assert isinstance(detections, list) and all(
        {"image_id", "category_id", "bbox", "score"} <= set(d) for d in detections
    )


def test_corrupt_image_is_skipped_with_a_warning_and_counted(tmp_path, caplog):
    data = raccoon_subset(tmp_path, n_train=6, n_val=1)
    victim = sorted((data / "JPEGImages").iterdir())[0]
    victim.unlink()
    victim.write_bytes(b"\xff\xd8\xff\xe0 truncated")  # a JPEG header and nothing else
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--val-split", "none", "--epochs", "1", "--batch-size", "3",
               "--img-size", "96", "--output", str(out), "--workers", "0"])  # fmt: skip
    assert rc == 0
    assert victim.name in caplog.text and "skipping unreadable image" in caplog.text
    assert int(history(out)[0]["skipped_images"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "efficientdet-d9"], "--model must be one of"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--img-size", "0"], "--img-size must be an integer >= 1, got 0"),
        (["--lr", "-0.1"], "--lr must be a finite number > 0"),
        (["--time-limit", "0"], "--time-limit must be a finite number > 0, got 0.0"),
        (["--scale-range", "1.5", "0.5"], "--scale-range must be two numbers"),
        (["--val-split", "empty", "--tensorboard"], "validation split 'empty' has no images"),
    ],
)
def test_train_refuses_bad_input_before_writing_anything(tmp_path, capsys, args, message):
    """One line naming the problem, a non-zero exit, and no output folder left behind."""
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    (data / "ImageSets" / "Main" / "empty.txt").write_text("")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--output", str(out), "--workers", "0", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_missing_dataset_is_one_line_on_the_terminal(tmp_path):
    """As a user sees it (a process of its own, the command's logging set up): the error alone, not preceded by the
    run's start-up notes (pytest's own log handlers hide those from in-process tests)."""
    missing = tmp_path / "no-such-dataset"
    run = subprocess.run(
        [sys.executable, "-m", "efficientdet", "train", "--data", str(missing), "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [f"efficientdet train: {missing}: dataset not found"]
    assert not (tmp_path / "run").exists()


def test_train_without_data_is_an_error_not_the_demo(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "efficientdet-d0", "--epochs", "3", "--output", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data is required" in err[0] and "efficientdet demo" in err[0]
    assert not out.exists()


def test_validation_split_without_boxes_is_said(tmp_path, caplog):
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    (data / "classes.txt").write_text("raccoon\n")
    val_id = (data / "ImageSets" / "Main" / "val.txt").read_text().split()[0]
    xml = data / "Annotations" / f"{val_id}.xml"
    text = xml.read_text()
    xml.unlink()  # a symlink into the shared data: replace it, never write through it
    xml.write_text(text[: text.index("<object>")] + "</annotation>")  # the one validation image has no box
    rc = main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--workers", "0", "--epochs", "1",
               "--img-size", "64", "--max-steps", "1"])  # fmt: skip
    assert rc == 0
    assert "validation split 'val' has 1 image but no boxes" in caplog.text


def test_validation_images_the_run_trains_on_are_said(tmp_path, caplog):
    """VOC's trainval holds val: training on one and validating on the other scored the training images without a
    word, and best.pt was chosen on them."""
    from test_train import tiny_config, training_task

    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    splits = data / "ImageSets" / "Main"
    (splits / "trainval.txt").write_text((splits / "train.txt").read_text() + (splits / "val.txt").read_text())
    with caplog.at_level("WARNING", logger="efficientdet"):
        training_task(tiny_config(tmp_path, data, val_split="val"))
    assert "training split" not in caplog.text  # disjoint: nothing to say
    with caplog.at_level("WARNING", logger="efficientdet"):
        training_task(tiny_config(tmp_path, data, train_split="trainval", val_split="val"))
    assert (
        "validation split 'val' shares 1 of 1 images with the training split 'trainval': its score overstates "
        "what new images would score, and best.pt is chosen on images the model trained on"
    ) in caplog.text


def test_eval_counts_unreadable_images(tmp_path, capsys):
    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=2)
    victim = data / "JPEGImages" / f"{(data / 'ImageSets' / 'Main' / 'val.txt').read_text().split()[0]}.jpg"
    victim.unlink()  # a symlink into the shared data: replace it, never write through it
    victim.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ckpt = tmp_path / "m.pt"
    model = efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64)
    efficientdet.save_model(model, ckpt, ["raccoon"])
    report = tmp_path / "eval.json"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val", "--workers", "0",
               "--json", str(report)])  # fmt: skip
    assert rc == 0
    assert "1 of 2 images could not be read" in capsys.readouterr().err
    assert json.loads(report.read_text())["unreadable_images"] == 1


@pytest.mark.parametrize(("option", "value"), [("--batch-size", "0"), ("--img-size", "0"), ("--workers", "-1")])
def test_eval_refuses_bad_numbers(tmp_path, capsys, option, value):
    rc = main(["eval", "--checkpoint", "x.pt", "--data", str(tmp_path), option, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and f"{option} must be an integer" in err[0], err


def test_eval_box_voting_option(tmp_path, capsys):
    """``--box-voting IOU`` sets the voting threshold (``none``: off); the detections written move with it."""
    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=2)
    ckpt = tmp_path / "m.pt"
    torch.manual_seed(0)
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=128), ckpt,
                            ["raccoon"])  # fmt: skip
    boxes = {}
    for value in ("none", "0.5"):
        report = tmp_path / f"eval-{value}.json"
        rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val", "--workers", "0",
                   "--json", str(report), "--box-voting", value])  # fmt: skip
        assert rc == 0
        with open(json.loads(report.read_text())["detections"]) as f:
            boxes[value] = [d["bbox"] for d in json.load(f)]
    assert len(boxes["none"]) == len(boxes["0.5"]) and boxes["none"] != boxes["0.5"]
    capsys.readouterr()
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--box-voting", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--box-voting must be" in err[0], err


def test_train_reports_bad_data_clearly(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")])
    assert rc == 1
    assert "nowhere" in capsys.readouterr().err


def test_train_refuses_an_output_that_is_a_file_before_reading_the_data(tmp_path, capsys):
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    rc = main(["train", "--data", str(data), "--output", str(taken), "--workers", "0", "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"efficientdet train: --output {taken}: a file, not a folder"], err
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("option", ["--plots", "--json"])
def test_eval_refuses_output_paths_it_cannot_write_before_evaluating(tmp_path, capsys, option):
    """A ``--plots`` folder that is a file, or a ``--json`` file that is a folder, fails in one line before the
    evaluation runs (a traceback after minutes of evaluation before)."""
    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), ckpt,
                            ["raccoon"])  # fmt: skip
    taken = tmp_path / "taken"
    taken.write_text("mine") if option == "--plots" else taken.mkdir()
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val", "--workers", "0",
               option, str(taken)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    what = "a file, not a folder" if option == "--plots" else "a folder, not a file"
    assert rc == 2 and err == [f"efficientdet eval: {option} {taken}: {what}"], err


def test_training_detection_from_a_segmentation_checkpoint_says_so(tmp_path, capsys):
    """ "unknown model config fields: ['detection_variant', 'head_channels']" before."""
    import efficientdet

    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    seg = tmp_path / "seg.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-seg-lite0", num_classes=3), seg)
    rc = main(["train", "--data", str(data), "--checkpoint", str(seg), "--output", str(tmp_path / "run"),
               "--workers", "0", "--epochs", "1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [
        f"efficientdet train: {seg}: holds a segmentation model (efficientdet-seg-lite0), not a detection one; "
        "train it with --task segmentation"
    ], err
    assert not (tmp_path / "run").exists()


def test_eval_refuses_a_model_with_other_classes(tmp_path, capsys):
    import efficientdet

    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=2), ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val"]) == 1
    assert "2 classes" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from efficientdet.tools.demo import run_demo

    result = run_demo(str(tmp_path / "demo"), epochs=1, workers=0)
    files = set(os.listdir(tmp_path / "demo"))
    assert {"best.pt", "last.pt", "metrics.csv", "metrics.png", "predictions", "synthetic-data"} <= files
    assert len(os.listdir(tmp_path / "demo" / "predictions")) == 8
    assert set(result["metrics"]) == set(METRIC_KEYS)


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    """Kill -9 a training process repeatedly (often while it writes last.pt); the file always loads and resumes."""
    import random
    import signal
    import subprocess
    import sys
    import time

    import torch

    data = raccoon_subset(tmp_path, n_train=4, n_val=1)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "efficientdet", "train", "--data", str(data), "--val-split", "none", "--epochs", "400",
           "--batch-size", "4", "--img-size", "64", "--workers", "0", "--output", str(out)]  # fmt: skip
    rng = random.Random(0)
    epochs_seen = []
    for attempt in range(4):
        resume = [sys.executable, "-m", "efficientdet", "train", "--resume", str(out / "last.pt"), "--workers", "0"]
        run = cmd if attempt == 0 else resume
        before = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else None
        proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        # wait for this process's first write (start-up takes seconds on a loaded machine), so every attempt
        # makes progress; then every epoch rewrites last.pt, and the kill lands at a random moment
        while time.time() < deadline and (
            not (out / "last.pt").exists() or (out / "last.pt").stat().st_mtime_ns == before
        ):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(out / "last.pt", weights_only=True)  # never torn
        epochs_seen.append(state["train_state"]["epoch"])
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[-1] > epochs_seen[0], epochs_seen


def test_evaluation_is_the_same_with_loader_workers(tmp_path):
    """Worker processes return copies of the records: detections must still land on the right images."""
    import torch

    import efficientdet
    from efficientdet.data.readers import read_dataset
    from efficientdet.evaluation.validate import predict_records

    data = read_dataset(raccoon_subset(tmp_path, n_train=1, n_val=5), split="val")
    model = efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=128)
    single, _ = predict_records(model, data.records, batch_size=2, workers=0, score_threshold=0.0)
    multi, _ = predict_records(model, data.records, batch_size=2, workers=2, score_threshold=0.0)
    assert all(len(d["scores"]) > 0 for d in multi)
    for a, b in zip(single, multi):
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.equal(a["labels"], b["labels"])


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys):
    """`--resume` used to drop every flag but epochs/workers/device/...; a changed --lr or --data is now an error,
    the same value is accepted, and the flags that may change do change."""
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    out = tmp_path / "run"
    common = ["--img-size", "64", "--batch-size", "2", "--workers", "0", "--no-pretrained-backbone"]
    assert main(["train", "--data", str(data), "--val-split", "none", "--epochs", "1", "--output", str(out),
                 *common]) == 0  # fmt: skip
    capsys.readouterr()
    last = out / "last.pt"
    before = last.read_bytes()
    assert main(["train", "--resume", str(last), "--lr", "0.5", "--img-size", "96"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--img-size, --lr cannot change on --resume" in err[0] and "--epochs" in err[0], err
    assert last.read_bytes() == before
    assert main(["train", "--resume", str(last), "--data", str(data), "--epochs", "2", "--workers", "0"]) == 0
    assert len(history(out)) == 2


def test_a_moved_dataset_resumes_and_another_one_is_refused(tmp_path, capsys):
    """A run continued on another machine, or after its data moved, finds the dataset at another path: `--data`
    may change on `--resume` as long as the training images are the run's own (names, count, classes, kept in
    `last.pt`); before, any new path was refused. Other images are one line, the run untouched."""
    import shutil

    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    out = tmp_path / "run"
    common = ["--img-size", "64", "--batch-size", "2", "--workers", "0", "--no-pretrained-backbone"]
    assert main(["train", "--data", str(data), "--val-split", "none", "--epochs", "1", "--output", str(out),
                 *common]) == 0  # fmt: skip
    last = out / "last.pt"
    before = last.read_bytes()
    other = raccoon_subset(tmp_path, n_train=3, n_val=1, name="other")
    capsys.readouterr()
    assert main(["train", "--resume", str(last), "--data", str(other), "--epochs", "2"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"efficientdet train: --data {other}: not the dataset this run trained on (3 training images, the run's "
        f"2); resume with the run's data, or start a new run from its weights with --checkpoint {last}"
    ]
    assert last.read_bytes() == before
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    assert main(["train", "--resume", str(last), "--data", str(moved), "--epochs", "2"]) == 0
    assert len(history(out)) == 2


def test_without_a_val_split_train_holds_out_a_seeded_share(tmp_path, caplog):
    """`train --data DIR` on a dataset without a 'val' split used to stop with "split file not found"; it now holds
    out a seeded 10% of the training images, evaluates on them, and says so."""
    data = raccoon_subset(tmp_path, n_train=20, n_val=0)
    (data / "ImageSets" / "Main" / "val.txt").unlink()
    out = tmp_path / "run"
    caplog.set_level("INFO")
    rc = main(["train", "--data", str(data), "--epochs", "1", "--img-size", "64", "--batch-size", "6", "--workers",
               "0", "--no-pretrained-backbone", "--output", str(out)])  # fmt: skip
    assert rc == 0
    assert "holding out 2 of 20 'train' images (seed 0, --holdout-fraction 0.1)" in caplog.text
    assert history(out)[0]["AP"] != ""  # evaluated on the held-out images


def test_holdout_is_disjoint_seeded_and_needs_enough_images(tmp_path):
    from efficientdet.data.readers import has_split, read_dataset
    from efficientdet.engine.tasks.detection import MIN_HOLDOUT_IMAGES, hold_out

    data = raccoon_subset(tmp_path, n_train=30, n_val=2)
    assert has_split(data, None, "val") and not has_split(data, None, "test") and not has_split(tmp_path, None, "val")
    full = read_dataset(data, split="train")
    train, val = hold_out(full, 0.2, seed=0)
    names = lambda d: [str(r.path) for r in d.records]  # noqa: E731
    assert len(val.records) == 6 and len(train.records) == 24
    assert not set(names(train)) & set(names(val)) and sorted(names(train) + names(val)) == sorted(names(full))
    assert names(hold_out(full, 0.2, seed=0)[1]) == names(val)  # a resumed run holds out the same images
    assert names(hold_out(full, 0.2, seed=1)[1]) != names(val)
    few = read_dataset(raccoon_subset(tmp_path, n_train=MIN_HOLDOUT_IMAGES - 1, n_val=0, name="few"), split="train")
    assert hold_out(few, 0.2, seed=0) == (few, None)


def test_val_split_of_a_single_coco_file_is_an_error(tmp_path, capsys):
    """A COCO JSON file is one split: `--val-split val` used to read the same file again and report training-set AP
    as validation AP."""
    from efficientdet.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "shapes", n_train=2, n_val=1)
    train_file = next(root.rglob("*train*.json"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(train_file), "--val-split", "val", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "would evaluate on the training images" in err and not out.exists()
    flat = tmp_path / "labelimg"  # one folder of images and their XML files: one set as well
    flat.mkdir()
    (flat / "a.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax>"
                                "<ymax>9</ymax></bndbox></object></annotation>")  # fmt: skip
    Image.new("RGB", (16, 16)).save(flat / "a.jpg")
    assert main(["train", "--data", str(flat), "--val-split", "val", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{flat} is one set without named splits, so --val-split val would evaluate on the training images" in err
    assert not out.exists()


@pytest.mark.parametrize(("cpus", "expected"), [(2, 0), (4, 0), (16, 2)])
def test_workers_default_follows_the_cpu(tmp_path, monkeypatch, caplog, cpus, expected):
    """Without --workers, a CPU run of few cores loads data in the training process (worker processes there take
    cores from each step: 1.4x slower steps measured on 2 cores); the choice is stored for --resume."""
    import logging

    import torch

    import efficientdet.engine.recipe as recipe
    from efficientdet.models.weights import read_file

    monkeypatch.setattr(recipe, "available_cpus", lambda: cpus)
    assert recipe.default_workers(torch.device("cuda")) == recipe.DEFAULT_WORKERS
    data = raccoon_subset(tmp_path)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="efficientdet"):
        rc = main(["train", "--model", "efficientdet-lite0", "--data", str(data), "--val-split", "none",
                   "--epochs", "1", "--batch-size", "4", "--img-size", "64", "--output", str(out),
                   "--max-steps", "1", "--no-pretrained-backbone"])  # fmt: skip
    assert rc == 0
    assert read_file(out / "last.pt")["train_state"]["train_config"]["workers"] == expected
    assert ("data loading: in the training process" in caplog.text) == (expected == 0)


@pytest.mark.parametrize(("cpus", "expected"), [(2, 0), (16, 2)])
def test_eval_workers_default_follows_the_cpu_as_train_does(tmp_path, monkeypatch, cpus, expected):
    """Without --workers, `eval` loads images as training does: in its own process on a CPU of few cores (where
    worker processes take cores from the network), two workers elsewhere; --workers N still decides."""
    import efficientdet
    import efficientdet.engine.recipe as recipe
    import efficientdet.evaluation.validate as validate

    class Stop(Exception):
        pass

    def record(model, data, img_size, batch_size, workers, *args, **kwargs):
        seen.append(workers)
        raise Stop

    seen = []
    monkeypatch.setattr(recipe, "available_cpus", lambda: cpus)
    monkeypatch.setattr(validate, "evaluate_model", record)
    data = raccoon_subset(tmp_path, n_train=2, n_val=2)
    model = efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64)
    efficientdet.save_model(model, tmp_path / "m.pt", class_names=["raccoon"])
    base = ["eval", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(data), "--split", "val", "--device", "cpu"]
    for extra in ([], ["--workers", "1"]):
        with pytest.raises(Stop):
            main(base + extra)
    assert seen == [expected, 1]


def test_neck_flags_size_the_bifpn_and_heads_and_travel_with_the_checkpoint(tmp_path, capsys):
    """--fpn-channels / --fpn-repeats / --head-repeats build the BiFPN and heads at that size, the checkpoint keeps it
    (so eval rebuilds the same model), and what cannot work is refused by flag: a bad value, a change on --resume,
    and a size other than a --checkpoint's."""
    from efficientdet.engine.tasks.detection import TrainConfig, build_model
    from efficientdet.models.factory import load_checkpoint

    data = raccoon_subset(tmp_path)
    out = tmp_path / "run"
    base = ["train", "--data", str(data), "--val-split", "val", "--epochs", "1", "--batch-size", "4", "--img-size",
            "128", "--workers", "0", "--max-steps", "1"]  # fmt: skip
    assert main([*base, "--output", str(out), "--fpn-channels", "24", "--fpn-repeats", "2", "--head-repeats", "1"]) == 0
    model = load_checkpoint(out / "last.pt")
    config = model.config
    assert (config.fpn_channels, config.fpn_repeats, config.head_repeats) == (24, 2, 1)
    assert len(model.fpn.cells) == 2 and model.fpn.cells[0].nodes[0].conv.pointwise.out_channels == 24
    assert len(model.class_net.convs) == len(model.box_net.convs) == 1
    default = build_model(TrainConfig(model="efficientdet-lite0"), ["raccoon"])
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in default.parameters())
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(data), "--split", "val",
                 "--workers", "0"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "bad"), "--fpn-repeats", "0"]) == 1
    assert "--fpn-repeats must be at least 1" in capsys.readouterr().err
    assert main(["train", "--resume", str(out / "last.pt"), "--head-repeats", "2"]) == 1
    assert "cannot change on --resume" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "ft"), "--checkpoint", str(out / "last.pt"), "--fpn-channels",
                 "32"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "--fpn-channels" in err and "fpn_channels 24" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists() and not (tmp_path / "ft").exists()


def test_ctrl_c_stops_training_with_the_resume_command(tmp_path, capsys, monkeypatch):
    """Ctrl-C during training: no traceback but one line saying what was saved and the command that continues
    the run (exit 130, as for any command a SIGINT stops); that command finishes the run."""
    from efficientdet.engine.trainer import Trainer

    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    out = tmp_path / "run"
    real_epoch = Trainer.train_epoch
    interrupt_at_call(monkeypatch, Trainer, "train_epoch", 2)  # in the second epoch
    args = ["train", "--data", str(data), "--val-split", "none", "--epochs", "3", "--output", str(out),
            "--img-size", "64", "--batch-size", "2", "--workers", "0", "--no-pretrained-backbone"]  # fmt: skip
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    last = out / "last.pt"
    assert err == [f"efficientdet train: interrupted; {last} holds epoch 1 of 3: "
                   f"`efficientdet train --resume {last}` continues the run"]  # fmt: skip
    assert len(history(out)) == 1

    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    assert main(["train", "--resume", str(last), "--data", str(data)]) == 0
    assert len(history(out)) == 3


def test_ctrl_c_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    from efficientdet.engine.trainer import Trainer

    interrupt_at_call(monkeypatch, Trainer, "train_epoch", 1)
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--val-split", "none", "--output", str(out), "--img-size", "64",
                 "--workers", "0", "--no-pretrained-backbone"]) == 130  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["efficientdet train: interrupted before the first epoch ended; nothing was saved"]
    assert not (out / "last.pt").exists()


def test_a_second_run_without_output_does_not_replace_the_first(tmp_path, capsys, monkeypatch, caplog):
    """The default --output (runs/train) moves on to runs/train2, runs/train3 ... once it holds a run, so typing
    the same command twice keeps the first model. An explicit --output that holds a run is refused in one line,
    its files untouched (the --checkpoint it would start from included), until --exist-ok says to replace it."""
    data = raccoon_subset(tmp_path, n_train=2, n_val=1)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", str(data), "--val-split", "none", "--epochs", "1", "--img-size", "64",
            "--batch-size", "2", "--workers", "0", "--no-pretrained-backbone"]  # fmt: skip
    assert main(args) == 0
    first = (tmp_path / "runs" / "train" / "last.pt").read_bytes()
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert (tmp_path / "runs" / "train" / "last.pt").read_bytes() == first
    assert (tmp_path / "runs" / "train2" / "last.pt").is_file()
    assert "output: runs/train2 (runs/train holds an earlier run; --output chooses the folder)" in caplog.text
    capsys.readouterr()
    for extra in ([], ["--checkpoint", "runs/train/last.pt"]):
        assert main([*args, "--output", "runs/train", *extra]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [
            "efficientdet train: --output runs/train holds an earlier run (last.pt): continue it with --resume "
            "runs/train/last.pt, choose another folder, or add --exist-ok to replace it"
        ]
        assert (tmp_path / "runs" / "train" / "last.pt").read_bytes() == first
    assert main([*args, "--output", "runs/train", "--exist-ok"]) == 0
    assert (tmp_path / "runs" / "train" / "last.pt").read_bytes() != first
    assert not (tmp_path / "runs" / "train3").exists()


def test_data_identity_tells_the_runs_data_from_other_data():
    """What `--resume --data NEW` compares: the same file names in other folders are the run's data; another count,
    other classes, other names or a last.pt that kept no identity are not, each said in its own words."""
    from efficientdet.engine.trainer import data_identity, identity_mismatch

    run = data_identity(["/a/x.jpg", "/a/y.jpg"], ["cat"])
    assert identity_mismatch(run, data_identity(["/elsewhere/x.jpg", "/elsewhere/y.jpg"], ["cat"])) is None
    assert "(3 training images, the run's 2)" in identity_mismatch(run, data_identity(["x.jpg", "y.jpg", "z.jpg"],
                                                                                      ["cat"]))  # fmt: skip
    assert "(classes dog; the run's cat)" in identity_mismatch(run, data_identity(["x.jpg", "y.jpg"], ["dog"]))
    assert "other files" in identity_mismatch(run, data_identity(["x.jpg", "w.jpg"], ["cat"]))
    assert "keeps no identity" in identity_mismatch(None, run)
    assert "keeps no identity" in identity_mismatch(run, data_identity(None, ["cat"]))  # a task that cannot say


def test_a_training_split_without_boxes_is_refused_before_any_output(tmp_path, capsys):
    """A split whose every image reads as a negative (labels in the wrong place, a class-less JSON) trained for its
    whole schedule and saved a model that finds nothing; it is one line, exit 1, no run folder."""
    root = tmp_path / "empty"
    (root / "images" / "train").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(root / "images" / "train" / "a.jpg")
    (root / "data.yaml").write_text("train: images/train\nnames: [cat]\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--epochs", "1", "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"efficientdet train: {root}: the training split 'train' holds no boxes (1 image): nothing to "
                       f"learn; `efficientdet check-data --data {root}` shows what was read")  # fmt: skip
    assert not out.exists()
