"""``efficientdet predict``: sources in (files, folders, globs), drawn images and detections.json out."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR, SHARED, interrupt_at_call, require_shared, tiny_detector_checkpoint
from PIL import Image

from efficientdet.cli import main
from efficientdet.data.images import image_size, load_image
from efficientdet.inference import Detector
from efficientdet.inference.predict import (
    DEFAULT_MAX_PIXELS,
    SourceImage,
    expand_sources,
    output_names,
    predict,
)
from efficientdet.models.factory import load_checkpoint
from efficientdet.ops.postprocess import box_iou_one_to_many

RACCOON = SHARED / "datasets" / "raccoon" / "JPEGImages"
CLASS_NAMES = ["cat", "dog", "bird"]
ENTRY_KEYS = {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_detector_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", CLASS_NAMES)


def random_image(path: Path, size: tuple[int, int] = (96, 64), mode: str = "RGB", seed: int = 0) -> Path:
    """A noise image of ``size`` (w, h) in ``mode``, saved losslessly (PNG unless the suffix says otherwise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = 0
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        image = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_results(output: Path) -> list[dict]:
    return json.loads((output / "detections.json").read_text())


def by_image(results: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for entry in results:
        grouped.setdefault(entry["file_name"], []).append(entry)
    return grouped


@pytest.fixture(scope="module")
def raccoon_run(checkpoint, tmp_path_factory):
    """One CLI run over real photos (a file, a glob, the same file again) and a folder of PNGs."""
    require_shared(RACCOON)
    root = tmp_path_factory.mktemp("raccoon")
    folder = root / "pngs"
    for i in range(3):
        random_image(folder / f"noise{i}.png", (80 + 16 * i, 60), seed=i)
    (folder / "notes.txt").write_text("not an image: folders only give image files")
    output = root / "out"
    sources = [str(RACCOON / "raccoon-1.jpg"), str(RACCOON / "raccoon-1[0-3].jpg"), str(folder)]
    sources.append(str(RACCOON / "raccoon-10.jpg"))  # also matched by the glob: processed once
    code = main(["predict", *sources, "--checkpoint", str(checkpoint), "--output", str(output), "--device", "cpu"])
    return code, output, folder


def test_files_globs_and_folders_are_all_processed(raccoon_run, capsys):
    code, output, folder = raccoon_run
    assert code == 0
    expected = ["raccoon-1.jpg", "raccoon-10.jpg", "raccoon-11.jpg", "raccoon-12.jpg", "raccoon-13.jpg"]
    expected += ["noise0.png", "noise1.png", "noise2.png"]
    assert sorted(p.name for p in output.iterdir()) == sorted([*expected, "detections.json"])
    for name in expected:
        source = RACCOON / name if name.startswith("raccoon") else folder / name
        with Image.open(output / name) as drawn, Image.open(source) as original:
            assert drawn.size == original.size and drawn.mode == "RGB"
    results = read_results(output)
    ids = {entry["file_name"]: entry["image_id"] for entry in results}
    assert ids[(RACCOON / "raccoon-1.jpg").as_posix()] == 1  # 1-based position in the expanded list
    assert ids[(folder / "noise2.png").as_posix()] == 8


def test_summary_line_names_counts(checkpoint, tmp_path, capsys):
    image = random_image(tmp_path / "a.png")
    code, out, err = run_cli(capsys, str(image), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "o"))
    assert code == 0 and err == ""
    detections = len(read_results(tmp_path / "o"))
    assert f"predict: 1 image, {detections} detections, 0 failed" in out and " s; results in " in out


def test_detections_json_is_coco_results_equal_to_the_detector(raccoon_run, checkpoint):
    _, output, folder = raccoon_run
    results = read_results(output)
    assert results, "the test model should find something at the default threshold"
    for entry in results:
        assert set(entry) == ENTRY_KEYS
        assert isinstance(entry["image_id"], int) and isinstance(entry["category_id"], int)
        assert entry["category_name"] == CLASS_NAMES[entry["category_id"] - 1]  # category_id = label + 1
        assert len(entry["bbox"]) == 4 and entry["bbox"][2] >= 0 and entry["bbox"][3] >= 0
        assert 0.3 <= entry["score"] <= 1.0
    paths = [RACCOON / f"raccoon-{i}.jpg" for i in (1, 10, 11, 12, 13)] + sorted(folder.glob("*.png"))
    # what predict runs: the BN-folded, channels-last copy (optimize=True)
    detector = Detector(load_checkpoint(checkpoint), score_threshold=0.3, optimize=True)
    grouped = by_image(results)
    # one image per forward pass, as predict runs on a CPU by default (batches round differently: 1e-6 apart)
    for path, det in zip(paths, [detector(str(p))[0] for p in paths]):
        entries = grouped.get(path.as_posix(), [])
        assert len(entries) == len(det["scores"])
        if not entries:
            continue
        xywh = np.array([e["bbox"] for e in entries])
        boxes = det["boxes"].numpy()
        np.testing.assert_allclose(xywh[:, :2], boxes[:, :2], atol=0.006)
        np.testing.assert_allclose(xywh[:, :2] + xywh[:, 2:], boxes[:, 2:], atol=0.011)
        np.testing.assert_allclose([e["score"] for e in entries], det["scores"].numpy(), rtol=1e-6)
        assert [e["category_name"] for e in entries] == det["label_names"]


def test_drawn_images_differ_from_the_input_only_where_boxes_are(raccoon_run, checkpoint, tmp_path, capsys):
    _, output, folder = raccoon_run
    grouped = by_image(read_results(output))
    # a real photo (re-encoded as JPEG): the box edges carry the class colour, far from the photo's pixels
    photo = RACCOON / "raccoon-1.jpg"
    # the random model's best box with an edge to look at (some of its boxes are clipped flat at the border)
    best = max((e for e in grouped[photo.as_posix()] if min(e["bbox"][2:]) >= 8), key=lambda e: e["score"])
    x, y, w, h = (round(v) for v in best["bbox"])
    drawn, original = load_image(output / photo.name).astype(int), load_image(photo).astype(int)
    edge = slice(y + h // 4, y + 3 * h // 4), slice(max(x, 1), max(x, 1) + 2)
    assert np.abs(drawn[edge] - original[edge]).mean() > 40
    # a lossless input: changed where boxes were drawn, unchanged when there is nothing to draw
    noise = folder / "noise0.png"
    assert grouped[noise.as_posix()]
    assert not np.array_equal(load_image(output / noise.name), load_image(noise))
    code, _, _ = run_cli(capsys, str(noise), "--checkpoint", str(checkpoint), "--output", str(tmp_path),
                         "--score-threshold", "1.0")  # fmt: skip
    assert code == 0 and read_results(tmp_path) == []
    np.testing.assert_array_equal(load_image(tmp_path / noise.name), load_image(noise))


def test_unreadable_files_are_reported_by_name_and_skipped(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    good = random_image(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    whole = random_image(tmp_path / "whole.png", (200, 150)).read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    output = tmp_path / "out"
    code, out, err = run_cli(capsys, str(folder), str(tmp_path / "missing.jpg"), str(tmp_path / "none-*.jpg"),
                             "--checkpoint", str(checkpoint), "--output", str(output))  # fmt: skip
    assert code == 1
    for name in ("broken.jpg", "truncated.png"):
        assert f"{folder / name}: cannot read image" in err
    assert f"{tmp_path / 'missing.jpg'}: no such file or folder" in err
    assert f"{tmp_path / 'none-*.jpg'}: matches nothing" in err
    assert "predict: 1 image," in out and "4 failed" in out
    assert (output / "good.png").is_file() and not (output / "broken.jpg").exists()
    assert {e["file_name"] for e in read_results(output)} == {good.as_posix()}


def test_when_no_source_can_be_read_nothing_is_written(checkpoint, tmp_path, capsys):
    """Every source missing or empty is bad input, not a run with failures: each named once, exit 1, and no output
    folder with an empty detections.json left behind."""
    empty = tmp_path / "empty"
    empty.mkdir()
    output = tmp_path / "out"
    code, out, err = run_cli(capsys, str(tmp_path / "missing.jpg"), str(empty), "--checkpoint", str(checkpoint),
                             "--output", str(output))  # fmt: skip
    assert code == 1
    assert f"{tmp_path / 'missing.jpg'}: no such file or folder" in err and f"{empty}: no images" in err
    assert out.strip() == "predict: no source could be read (2 sources failed); nothing written"
    assert not output.exists()
    # found, but not one could be decoded (or each was over --max-pixels): the same, not an empty detections.json
    (tmp_path / "broken.jpg").write_bytes(b"this is not a JPEG")
    large = random_image(tmp_path / "large.png", (200, 150))
    code, out, err = run_cli(capsys, str(tmp_path / "broken.jpg"), str(large), "--checkpoint", str(checkpoint),
                             "--output", str(output), "--max-pixels", "1000")  # fmt: skip
    assert code == 1 and "broken.jpg: cannot read image" in err and "over the limit of 1,000" in err
    assert out.strip() == "predict: no source could be read (2 sources failed); nothing written"
    assert not output.exists()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_pixel_mode_works(checkpoint, tmp_path, mode):
    image = random_image(tmp_path / ("in.jpg" if mode == "CMYK" else "in.png"), (70, 50), mode)
    summary = predict([image], checkpoint, tmp_path / "out", device="cpu", score_threshold=0.0, errors=False)
    assert summary.exit_code == 0 and summary.images == 1 and summary.detections > 0
    with Image.open(tmp_path / "out" / image.name) as drawn:
        assert drawn.mode == "RGB" and drawn.size == (70, 50)


def test_one_pixel_image(checkpoint, tmp_path):
    image = random_image(tmp_path / "dot.png", (1, 1))
    summary = predict([image], checkpoint, tmp_path / "out", device="cpu", score_threshold=0.0, errors=False)
    assert summary.exit_code == 0 and summary.detections > 0
    for entry in read_results(tmp_path / "out"):
        x, y, w, h = entry["bbox"]
        assert 0 <= x <= x + w <= 1 and 0 <= y <= y + h <= 1  # clipped to the image
    with Image.open(tmp_path / "out" / "dot.png") as drawn:
        assert drawn.size == (1, 1)


def test_ten_thousand_pixel_square_image(checkpoint, tmp_path):
    """100 million pixels: above Pillow's bomb *warning* level; must run without it, and with sane memory."""
    path = tmp_path / "big.png"
    Image.new("RGB", (10_000, 10_000), (40, 90, 160)).save(path, compress_level=1)
    saved_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        summary = predict([path], checkpoint, tmp_path / "out", device="cpu", score_threshold=0.0, max_det=5)
    assert summary.exit_code == 0 and summary.images == 1 and summary.detections == 5
    assert saved_limit == Image.MAX_IMAGE_PIXELS  # the run's own limit does not leak out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our reading is done, Pillow's limit is back
        assert image_size(tmp_path / "out" / "big.png") == (10_000, 10_000)


def test_max_pixels_refuses_larger_images_by_name_before_decoding(checkpoint, tmp_path):
    small, large = random_image(tmp_path / "small.png", (50, 50)), random_image(tmp_path / "large.png", (100, 100))
    errors = io.StringIO()
    summary = predict([small, large], checkpoint, tmp_path / "out", device="cpu", max_pixels=5000, errors=errors)
    assert summary.images == 1 and summary.exit_code == 1
    assert f"{large}: cannot read image (100x100 = 10,000 pixels is over the limit of 5,000" in errors.getvalue()
    assert DEFAULT_MAX_PIXELS > 10_000 * 10_000


def test_score_threshold_filters(checkpoint, tmp_path):
    images = [random_image(tmp_path / f"in/{i}.png", seed=i) for i in range(3)]
    low = predict(images, checkpoint, tmp_path / "low", device="cpu", score_threshold=0.3, draw=False, errors=False)
    high = predict(images, checkpoint, tmp_path / "high", device="cpu", score_threshold=0.6, draw=False, errors=False)
    low_results, high_results = read_results(tmp_path / "low"), read_results(tmp_path / "high")
    assert 0 < high.detections < low.detections
    assert all(e["score"] >= 0.6 for e in high_results)
    # hard NMS never lets a lower score suppress a higher one: the high run is exactly the top of the low run (the
    # scores up to float rounding: torch's vectorised sigmoid rounds the last bit by position in its input, and the
    # two thresholds leave different numbers of candidates)
    top_of_low = [e for e in low_results if e["score"] >= 0.6]
    assert [{**e, "score": None} for e in high_results] == [{**e, "score": None} for e in top_of_low]
    np.testing.assert_allclose([e["score"] for e in high_results], [e["score"] for e in top_of_low], rtol=1e-6)
    assert not (tmp_path / "low" / "0.png").exists()  # draw=False: only detections.json


def same_class_overlap(entries: list[dict], width: int = 96, height: int = 64) -> float:
    """The largest IoU between two boxes of the same class (hard NMS keeps it at or below its threshold).

    Only boxes inside the image count: NMS runs before boxes are clipped to the image, and clipping two boxes that
    stick out on the same side can make them overlap much more than they did.
    """
    boxes = torch.tensor([e["bbox"] for e in entries])
    boxes[:, 2:] += boxes[:, :2]
    inside = (boxes[:, :2] > 0.01).all(1) & (boxes[:, 2] < width - 0.01) & (boxes[:, 3] < height - 0.01)
    boxes, entries = boxes[inside], [e for e, keep in zip(entries, inside) if keep]
    labels = torch.tensor([e["category_id"] for e in entries])
    worst = 0.0
    for i in range(1, len(boxes)):
        same = labels[:i] == labels[i]
        if same.any():
            worst = max(worst, float(box_iou_one_to_many(boxes[i], boxes[:i][same]).nan_to_num().max()))
    return worst


def test_soft_and_hard_nms(checkpoint, tmp_path, capsys):
    images = [str(random_image(tmp_path / f"in/{i}.png", seed=i)) for i in range(2)]
    runs = {}
    for method in ("hard", "soft"):
        out = tmp_path / method
        code, _, _ = run_cli(capsys, *images, "--checkpoint", str(checkpoint), "--output", str(out),
                             "--nms", method, "--score-threshold", "0.05", "--max-det", "1000")  # fmt: skip
        assert code == 0
        runs[method] = by_image(read_results(out))
    for image in images:
        hard, soft = runs["hard"][Path(image).as_posix()], runs["soft"][Path(image).as_posix()]
        assert max(e["score"] for e in soft) == pytest.approx(max(e["score"] for e in hard))
        assert all(e["score"] >= 0.05 for e in soft)
        assert same_class_overlap(hard) <= 0.5 + 1e-3
        assert same_class_overlap(soft) > 0.5  # overlapping boxes are down-weighted, not removed


def test_box_voting_moves_boxes_and_keeps_scores(checkpoint, tmp_path, capsys):
    images = [str(random_image(tmp_path / f"in/{i}.png", seed=i)) for i in range(2)]
    runs = {}
    for name, extra in (("plain", ()), ("voted", ("--box-voting", "0.5"))):
        out = tmp_path / name
        code, _, _ = run_cli(capsys, *images, "--checkpoint", str(checkpoint), "--output", str(out),
                             "--score-threshold", "0.05", *extra)  # fmt: skip
        assert code == 0
        runs[name] = read_results(out)
    plain, voted = runs["plain"], runs["voted"]
    assert [e["score"] for e in plain] == [e["score"] for e in voted]
    assert [e["bbox"] for e in plain] != [e["bbox"] for e in voted]
    code, _, err = run_cli(capsys, images[0], "--checkpoint", str(checkpoint), "--output", str(tmp_path / "x"),
                           "--box-voting", "0")  # fmt: skip
    assert code == 1 and "--box-voting" in err and not (tmp_path / "x").exists()


def test_class_agnostic_nms_lets_classes_suppress_each_other(checkpoint, tmp_path):
    images = [random_image(tmp_path / f"in/{i}.png", seed=i) for i in range(2)]
    for agnostic in (False, True):
        out = tmp_path / str(agnostic)
        predict(images, checkpoint, out, device="cpu", class_agnostic=agnostic, draw=False, errors=False)
        for entries in by_image(read_results(out)).values():
            for entry in entries:
                entry["category_id"] = 0  # every pair of boxes, whatever their classes
            assert (same_class_overlap(entries) <= 0.5 + 1e-3) == agnostic


def test_output_names_never_collide_nor_overwrite_inputs(tmp_path):
    a1, a2 = random_image(tmp_path / "x" / "a.png"), random_image(tmp_path / "y" / "a.png", seed=1)
    b = random_image(tmp_path / "x" / "sub" / "b.png")
    upper = random_image(tmp_path / "z" / "A.PNG")
    found, errors = expand_sources([tmp_path / "x", tmp_path / "y", tmp_path / "z", tmp_path / "x" / "a.png"])
    assert errors == [] and [s.path for s in found] == [a1, a2, upper]  # no subfolders without --recursive
    names = [p.relative_to(tmp_path / "out").as_posix() for p in output_names(found, tmp_path / "out")]
    assert names == ["a.png", "a_2.png", "A_3.PNG"]  # case-insensitive file systems keep them apart too
    found, _ = expand_sources([tmp_path / "x"], recursive=True)
    assert [s.name for s in found] == ["a.png", "sub/b.png"] and found[1].path == b
    found, _ = expand_sources([str(tmp_path / "*" / "a.png")])
    assert [s.name for s in found] == ["x/a.png", "y/a.png"]  # relative to the glob's fixed part
    # writing next to the inputs: new names, the inputs stay
    found, _ = expand_sources([tmp_path / "x"], recursive=True)
    assert output_names(found, tmp_path / "x") == [tmp_path / "x" / "a_2.png", tmp_path / "x" / "sub" / "b_2.png"]
    assert output_names([SourceImage(tmp_path / "f.dat", "f.dat")], tmp_path) == [tmp_path / "f.dat.png"]


def test_output_in_the_input_folder_keeps_the_inputs(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    images = [random_image(folder / f"{i}.png", seed=i) for i in range(2)]
    before = [p.read_bytes() for p in images]
    code, _, _ = run_cli(capsys, str(folder), "--checkpoint", str(checkpoint), "--output", str(folder))
    assert code == 0 and [p.read_bytes() for p in images] == before
    assert (folder / "0_2.png").is_file() and (folder / "1_2.png").is_file()
    # an output folder inside the input folder is not read back as input on the next run
    code, out, _ = run_cli(capsys, str(folder), "--recursive", "--checkpoint", str(checkpoint),
                           "--output", str(folder / "drawn"))  # fmt: skip
    assert code == 0 and "4 images" in out  # 0.png, 1.png and the two drawn by the first run
    code, out, _ = run_cli(capsys, str(folder), "--recursive", "--checkpoint", str(checkpoint),
                           "--output", str(folder / "drawn"))  # fmt: skip
    assert code == 0 and "4 images" in out


def test_bad_checkpoint_and_bad_options(tmp_path, capsys):
    image = random_image(tmp_path / "a.png")
    code, _, err = run_cli(capsys, str(image), "--checkpoint", str(tmp_path / "nope.pt"))
    assert code == 1 and "nope.pt" in err
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--checkpoint", "x.pt", "--score-threshold", "2"])
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--checkpoint", "x.pt", "--nms", "fast"])


def test_effdet_release_file_with_model_name(tmp_path, capsys):
    ckpt = require_shared(PARITY_DIR / "tf_efficientdet_lite0_128.pt")
    image = shutil.copy(require_shared(RACCOON / "raccoon-2.jpg"), tmp_path / "r.jpg")
    code, out, err = run_cli(capsys, str(image), "--checkpoint", str(ckpt), "--model", "efficientdet-lite0",
                             "--img-size", "128", "--output", str(tmp_path / "out"), "--score-threshold", "0.0",
                             "--max-det", "3", "--batch-size", "1")  # fmt: skip
    assert code == 0, err
    results = read_results(tmp_path / "out")
    assert len(results) == 3 and all(1 <= e["category_id"] <= 90 for e in results)


def test_ctrl_c_keeps_what_was_done_and_says_what_was_not(checkpoint, tmp_path, capsys, monkeypatch):
    """Ctrl-C in a long folder run: the images done so far keep their drawings and their detections.json
    entries, the summary says how many were not processed, and the exit code is 130 (a SIGINT's)."""
    folder = tmp_path / "photos"
    for i in range(4):
        random_image(folder / f"p{i}.png", seed=i)
    interrupt_at_call(monkeypatch, Detector, "predict_tensor", 3)  # the third batch of one image
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, str(folder), "--checkpoint", str(checkpoint), "--output", str(out),
                              "--batch-size", "1")  # fmt: skip
    assert code == 130
    assert "predict: 2 images," in stdout and "(stopped by Ctrl-C: 2 images not processed)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "p0.png", "p1.png"]
    assert {Path(e["file_name"]).name for e in read_results(out)} <= {"p0.png", "p1.png"}
    assert read_results(out)  # the tiny model finds boxes in noise


def test_without_output_a_second_run_gets_its_own_folder(checkpoint, tmp_path, capsys, monkeypatch):
    """runs/predict, then runs/predict2 ...: two runs typed alike neither mix their files nor replace the first
    run's detections.json; an explicit --output is used as given."""
    image = random_image(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    for folder in ("runs/predict", "runs/predict2"):
        code, out, _ = run_cli(capsys, str(image), "--checkpoint", str(checkpoint))
        assert code == 0 and f"results in {folder}" in out
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["a.png", "detections.json"]
    code, out, _ = run_cli(capsys, str(image), "--checkpoint", str(checkpoint), "--output", "runs/predict")
    assert code == 0 and "results in runs/predict" in out and not (tmp_path / "runs" / "predict3").exists()
