"""``efficientdet predict --classes / --save-txt / --save-conf / --save-crop`` and ``Detector(classes=...)``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_detector_checkpoint
from PIL import Image

from efficientdet.cli import main
from efficientdet.data.readers import read_yolo
from efficientdet.inference import Detector
from efficientdet.inference.class_filter import UnknownClassError, resolve_classes
from efficientdet.inference.files import class_folders, crop_region, image_stems
from efficientdet.inference.predict import is_picture_source
from efficientdet.models.factory import load_checkpoint

CLASS_NAMES = ["cat", "Dog", "a/b"]  # a mixed-case name and one that is not a safe folder name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_detector_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", CLASS_NAMES)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two noise photos of different aspect ratios (losslessly saved: the crops can be compared pixel for pixel)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in {"wide.png": (96, 48), "tall.png": (40, 72)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def run(output: Path, checkpoint: Path, *sources: str | Path, extra: tuple[str, ...] = ()) -> int:
    argv = ["predict", *map(str, sources), "--checkpoint", str(checkpoint), "--output", str(output)]
    return main([*argv, "--device", "cpu", "--no-draw", *extra])


def detections(output: Path) -> list[dict]:
    return json.loads((output / "detections.json").read_text())


def non_empty(entries: list[dict]) -> list[dict]:
    """The detections a label file holds: those not clipped flat against the image border (w, h > 0)."""
    return [e for e in entries if e["bbox"][2] > 0 and e["bbox"][3] > 0]


@pytest.fixture(scope="module")
def full_run(checkpoint, images, tmp_path_factory) -> Path:
    """One unfiltered run saving everything: the reference the filtered runs are compared with."""
    output = tmp_path_factory.mktemp("full") / "out"
    assert run(output, checkpoint, images, extra=("--save-txt", "--save-conf", "--save-crop")) == 0
    assert {e["category_name"] for e in detections(output)} == set(CLASS_NAMES)  # every class has boxes
    return output


@pytest.mark.parametrize("selection", ["cat,a/b", "0,2", "CAT, 2"])
def test_classes_by_name_or_index_keep_exactly_those_detections(checkpoint, images, full_run, tmp_path, selection):
    output = tmp_path / "out"
    assert run(output, checkpoint, images, extra=("--classes", selection)) == 0
    expected = [e for e in detections(full_run) if e["category_name"] in ("cat", "a/b")]
    assert detections(output) == expected and expected


def test_unknown_class_is_a_usage_error_before_any_output(checkpoint, images, tmp_path, capsys):
    output = tmp_path / "out"
    assert run(output, checkpoint, images, extra=("--classes", "cat,cow,3")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'cow'" in err and "'3'" in err and "cat, Dog, a/b" in err
    assert not output.exists()


def test_detector_classes_filter_after_postprocessing(checkpoint, images):
    image = images / "wide.png"
    every = Detector.from_checkpoint(checkpoint, score_threshold=0.3)(image)[0]
    dogs = Detector.from_checkpoint(checkpoint, score_threshold=0.3, classes=["dog"])(image)[0]
    keep = every["labels"] == 1
    assert keep.any() and set(dogs["label_names"]) == {"Dog"}
    torch.testing.assert_close(dogs["boxes"], every["boxes"][keep])
    torch.testing.assert_close(dogs["scores"], every["scores"][keep])
    with pytest.raises(UnknownClassError, match="class 7 .*cat, Dog, a/b"):
        Detector.from_checkpoint(checkpoint, classes=[7])


def test_resolve_classes_spellings():
    assert resolve_classes("dog, 0,,DOG", CLASS_NAMES) == [1, 0]
    assert resolve_classes([np.int64(2), "A/B"], CLASS_NAMES) == [2]
    assert resolve_classes("1", ["0", "1"]) == [1]
    for bad in ("-1", "1.0", "", []):
        with pytest.raises(UnknownClassError):
            resolve_classes(bad, CLASS_NAMES)


def test_save_txt_lines_are_normalised_boxes_with_optional_scores(checkpoint, images, full_run, tmp_path):
    plain = tmp_path / "plain"
    assert run(plain, checkpoint, images, extra=("--save-txt",)) == 0  # the same batch as full_run: same boxes
    entries = non_empty([e for e in detections(full_run) if Path(e["file_name"]).name == "wide.png"])
    lines = (plain / "labels" / "wide.txt").read_text().splitlines()
    assert len(lines) == len(entries) > 0
    # by hand: the first detection's pixel box [x, y, w, h] in a 96 x 48 image
    x, y, w, h = entries[0]["bbox"]
    fields = lines[0].split()
    assert len(fields) == 5 and int(fields[0]) == CLASS_NAMES.index(entries[0]["category_name"])
    np.testing.assert_allclose([float(v) for v in fields[1:]], [(x + w / 2) / 96, (y + h / 2) / 48, w / 96, h / 48],
                               atol=1e-4)  # fmt: skip
    with_conf = (full_run / "labels" / "wide.txt").read_text().splitlines()
    assert [line.rsplit(" ", 1)[0] for line in with_conf] == lines
    np.testing.assert_allclose([float(line.split()[5]) for line in with_conf], [e["score"] for e in entries],
                               atol=1e-4)  # fmt: skip


def test_image_without_detections_gets_an_empty_label_file(checkpoint, images, tmp_path):
    output = tmp_path / "out"
    assert run(output, checkpoint, images / "tall.png", extra=("--save-txt", "--score-threshold", "1")) == 0
    assert (output / "labels" / "tall.txt").read_text() == ""


def test_label_files_read_back_as_a_yolo_dataset(checkpoint, images, full_run, tmp_path):
    """Auto-labelling: images/ + predict's labels/ (with scores) + data.yaml -> the same boxes within rounding."""
    shutil.copytree(images, tmp_path / "images")
    shutil.copytree(full_run / "labels", tmp_path / "labels")
    names = ", ".join(f"'{n}'" for n in CLASS_NAMES)
    (tmp_path / "data.yaml").write_text(f"train: images\nnames: [{names}]\n")
    data = read_yolo(tmp_path, "train")
    assert data.class_names == CLASS_NAMES
    predicted: dict[str, list[dict]] = {}
    for entry in detections(full_run):
        predicted.setdefault(Path(entry["file_name"]).name, []).append(entry)
    assert len(data.records) == 2 and data.fixes["zero_area_boxes"] == 0
    for record in data.records:
        entries = non_empty(predicted[Path(record.path).name])
        expected = [[x, y, x + w, y + h] for x, y, w, h in (e["bbox"] for e in entries)]
        np.testing.assert_allclose(record.boxes, expected, atol=0.01)
        assert [CLASS_NAMES[k] for k in record.labels] == [e["category_name"] for e in entries]
    # ... and `efficientdet train --format yolo` trains on it as it is (the score column ignored)
    out = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path), "--format", "yolo", "--model", "efficientdet-lite0", "--img-size", "128",
            "--epochs", "1", "--batch-size", "2", "--max-steps", "1", "--val-split", "none", "--amp", "off",
            "--no-pretrained-backbone", "--workers", "0", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert load_checkpoint(out / "last.pt").class_names == CLASS_NAMES


