"""The Detector: any image input in, detections in the original image's pixels out."""

import ast
import re

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR, REPO, SHARED, require_shared
from PIL import Image

import efficientdet
from efficientdet.data.readers import read_dataset
from efficientdet.inference import Detector


@pytest.fixture(scope="module")
def detector():
    model = efficientdet.create_model("efficientdet-lite0", checkpoint=PARITY_DIR / "tf_efficientdet_lite0_128.pt")
    return Detector(model, image_size=128, score_threshold=0.0, max_det=20)


def test_every_input_kind_gives_the_same_detections(detector, tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    from_array = detector(array)[0]
    from_path = detector(str(path))[0]
    from_pil = detector(Image.fromarray(array))[0]
    from_tensor = detector(torch.from_numpy(array).permute(2, 0, 1).float() / 255)[0]
    for other in (from_path, from_pil, from_tensor):
        assert torch.allclose(other["boxes"], from_array["boxes"], atol=1e-3)
        assert torch.equal(other["labels"], from_array["labels"])
    assert len(from_array["label_names"]) == len(from_array["scores"]) == 20


def test_boxes_are_in_original_pixels(detector):
    """Boxes come back through the pre-processing's scale (longer side 160 -> 128) and are clipped to the image
    (the picture fills the input's top 72 rows: the detections are those of that region)."""
    from efficientdet.inference.detector import picture_regions

    array = np.random.default_rng(1).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    batch, scales, sizes = detector.preprocess([array])
    assert scales == [pytest.approx((0.8, 0.8))] and sizes == [(90, 160)]
    assert picture_regions((128, 128), scales, sizes) == [(0.0, 0.0, 128.0, 72.0)]
    in_input_pixels = detector.detections(*detector.network(batch), (128, 128), [(0.0, 0.0, 128.0, 72.0)])[0]["boxes"]
    expected = in_input_pixels / 0.8
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 160)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 90)
    assert torch.allclose(detector(array)[0]["boxes"], expected, atol=1e-4)


def test_list_input_and_bad_input(detector):
    imgs = [np.zeros((10, 10, 3), np.uint8), np.full((300, 50, 3), 200, np.uint8)]
    out = detector(imgs)
    assert len(out) == 2 and all(set(d) == {"boxes", "scores", "labels", "label_names"} for d in out)
    with pytest.raises(ValueError, match="uint8"):
        detector(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\] in \[0, 1\], got float32 \(2, 1, 8, 8\)"):
        detector(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"got uint8 \(3, 8, 8\)"):  # the shape fits, the type does not
        detector(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_a_float_tensor_off_the_unit_range_is_refused_not_clamped(detector):
    """A tensor of 0-255 floats was clamped to [0, 1] (a white picture: no detections, no word), and a mean/std
    normalised one lost its negative half the same way (the Segmenter alike); a slight resampling overshoot is still
    clamped."""
    pixels = torch.from_numpy(np.random.default_rng(2).integers(0, 255, (3, 40, 60))).float()
    with pytest.raises(ValueError, match=r"values from 0 to 254: 0-255 pixels\? Divide by 255"):
        detector(pixels)
    normalised = (pixels / 255 - 0.45) / 0.225
    with pytest.raises(ValueError, match=r"values from -2 to 2.43: .*normalised inside"):
        detector(normalised)
    with pytest.raises(ValueError, match=r"not finite"):
        detector(torch.full((3, 8, 8), float("nan")))
    overshoot = (pixels / 255 * 1.04 - 0.02)[None]  # bicubic resampling's ringing: a few hundredths past the ends
    assert len(detector(overshoot)) == 1


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("score_threshold", 2.0, r"score threshold must be in \[0, 1\], got 2.0"),
        ("score_threshold", -1.0, r"score threshold must be in \[0, 1\], got -1.0"),
        ("iou_threshold", 5.0, r"IoU threshold must be in \[0, 1\], got 5.0"),
        ("max_det", 0, "max_det must be at least 1, got 0"),
        ("image_size", 0, r"image_size must be a side >= 1 or \(H, W\), got 0"),
        ("image_size", -5, r"image_size must be a side >= 1 or \(H, W\), got -5"),
        ("image_size", (64, 0), r"image_size must be a side >= 1 or \(H, W\), got \(64, 0\)"),
    ],
)
def test_detector_options_are_checked_when_it_is_made(detector, option, value, expected):
    """The Python API took a score threshold of 2 (nothing detected, no word), image_size=0 (the model's size) and
    image_size=-5 (a RuntimeError from the first image): only `predict` checked them."""
    with pytest.raises(ValueError, match=expected):
        Detector(detector.model, **{option: value})


