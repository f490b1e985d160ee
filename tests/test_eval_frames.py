"""Evaluation on images whose annotations are not in the decoded image's pixels: an annotated size that differs
from the file, EXIF-rotated photos, resizes whose output size is rounded, and large photos decoded at a reduced
scale (in training, evaluation and, the same way, ``Detector`` and ``predict``).

Each case runs a dataset on disk through the reader, the data loader, a model and pycocotools (``validate``, what
``efficientdet eval`` runs). The model is an oracle that outputs, for the one image it is given, a box placed by
hand in input pixels: where the object really is on the resized picture. A right evaluation scores it AP 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED, require_shared, spy_decodes
from PIL import Image

from efficientdet.data.dataset import DetectionDataset
from efficientdet.data.frames import orient_boxes, resolve_frame
from efficientdet.data.images import load_image
from efficientdet.data.readers import read_dataset
from efficientdet.data.records import DetectionData, ImageRecord
from efficientdet.data.transforms import eval_transform
from efficientdet.evaluation.validate import detections_to_keep, evaluate_model, validate
from efficientdet.inference import Detector
from efficientdet.models.config import get_config
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.labeler import AnchorLabeler
from efficientdet.ops.postprocess import decode_boxes, to_original_pixels

SIZE = 64  # model input: tiny, so the anchors and the network outputs are small


class OracleModel(torch.nn.Module):
    """Outputs that decode to ``boxes`` (input pixels) with score ~1, whatever the image (batch of one)."""

    def __init__(self, boxes: list[list[float]], labels: list[int], num_classes: int = 1) -> None:
        super().__init__()
        self.size = SIZE
        self.config = get_config("efficientdet-lite0", num_classes=num_classes, image_size=SIZE)
        anchors = anchors_for_config(self.config, (SIZE, SIZE))
        cls, box, _ = AnchorLabeler(anchors).label_image(torch.tensor(boxes), torch.tensor(labels))
        logits = torch.full((len(anchors), num_classes), -20.0)
        positive = cls >= 0
        logits[positive, cls[positive]] = 20.0
        self.cls_flat, self.box_flat = logits, box

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        assert images.shape[0] == 1 and tuple(images.shape[-2:]) == (self.size, self.size)
        cls_out, box_out, start = [], [], 0
        for level in range(self.config.min_level, self.config.max_level + 1):
            side = -(-self.size // 2**level)
            n = side * side * self.config.num_anchors
            cls = self.cls_flat[start : start + n].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            box = self.box_flat[start : start + n].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            cls_out.append(cls.contiguous())
            box_out.append(box.contiguous())
            start += n
        return cls_out, box_out


class AnchorOracle(OracleModel):
    """Scores the ``chosen`` anchors ~1 with zero box codes, so that each decodes to its anchor: ``boxes``."""

    def __init__(self, chosen: list[int], size: int) -> None:
        torch.nn.Module.__init__(self)
        self.size = size
        self.config = get_config("efficientdet-lite0", num_classes=1, image_size=size)
        anchors = anchors_for_config(self.config, (size, size))
        self.boxes = decode_boxes(torch.zeros(len(chosen), 4), anchors[chosen]).clamp(0, size)
        self.cls_flat = torch.full((len(anchors), 1), -20.0)
        self.cls_flat[chosen] = 20.0
        self.box_flat = torch.zeros(len(anchors), 4)


def write_voc(root, image: Image.Image, annotated_size: tuple[int, int], box: list[float], exif: bytes = b"") -> None:
    """One-image VOC dataset (split ``val``); ``box`` is x1y1x2y2 0-based, written 1-based as VOC does."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    image.save(root / "JPEGImages" / "a.jpg", quality=95, exif=exif)
    x1, y1, x2, y2 = box
    (root / "Annotations" / "a.xml").write_text(
        f"<annotation><size><width>{annotated_size[0]}</width><height>{annotated_size[1]}</height></size>"
        f"<object><name>thing</name><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax>"
        f"<ymax>{y2}</ymax></bndbox></object></annotation>"
    )
    (root / "ImageSets" / "Main" / "val.txt").write_text("a\n")


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_annotated_size_differs_from_file(tmp_path):
    """A 100x50 file whose XML says 200x100 (the dataset was downscaled after labelling). The object covers
    x 20..80, y 10..40 of the file; at 64 px input (scale 0.64) that is x 12.8..51.2, y 6.4..25.6."""
    write_voc(tmp_path, Image.new("RGB", (100, 50), (90, 90, 90)), (200, 100), [40, 20, 160, 80])
    data = read_dataset(tmp_path, "voc", "val")
    model = OracleModel([[12.8, 6.4, 51.2, 25.6]], [0])
    result = evaluate_model(model, data, SIZE, batch_size=1)
    assert result.metrics["AP"] == pytest.approx(1.0)
    # detections come back in the annotation's pixels (the 200x100 frame), as written in the XML
    assert result.detections[0]["boxes"][0].tolist() == pytest.approx([40, 20, 160, 80], abs=0.05)
    # training sees the same object at the same place on the input
    sample = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1))[0]
    assert len(sample.data.boxes) == 1
    assert sample.data.boxes[0].tolist() == pytest.approx([12.8, 6.4, 51.2, 25.6], abs=1e-4)