def test_save_crop_writes_each_clipped_rounded_box(checkpoint, images, full_run):
    folders = class_folders(CLASS_NAMES)
    assert folders == ["cat", "Dog", "a_b"]
    names = ["tall.png", "wide.png"]  # predict's order, in one batch: the same boxes, unrounded
    results = Detector.from_checkpoint(checkpoint, score_threshold=0.3)([images / n for n in names])
    expected = set()
    for name, det in zip(names, results):
        with Image.open(images / name) as original:
            width, height = original.size
        for k, (box, label) in enumerate(zip(det["boxes"].tolist(), det["labels"].tolist())):
            region = crop_region(box, width, height)
            path = full_run / "crops" / folders[label] / f"{Path(name).stem}_{k}.jpg"
            if region is None:
                assert not path.exists()
                continue
            with Image.open(path) as crop:
                assert crop.size == (region[2] - region[0], region[3] - region[1])
            expected.add(path)
    assert expected and set((full_run / "crops").rglob("*.jpg")) == expected


def test_crop_region_clips_rounds_and_skips_empty_boxes():
    assert crop_region([-3.2, 1.4, 10.6, 99.0], 50, 40) == (0, 1, 11, 40)
    assert crop_region([5.2, 5.0, 5.4, 9.0], 50, 40) is None  # rounds to zero width
    assert crop_region([60.0, 5.0, 70.0, 9.0], 50, 40) is None  # outside the image


def test_same_stem_inputs_get_distinct_label_and_crop_names(tmp_path):
    out = tmp_path / "out"
    stems = image_stems([out / "a.jpg", out / "a.png", out / "A_2.jpg", out / "sub" / "a.jpg"], out)
    assert stems == ["a", "a_2", "A_2_2", "sub/a"]
    assert class_folders(["..", "x", "X", ""]) == ["class_0", "x", "X_2", "class_3"]