def test_an_empty_list_gives_no_results_and_odd_inputs_say_what_is_expected(detector):
    """torchvision's detectors map an empty list to an empty list; a non-image or a picture without pixels is one
    clear error (a bare TypeError from iterating an int, or a division by zero, before)."""
    assert detector([]) == []
    for bad in (123, [123], None):
        with pytest.raises(TypeError, match=r"expected an image \(a path, URL, PIL image or HxWx3 uint8 array\)"):
            detector(bad)
    for shape in ((0, 10, 3), (10, 0, 3)):
        with pytest.raises(ValueError, match=rf"an image without pixels \({shape[0]}x{shape[1]}\)"):
            detector(np.zeros(shape, np.uint8))


def test_a_model_file_path_is_a_model_too(detector, tmp_path):
    """`Detector("best.pt")`, as ultralytics' `YOLO("best.pt")` is typed, failed with "'str' object has no
    attribute 'to'"; a file path now loads as `from_checkpoint` loads it, and anything else says what it takes."""
    path = tmp_path / "m.pt"
    efficientdet.save_model(detector.model, path)
    image = np.full((90, 120, 3), 120, np.uint8)
    image[20:60, 30:90] = 250
    expected = detector(image)[0]
    for given in (str(path), path):
        got = Detector(given, image_size=128, score_threshold=0.0, max_det=20)(image)[0]
        assert torch.equal(got["boxes"], expected["boxes"]) and torch.equal(got["scores"], expected["scores"])
    with pytest.raises(TypeError, match="a model, an exported network or the path of a model file, not int"):
        Detector(3)


# ----------------------------------------------------------------------------------- one prediction path (issue 18)

RACCOON = SHARED / "datasets" / "raccoon"
PACKAGE = REPO / "efficientdet"


@pytest.mark.parametrize("nms", ["hard", "soft"])
def test_evaluation_detections_are_the_detectors(detector, nms):
    """Evaluation scores what users get: ``predict_records`` (the detections ``evaluate_model`` scores) equals a
    ``Detector`` with the evaluation's settings called on the same image files, running the network as ``predict``
    does (BN and padding folded, channels-last). Any drift between the two paths (resize, top-k, thresholds, NMS,
    mapping back to the image) fails this."""
    from efficientdet.data.readers import read_dataset
    from efficientdet.evaluation.validate import EVAL_SCORE_THRESHOLD, EVAL_VOTE_IOU, predict_records

    records = read_dataset(require_shared(RACCOON), "voc", "test").records[:4]
    for rec in records:  # annotations in the file's own pixels, so both sides are in image pixels
        with Image.open(rec.path) as im:
            assert im.size == (rec.width, rec.height)
    model = detector.model  # the parity Lite0: random weights with well-spread scores, 90 classes
    dets, skipped = predict_records(model, records, image_size=128, batch_size=2, nms=nms)
    reference = Detector(
        model, image_size=128, score_threshold=EVAL_SCORE_THRESHOLD, nms=nms, optimize=True, vote_iou=EVAL_VOTE_IOU
    )
    expected = reference([r.path for r in records[:2]]) + reference([r.path for r in records[2:]])
    assert skipped == 0 and not model.training
    for got, want in zip(dets, expected, strict=True):
        assert len(got["scores"]) == len(want["scores"]) == 100
        assert torch.equal(got["labels"], want["labels"])
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-3)
    # a Detector given to evaluation is used as it is
    again, _ = predict_records(reference, records, batch_size=2)
    for got, want in zip(again, dets):
        assert torch.equal(got["boxes"], want["boxes"]) and torch.equal(got["scores"], want["scores"])