def test_exif_rotated_photo_annotated_on_stored_pixels(tmp_path):
    """A photo stored 100x50 with EXIF orientation 6 (turn clockwise): upright it is 50x100. The XML says 100x50
    and the box x 10..40, y 5..20 is on the stored pixels. Turned clockwise (x' = 50 - y, y' = x) the object is
    at x 30..45, y 10..40 upright; at 64 px input (scale 0.64): x 19.2..28.8, y 6.4..25.6."""
    write_voc(tmp_path, Image.new("RGB", (100, 50), (90, 90, 90)), (100, 50), [10, 5, 40, 20], exif_orientation(6))
    data = read_dataset(tmp_path, "voc", "val")
    expected_input = [19.2, 6.4, 28.8, 25.6]
    sample = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1))[0]
    assert tuple(sample.data.image.shape[-2:]) == (SIZE, SIZE)
    assert sample.data.boxes[0].tolist() == pytest.approx(expected_input, abs=1e-4)  # a turn, not a stretch
    train_sample = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1), train=True, scale_range=(1, 1),
                                    hflip=0.0)[0]  # fmt: skip
    assert train_sample.data.boxes[0].tolist() == pytest.approx(expected_input, abs=1e-4)
    model = OracleModel([expected_input], [0])
    metrics = validate(model, data, SIZE, batch_size=1)
    assert metrics["AP"] == pytest.approx(1.0)


def test_exif_rotated_photo_annotated_upright(tmp_path):
    """The same photo labelled by a tool that shows it upright: the XML says 50x100 and the box is upright."""
    write_voc(tmp_path, Image.new("RGB", (100, 50), (90, 90, 90)), (50, 100), [30, 10, 45, 40], exif_orientation(6))
    data = read_dataset(tmp_path, "voc", "val")
    metrics = validate(OracleModel([[19.2, 6.4, 28.8, 25.6]], [0]), data, SIZE, batch_size=1)
    assert metrics["AP"] == pytest.approx(1.0)