def test_flip_tta_predicts_what_the_tta_detector_returns(checkpoint, images, full_run, tmp_path):
    """`predict --flip-tta` writes exactly what Detector(flip_tta=True) returns, which is not the plain result."""
    from efficientdet.inference import Detector

    output = tmp_path / "tta"
    assert run(output, checkpoint, images / "wide.png", extra=("--flip-tta",)) == 0
    written = detections(output)
    assert len(written) > 0
    tta = Detector(load_checkpoint(checkpoint), optimize=True, score_threshold=0.3, flip_tta=True)
    expected = tta(str(images / "wide.png"))[0]
    assert [e["score"] for e in written] == pytest.approx(expected["scores"].tolist(), abs=1e-5)
    plain = [e["score"] for e in detections(full_run) if e["file_name"] == "wide.png"]
    assert plain != pytest.approx([e["score"] for e in written], abs=1e-5)


def test_predict_names_the_nms_methods_it_knows(tmp_path):
    from efficientdet.inference.predict import predict

    with pytest.raises(ValueError, match="nms must be one of hard, soft, got 'linear'"):
        predict([str(tmp_path / "none.jpg")], torch.nn.Identity(), tmp_path / "out", nms="linear")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_predict_runs_one_image_per_forward_pass_on_a_cpu_unless_told(checkpoint, images, tmp_path, monkeypatch):
    from efficientdet.inference.detector import default_batch_size

    passes = []
    original = Detector.predict_tensor

    def recorded(self, batch, *args, **kwargs):
        passes.append(len(batch))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(Detector, "predict_tensor", recorded)
    count = len(list(images.iterdir()))
    assert run(tmp_path / "default", checkpoint, images) == 0
    assert passes == [1] * count  # the CPU default: one image at a time (faster per image there)
    passes.clear()
    assert run(tmp_path / "batched", checkpoint, images, extra=("--batch-size", "8")) == 0
    assert max(passes) > 1
    assert (default_batch_size("cpu"), default_batch_size("cuda:1")) == (1, 8)
    assert Detector(load_checkpoint(checkpoint)).batch_size == 1


def test_source_option_takes_pictures_as_ultralytics_users_type_them(
    checkpoint, images, full_run, tmp_path, monkeypatch
):
    """`--source photos/` was "no such file" (it was read as a video source only), `--source a.jpg` wrote a
    one-frame video, `--source 'photos/*.png'` found nothing: folders, image files, globs and lists of them given to
    --source are pictures, as positional sources are; a .txt file lists sources one per line (relative to the
    list's folder where not found from here), as ultralytics reads one."""
    expected = sorted((e["file_name"], e["bbox"]) for e in detections(full_run))
    for source in (images, images / "*.png"):
        output = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert run(output, checkpoint, extra=("--source", str(source))) == 0
        assert sorted((e["file_name"], e["bbox"]) for e in detections(output)) == expected
        assert not list(output.glob("*/detections.jsonl"))  # no video made of them
    listing = tmp_path / "lists" / "photos.txt"
    listing.parent.mkdir()
    shutil.copy(images / "wide.png", listing.parent / "wide.png")
    listing.write_text(f"wide.png\n\n{images / 'tall.png'}\n")
    output = tmp_path / "from_list"
    assert run(output, checkpoint, listing) == 0
    assert sorted(Path(e["file_name"]).name for e in detections(output)) == sorted(
        Path(e["file_name"]).name for e in detections(full_run)
    )
    (tmp_path / "0").mkdir()  # a folder named like camera 0: `--source 0` stays the camera
    monkeypatch.chdir(tmp_path)
    assert not is_picture_source("0") and is_picture_source("lists")
    assert not is_picture_source("rtsp://cam.local/live?channel=1")  # a stream, not a glob
    assert is_picture_source("https://example.com/bus.jpg")  # an image URL
    output = tmp_path / "one_file"
    assert run(output, checkpoint, extra=("--source", str(images / "wide.png"))) == 0
    assert {Path(e["file_name"]).name for e in detections(output)} == {"wide.png"}
    assert not list(output.glob("*/detections.jsonl"))


def test_images_that_reach_max_det_are_counted_in_the_summary(checkpoint, images, tmp_path, capsys):
    """A dense scene (a shelf, a cell smear) whose detections stop at --max-det looked complete; the summary says
    how many images reached the cap, so that a user knows more objects may be there."""
    assert run(tmp_path / "capped", checkpoint, images, extra=("--max-det", "5", "--score-threshold", "0")) == 0
    out = capsys.readouterr().out
    assert "2 images reached --max-det 5 detections (more objects may be there: raise --max-det)" in out
    assert run(tmp_path / "free", checkpoint, images) == 0
    assert "reached --max-det" not in capsys.readouterr().out