def test_evaluation_deduplicates_with_soft_nms_by_default(detector):
    """`eval` and the evaluation during training score soft-NMS detections (the paper's evaluation) unless told
    otherwise; `predict` and `Detector` keep hard NMS."""
    from efficientdet.evaluation.validate import predict_records

    records = read_dataset(require_shared(RACCOON), "voc", "test").records[:2]
    default, _ = predict_records(detector.model, records, image_size=128)
    soft, _ = predict_records(detector.model, records, image_size=128, nms="soft")
    hard, _ = predict_records(detector.model, records, image_size=128, nms="hard")
    for d, s, h in zip(default, soft, hard, strict=True):
        assert torch.equal(d["boxes"], s["boxes"]) and torch.equal(d["scores"], s["scores"])
        assert not torch.equal(d["scores"], h["scores"])  # the parity Lite0's overlapping boxes: the two differ
    assert Detector(detector.model).nms == "hard"


def test_evaluation_votes_boxes_only_when_asked(detector):
    """Box voting is an option of evaluation (``vote_iou``), off by default as in ``Detector``; when asked, the
    threshold reaches the post-processing."""
    from efficientdet.evaluation.validate import EVAL_VOTE_IOU, predict_records

    assert EVAL_VOTE_IOU is None and Detector(detector.model).vote_iou is None
    records = read_dataset(require_shared(RACCOON), "voc", "test").records[:2]
    default, _ = predict_records(detector.model, records, image_size=128)
    plain, _ = predict_records(detector.model, records, image_size=128, vote_iou=None)
    voted, _ = predict_records(detector.model, records, image_size=128, vote_iou=0.5)
    for d, p, v in zip(default, plain, voted, strict=True):
        assert torch.equal(d["boxes"], p["boxes"]) and torch.equal(v["scores"], p["scores"])
        assert not torch.equal(v["boxes"], p["boxes"])


def test_predict_records_restores_training_mode():
    model = efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=64).train()
    from efficientdet.data.records import ImageRecord
    from efficientdet.evaluation.validate import predict_records

    dets, skipped = predict_records(model, [ImageRecord("missing.jpg", 1, 10, 10)], batch_size=1)
    assert model.training and skipped == 1 and len(dets[0]["scores"]) == 0
    # the folded copy that evaluation runs is not the model: the model's own BN layers stay as they were
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_evaluation_runs_a_folded_copy_with_the_models_detections(tmp_path):
    """Evaluation folds BN and padding (as ``predict`` does) for speed; with ``optimize=False`` it runs the model
    itself. Both give the same detections up to float rounding, and the model is left as it was."""
    from efficientdet.data.readers import read_dataset
    from efficientdet.evaluation.validate import evaluation_detector, predict_records

    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=128).train()
    records = read_dataset(require_shared(RACCOON), "voc", "test").records[:2]
    folded, _ = predict_records(model, records, batch_size=2)
    assert model.training
    assert evaluation_detector(model).model is not model
    assert evaluation_detector(model, optimize=False).model is model
    plain, _ = predict_records(evaluation_detector(model, optimize=False), records)
    for got, want in zip(folded, plain, strict=True):
        assert len(got["scores"]) == len(want["scores"]) > 0
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=0.05)