def test_rounded_resize_is_undone_exactly(tmp_path):
    """A 1000x3 strip at 64 px: the nominal scale is 0.064 but the strip becomes 64x1 pixels (0.333 along y).
    Boxes go to the input and back with the exact per-axis ratios, in the transform and in evaluation."""
    out = eval_transform(np.zeros((3, 1000, 3), np.uint8), SIZE, (0, 0, 0), (1, 1, 1), np.array([[0, 0, 500, 1.5]]))
    assert out.scale_xy == pytest.approx((0.064, 1 / 3))
    assert out.boxes[0].tolist() == pytest.approx([0, 0, 32, 0.5])
    back = to_original_pixels(out.boxes, out.scale_xy, (3, 1000))
    assert back[0].tolist() == pytest.approx([0, 0, 500, 1.5])

    Image.new("RGB", (1000, 3)).save(tmp_path / "strip.png")
    coco = {
        "images": [{"id": 1, "file_name": "strip.png", "width": 1000, "height": 3}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 500, 1.5]}],
    }
    (tmp_path / "val.json").write_text(json.dumps(coco))
    data = read_dataset(tmp_path / "val.json")
    result = evaluate_model(OracleModel([[0, 0, 32, 0.5]], [0]), data, SIZE, batch_size=1)
    assert result.detections[0]["boxes"][0].tolist() == pytest.approx([0, 0, 500, 1.5], abs=1e-3)
    assert result.metrics["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_boxes_moves_boxes_with_pixels(tmp_path, orientation):
    """Each EXIF orientation moves a box as Pillow's exif_transpose moves the pixels under it, and the frame's
    inverse brings detections back onto the stored pixels."""
    from efficientdet.data.images import load_image_oriented

    stored = np.zeros((30, 50, 3), np.uint8)
    stored[4:10, 7:20] = 255  # a bright block: x 7..20, y 4..10
    Image.fromarray(stored).save(tmp_path / "o.png", exif=exif_orientation(orientation))
    upright, applied = load_image_oriented(tmp_path / "o.png")
    assert applied == orientation
    ys, xs = np.nonzero(upright[:, :, 0] > 128)
    block = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert orient_boxes(np.array([[7, 4, 20, 10]]), orientation, 50, 30)[0].tolist() == block
    frame = resolve_frame((50, 30), (upright.shape[1], upright.shape[0]), orientation)
    moved = frame.to_image(np.array([[7, 4, 20, 10]], np.float32))
    if orientation in (5, 6, 7, 8):  # annotated on the stored 50x30 pixels of a 30x50 upright picture: turned
        assert moved[0].tolist() == block
    assert frame.to_annotation(moved)[0].tolist() == pytest.approx([7, 4, 20, 10])


def test_large_photo_decoded_reduced_for_training_and_evaluation_keeps_boxes_exact(tmp_path):
    """A 640x320 JPEG trained at 64 px is decoded at 1/8 (80x40): it only has to cover 64x32. The object at x
    200..600, y 100..300 of the file is at x 20..60, y 10..30 on the input (scale 0.1). Evaluation decodes at 1/8
    too (as ``predict`` does for the network) and finds it there, detections coming back in the file's pixels;
    ``reduced_decoding=False`` decodes in full."""
    pixels = np.random.default_rng(0).integers(0, 255, (320, 640, 3), dtype=np.uint8)
    write_voc(tmp_path, Image.fromarray(pixels), (640, 320), [200, 100, 600, 300])
    data = read_dataset(tmp_path, "voc", "val")
    expected_input = [20, 10, 60, 30]
    train = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1), train=True, scale_range=(1, 1), hflip=0.0)
    assert (train[0].frame.image_width, train[0].frame.image_height) == (80, 40)  # decoded at 1/8
    assert train[0].data.boxes[0].tolist() == pytest.approx(expected_input, abs=1e-4)
    # scale jitter up to 1.5: the decoding must cover 96x48, so 1/4 (160x80)
    jittered = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1), train=True, scale_range=(0.5, 1.5))
    assert jittered[0].frame.image_width == 160
    evaluated = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1))[0]
    assert (evaluated.frame.image_width, evaluated.frame.image_height) == (80, 40)  # decoded at 1/8
    assert evaluated.data.boxes[0].tolist() == pytest.approx(expected_input, abs=1e-4)
    full = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1), reduced_decoding=False)[0]
    assert full.frame.image_width == 640
    assert full.data.boxes[0].tolist() == pytest.approx(expected_input, abs=1e-4)
    result = evaluate_model(OracleModel([expected_input], [0]), data, SIZE, batch_size=1)
    assert result.metrics["AP"] == pytest.approx(1.0)
    assert result.detections[0]["boxes"][0].tolist() == pytest.approx([200, 100, 600, 300], abs=0.05)


def test_large_exif_turned_photo_decoded_reduced_for_training_keeps_boxes_exact(tmp_path):
    """Stored 640x320 with orientation 6 (upright 320x640), boxes drawn on the stored pixels: x 100..400, y 50..200
    turns to x 120..270, y 100..400 upright (x' = 320 - y, y' = x), at 64 px input (scale 0.1) x 12..27, y 10..40.
    Decoded at 1/8 for training (40x80 upright), the turn and the reduction compose."""
    pixels = np.random.default_rng(1).integers(0, 255, (320, 640, 3), dtype=np.uint8)
    write_voc(tmp_path, Image.fromarray(pixels), (640, 320), [100, 50, 400, 200], exif_orientation(6))
    data = read_dataset(tmp_path, "voc", "val")
    train = DetectionDataset(data.records, SIZE, (0, 0, 0), (1, 1, 1), train=True, scale_range=(1, 1), hflip=0.0)
    assert (train[0].frame.image_width, train[0].frame.image_height) == (40, 80)
    assert train[0].data.boxes[0].tolist() == pytest.approx([12, 10, 27, 40], abs=1e-4)


def test_reduced_decoding_feeds_the_network_nearly_the_same_pixels(tmp_path):
    """A raccoon photo enlarged to 2600x1668 and saved as a JPEG: the 448 px training input from its 1/4 decoding
    (650x417 covers 448x287) differs from the one decoded in full by a fraction of a grey level on average."""
    source = require_shared(SHARED / "datasets" / "raccoon" / "JPEGImages" / "raccoon-1.jpg")
    with Image.open(source) as img:
        img.convert("RGB").resize((2600, 1668), Image.BICUBIC).save(tmp_path / "big.jpg", quality=92)
    records = [ImageRecord(str(tmp_path / "big.jpg"), 1, 2600, 1668)]
    kwargs = {"train": True, "scale_range": (1, 1), "hflip": 0.0}
    reduced = DetectionDataset(records, 448, (0, 0, 0), (1, 1, 1), **kwargs)[0]
    full = DetectionDataset(records, 448, (0, 0, 0), (1, 1, 1), reduced_decoding=False, **kwargs)[0]
    assert reduced.frame.image_width == 650 and full.frame.image_width == 2600
    difference = (reduced.data.image - full.data.image).abs()
    assert float(difference.mean()) < 1 and float(difference.quantile(0.99)) <= 4  # measured: 0.2 and 1