def test_channels_last_is_detected_in_one_place():
    """The Detector feeds a channels-last model channels-last batches (what evaluation did on its own before)."""
    from efficientdet.models.fuse import uses_channels_last

    model = efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=64).eval()
    assert not uses_channels_last(model) and not uses_channels_last(torch.nn.Identity())
    image = np.zeros((40, 64, 3), np.uint8)
    fast = Detector(model, optimize=True)
    assert uses_channels_last(fast.model) and fast.channels_last
    assert fast.preprocess([image])[0].is_contiguous(memory_format=torch.channels_last)
    plain = Detector(model).preprocess([image])[0]
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)


def _postprocess_uses(tree: ast.AST) -> list[int]:
    """Lines that import ``ops.postprocess.postprocess`` by name or call a ``.postprocess(...)`` attribute."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "postprocess":
            if any(alias.name == "postprocess" for alias in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "postprocess":
            lines.append(node.lineno)
    return lines


def _model_calls(tree: ast.AST) -> list[int]:
    """Lines that run a network: a call of a parameter annotated as a model (``EfficientDet``,
    ``EfficientDetSegmentation``, ``nn.Module``), also through ``model.eval()(x)``, or of ``.forward``,
    ``.forward_features`` or ``.model``."""
    lines = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        typed = {a.arg: ast.unparse(a.annotation) for a in args if a.annotation is not None}
        models = {name for name, annotation in typed.items() if re.search(r"EfficientDet|Module", annotation)}
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            while isinstance(func, ast.Call) and isinstance(func.func, ast.Attribute):  # model.eval()(x)
                func = func.func.value
            network = isinstance(func, ast.Attribute) and func.attr in ("forward", "forward_features", "model")
            if network or (isinstance(func, ast.Name) and func.id in models):
                lines.append(node.lineno)
    return lines


def test_only_the_predictors_run_models_and_post_processing():
    """``Detector`` and ``Segmenter`` are the only code that runs a model on images and post-processes its outputs;
    evaluation, ``bench``, export verification and the prediction front-ends call them. (The export graph
    wrappers hold their own static-shape copy of the post-processing: that is what gets exported.)"""
    postprocess_allowed = {"inference/detector.py", "ops/postprocess.py", "export/exporter.py", "export/graph.py"}
    predictors = {"inference/detector.py", "inference/segmenter.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if rel not in postprocess_allowed and _postprocess_uses(tree):
            offenders.append(f"{rel}:{_postprocess_uses(tree)} post-processes")
        front_end = rel.startswith(("evaluation/", "tools/", "inference/")) or rel == "export/verify.py"
        if front_end and rel not in predictors and _model_calls(tree):
            offenders.append(f"{rel}:{_model_calls(tree)} runs a model")
    assert not offenders, offenders
    # the check sees the old code's shape: a model parameter called directly, and a by-name import
    old = ast.parse(
        "from ..ops.postprocess import postprocess\n"
        "def f(model: EfficientDetSegmentation, x):\n"
        "    return model.eval()(x)\n"
    )
    assert _postprocess_uses(old) == [1] and _model_calls(old) == [3]


@pytest.mark.parametrize("nms", ["hard", "soft"])
def test_flip_tta_of_a_mirrored_image_is_the_mirrored_result(detector, nms):
    """With flip TTA, an image and its mirror run the same two passes (square input: no padding to move), so their
    detections must be each other's mirror: checks that the mirrored pass's boxes are mapped back right."""
    array = np.random.default_rng(2).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    tta = Detector(detector.model, image_size=128, score_threshold=0.0, max_det=20, nms=nms, flip_tta=True)
    got, mirrored = tta(array)[0], tta(np.ascontiguousarray(array[:, ::-1]))[0]
    expected = mirrored["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([128.0, 0, 128, 0])
    assert len(got["boxes"]) == 20
    torch.testing.assert_close(got["scores"], mirrored["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["boxes"], expected, rtol=0, atol=1e-3)
    assert torch.equal(got["labels"], mirrored["labels"])
    plain = detector(array)[0]  # and the second pass changes the result
    assert not torch.allclose(plain["scores"], got["scores"])


def test_flip_tta_keeps_the_best_box_of_each_object_once(detector):
    """Duplicates across the two passes are merged: no two kept boxes of a class overlap above the NMS IoU."""
    from efficientdet.ops.postprocess import box_iou_one_to_many

    array = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    tta = Detector(detector.model, image_size=128, score_threshold=0.0, max_det=50, flip_tta=True)
    out = tta(array)[0]
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    for i in range(len(out["boxes"])):
        same = out["labels"] == out["labels"][i]
        same[i] = False
        assert not (box_iou_one_to_many(out["boxes"][i], out["boxes"][same]) > tta.iou_threshold).any()


class _ForeignRuntime(torch.nn.Module):
    """A network that says, as an exported file does, on how many torch threads the work around it should run;
    it records the count it was called under."""

    host_threads = 1

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.seen = model, model.config, []

    def forward(self, images: torch.Tensor):
        self.seen.append(torch.get_num_threads())
        return self.inner(images)


def test_pre_and_post_processing_run_on_the_networks_host_threads(detector, monkeypatch):
    """Around a network in another runtime's thread pool, the Detector's torch work runs on ``host_threads``
    (torch's spinning OpenMP workers would take the cores the runtime wants next), with the same detections (up to the
    float rounding a thread count changes), and the caller's thread count is restored."""
    from efficientdet.export.runtimes import ExportedNetwork
    from efficientdet.inference import detector as detector_module

    assert ExportedNetwork.host_threads == 1  # every exported file (onnxruntime, OpenVINO) asks for one
    image = np.random.default_rng(2).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    foreign = Detector(_ForeignRuntime(detector.model), image_size=128, score_threshold=0.0, max_det=20)
    assert foreign.host_threads == 1 and detector.host_threads is None
    seen_by_steps = []

    def recording(step):
        def run(*args, **kwargs):
            seen_by_steps.append(torch.get_num_threads())
            return step(*args, **kwargs)

        return run

    for name in ("eval_transform", "postprocess"):
        monkeypatch.setattr(detector_module, name, recording(getattr(detector_module, name)))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got, expected = foreign(image)[0], detector(image)[0]
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)
    assert foreign.model.seen == [1]
    assert seen_by_steps == [1, 1, 2, 2]  # the foreign network's pre- and post-processing, then the torch model's
    assert torch.equal(got["labels"], expected["labels"]) and torch.allclose(got["boxes"], expected["boxes"], atol=1e-3)