def test_detector_decodes_a_large_photo_file_reduced_and_answers_in_its_pixels(tmp_path, monkeypatch):
    """``Detector(path)`` runs the network on the 1/8 decoding of a 640x320 JPEG (all a 64 px input needs) and gives
    the box in the file's full-resolution pixels, as for the same picture passed fully decoded."""
    import efficientdet.inference.detector as detector_module

    pixels = np.random.default_rng(2).integers(0, 255, (320, 640, 3), dtype=np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    reductions = spy_decodes(monkeypatch, detector_module)
    detector = Detector(OracleModel([[20, 10, 60, 30]], [0]), image_size=SIZE, score_threshold=0.5)
    from_file = detector(str(path))[0]
    from_array = detector(load_image(path))[0]
    assert reductions == [8]
    assert from_file["boxes"][0].tolist() == pytest.approx([200, 100, 600, 300], abs=0.05)
    assert from_array["boxes"][0].tolist() == pytest.approx([200, 100, 600, 300], abs=0.05)


@pytest.mark.parametrize("draw", [True, False])
def test_predict_runs_the_network_on_the_reduced_decoding_and_draws_in_full(tmp_path, monkeypatch, draw):
    """``predict`` feeds the network what ``eval`` scores (the 1/8 decoding of a 640x320 JPEG at 64 px), so its
    detections are the same with and without drawing; the drawn copy is the full picture, decoded a second time
    only because it is drawn on."""
    import efficientdet.data.images as images_module
    import efficientdet.inference.detector as detector_module
    import efficientdet.inference.predict as predict_module

    pixels = np.random.default_rng(3).integers(0, 255, (320, 640, 3), dtype=np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    network_decodes = spy_decodes(monkeypatch, detector_module)  # Detector.decode
    full_decodes = spy_decodes(monkeypatch, images_module)  # full_picture, to draw on
    model = OracleModel([[20, 10, 60, 30]], [0])
    model.class_names = ["thing"]
    out = tmp_path / "out"
    summary = predict_module.predict([path], model, out, image_size=SIZE, device="cpu", draw=draw, optimize=False,
                                     save_txt=True)  # fmt: skip
    assert summary.exit_code == 0 and summary.detections == 1
    assert network_decodes == [8] and full_decodes == ([1] if draw else [])
    entry = json.loads((out / "detections.json").read_text())[0]
    assert entry["bbox"] == pytest.approx([200, 100, 400, 200], abs=0.05)  # x, y, w, h in the file's pixels
    cx, cy, w, h = map(float, (out / "labels" / "big.txt").read_text().split()[1:])
    assert [cx, cy, w, h] == pytest.approx([400 / 640, 200 / 320, 400 / 640, 200 / 320], abs=1e-4)
    if draw:
        with Image.open(out / "big.jpg") as drawn:
            assert drawn.size == (640, 320)
    else:
        assert not (out / "big.jpg").exists()


def test_an_image_with_more_objects_than_cocos_100_detections_is_scored_at_a_higher_cap(tmp_path):
    """COCO's evaluation keeps 100 detections an image. A dataset whose images hold more objects (cells, shelves,
    crowds) was scored with recall capped at 100 / objects and no word why: a perfect model scored AP 0.66 on an
    image of 150 objects. The cap follows the split's densest image (300, 1000 or 3000), 100 as COCO's otherwise."""
    size = 256
    level3 = [(y * 32 + x) * 9 for y in range(0, 32, 2) for x in range(0, 32, 2)][:150]  # 16 px apart: no NMS
    model = AnchorOracle(level3, size)
    Image.new("RGB", (size, size), (90, 90, 90)).save(tmp_path / "shelf.png")
    record = ImageRecord(str(tmp_path / "shelf.png"), 1, size, size, model.boxes.numpy(), np.zeros(150, np.int64))
    data = DetectionData([record], ["item"], "coco")
    assert detections_to_keep(data.records) == 300 and detections_to_keep(data.records[:0]) == 100
    result = evaluate_model(model, data, size, batch_size=1)
    assert len(result.detections[0]["boxes"]) == 150 and result.metrics["AP"] == pytest.approx(1.0)
    capped = evaluate_model(model, data, size, batch_size=1, max_det=100)
    assert len(capped.detections[0]["boxes"]) == 100 and capped.metrics["AP"] < 0.7


def test_eval_says_when_it_scores_more_than_100_detections_and_takes_max_det(tmp_path, capsys, monkeypatch):
    """The command line says why its AP is not COCO's 100-detection AP, and `--max-det` sets the cap."""
    import importlib
    import pkgutil

    import efficientdet.cli
    from efficientdet.cli import main, weights_options

    for module in pkgutil.iter_modules(efficientdet.cli.__path__):  # bound to the real loader before the patch
        importlib.import_module(f"efficientdet.cli.{module.name}")
    size = 256
    level3 = [(y * 32 + x) * 9 for y in range(0, 32, 2) for x in range(0, 32, 2)][:120]
    model = AnchorOracle(level3, size)
    model.class_names, model.category_ids = ["item"], None
    monkeypatch.setattr(weights_options, "load_model_from_options", lambda *args, **kwargs: model)
    Image.new("RGB", (size, size), (90, 90, 90)).save(tmp_path / "shelf.png")
    boxes = model.boxes.numpy()
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [float(x1), float(y1), float(x2 - x1),
                    float(y2 - y1)]} for i, (x1, y1, x2, y2) in enumerate(boxes)]  # fmt: skip
    coco = {"images": [{"id": 1, "file_name": "shelf.png", "width": size, "height": size}],
            "categories": [{"id": 1, "name": "item"}], "annotations": annotations}  # fmt: skip
    (tmp_path / "val.json").write_text(json.dumps(coco))
    argv = ["eval", "--checkpoint", "oracle.pt", "--data", str(tmp_path / "val.json"), "--img-size", str(size),
            "--batch-size", "1"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "evaluation: up to 300 detections an image (COCO's 100 would cap recall: an image holds 120 objects)" in out
    assert "AP 1.000 |" in out
    assert main([*argv, "--max-det", "100"]) == 0
    out = capsys.readouterr().out
    assert "up to 300" not in out and "AP 1.000 |" not in out