# ------------------------------------------------------------------------------- the letterbox padding is no picture


@pytest.mark.parametrize("flip_tta", [False, True])
def test_no_detection_lies_outside_the_picture(detector, flip_tta):
    """A 90x160 picture fills 72 of the input's 128 rows; candidates decoded in the padding below it would clip to
    empty boxes on the picture's bottom edge and take slots of max_det (a random model finds many there)."""
    array = np.random.default_rng(4).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    det = Detector(detector.model, image_size=128, score_threshold=0.0, max_det=100, flip_tta=flip_tta)
    boxes = det(array)[0]["boxes"]
    assert len(boxes) == 100  # the slots are all used, by boxes of the picture
    assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())


def test_flip_tta_clips_each_pass_to_where_the_picture_is(detector, monkeypatch):
    """The mirrored pass sees the picture at the other side of the input: its region is mirrored too."""
    import efficientdet.inference.detector as detector_module

    seen = []
    real = detector_module.postprocess

    def spy(*args, regions=None, **kwargs):
        seen.append(regions)
        return real(*args, regions=regions, **kwargs)

    monkeypatch.setattr(detector_module, "postprocess", spy)
    tall = np.random.default_rng(5).integers(0, 255, (128, 64, 3), dtype=np.uint8)  # fills columns 0-64 of 128
    Detector(detector.model, image_size=128, flip_tta=True)(tall)
    assert seen == [[(0.0, 0.0, 64.0, 128.0), (64.0, 0.0, 128.0, 128.0)]]
