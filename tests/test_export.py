"""Export: ONNX files (run in onnxruntime) and torch.export programs compute what the eager model computes.

Kept small for CPU: Lite0 / D0 with 3 classes at 96x160 or 128 px. An ONNX export takes ~30 s here (torch.export
plus decompositions), so the CLI-made ONNX file is shared by the tests that read it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
import torch
from conftest import PARITY_DIR, require_shared

import efficientdet
from efficientdet.cli import main
from efficientdet.export import (
    EXPORT_TOPK,
    NMS_OUTPUTS,
    RAW_OUTPUTS,
    DetectionOutputs,
    TopKWarning,
    export_onnx,
    export_torch,
    load_torch,
    read_metadata,
    run_onnx,
    verify_exported,
)
from efficientdet.export.runtimes import load_exported
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.postprocess import flatten_outputs, postprocess

CLASS_NAMES = ["cat", "dog", "bird"]
NMS_SETTINGS = dict(score_threshold=0.02, iou_threshold=0.5, max_det=100, topk=5000)


def _topk_sizes(proto) -> list[int]:
    """The k of every TopK node of an ONNX graph (a constant: an initializer or a Constant node's value)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return [int(values[node.input[1]].reshape(-1)[0]) for node in proto.graph.node if node.op_type == "TopK"]


def _needs_onnx() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)


def _images(batch: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _eager_raw(model, images):
    with torch.no_grad():
        return flatten_outputs(*model(images), model.config.num_classes)


def _eager_detections(model, images, **settings):
    with torch.no_grad():
        class_outputs, box_outputs = model(images)
    anchors = anchors_for_config(model.config, tuple(images.shape[-2:]))
    return postprocess(class_outputs, box_outputs, anchors, model.config.num_classes, **settings)


def _assert_same_detections(outputs, expected, box_tol: float = 1e-4) -> None:
    """Fixed-size outputs vs postprocess(): same count, labels, order; scores and boxes within float32 noise.

    Boxes: ``box_tol`` relative to the largest coordinate (random-init boxes reach ~700 px, where a float32 ulp is
    6e-5; the difference left is the runtime's conv arithmetic, amplified by exp() in the decoding).
    """
    boxes, scores, labels, num = outputs
    assert boxes.shape[1:] == (100, 4) and scores.shape[1:] == labels.shape[1:] == (100,)
    assert labels.dtype == num.dtype == torch.int64
    for i, det in enumerate(expected):
        n = int(num[i])
        assert n == len(det["scores"]) > 0
        assert torch.equal(labels[i, :n], det["labels"])
        torch.testing.assert_close(scores[i, :n], det["scores"], rtol=0, atol=1e-6)
        scale = max(1.0, float(det["boxes"].abs().max()))
        assert float((boxes[i, :n] - det["boxes"]).abs().max()) <= box_tol * scale
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all() and (boxes[i, n:] == 0).all()


def _assert_nms_suppressed(model, images, detections) -> None:
    """NMS, not just the threshold or max_det, decided: some candidate scoring above a kept box was dropped."""
    logits, _ = _eager_raw(model, images)
    for scores_all, det in zip(logits.sigmoid(), detections):
        n = len(det["scores"])
        assert int((scores_all >= det["scores"].min()).sum()) > n


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return efficientdet.create_model("efficientdet-lite0", num_classes=3).eval()


@pytest.fixture(scope="module")
def cli_onnx_with_nms(lite0, tmp_path_factory):
    """`efficientdet export` on a save_model checkpoint: ONNX with NMS, dynamic batch, verified (one export)."""
    _needs_onnx()
    folder = tmp_path_factory.mktemp("cli_onnx")
    ckpt, out = folder / "lite0.pt", folder / "lite0_nms.onnx"
    efficientdet.save_model(lite0, ckpt, class_names=CLASS_NAMES)
    args = [
        "export",
        "--checkpoint",
        str(ckpt),
        "--format",
        "onnx",
        "--output",
        str(out),
        "--img-size",
        "128",
        "--dynamic-batch",
        "--with-nms",
        "--score-threshold",
        "0.02",
    ]  # fmt: skip (verified by default)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(args)
    return rc, stdout.getvalue(), out


def test_onnx_raw_outputs_match_eager_with_dynamic_batch(tmp_path):
    """D0 (SiLU, fast fusion, TF SAME padding) at a non-square size that is not a multiple of 128."""
    _needs_onnx()
    import onnx

    model = efficientdet.create_model("efficientdet-d0", num_classes=3).eval()
    path = export_onnx(model, tmp_path / "d0.onnx", img_size=(96, 160), batch_size=1, dynamic_batch=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # the BiFPN's SAME max-pools pad inside the MaxPool (export.onnx_passes), odd sides included (3x5 -> 2x3)
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    pools = [node for node in proto.graph.node if node.op_type == "MaxPool"]
    assert pools and all(producers.get(pool.input[0]) != "Pad" for pool in pools)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == list(RAW_OUTPUTS)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 96, 160]
    num_anchors = anchors_for_config(model.config, (96, 160)).shape[0]
    for batch in (2, 1):  # exported with batch 1, run with 2
        images = _images(batch, 96, 160)
        got = run_onnx(path, images)
        expected = _eager_raw(model, images)
        assert got[0].shape == (batch, num_anchors, 3) and got[1].shape == (batch, num_anchors, 4)
        for g, e in zip(got, expected):
            assert float((g - e).abs().max()) <= 1e-4
    meta = read_metadata(path)
    assert meta["model"] == "efficientdet-d0" and meta["input"]["shape"] == ["batch", 3, 96, 160]
    assert meta["with_nms"] is False and meta["input"]["mean"] == list(model.config.mean)


@pytest.mark.slow
def test_cli_onnx_with_nms_equals_postprocess(lite0, cli_onnx_with_nms):
    rc, _, path = cli_onnx_with_nms
    assert rc == 0
    images = _images(2, 128, 128)
    outputs = run_onnx(path, images)
    expected = _eager_detections(lite0, images, **dict(NMS_SETTINGS, topk=EXPORT_TOPK))  # the export's default
    _assert_same_detections(outputs, expected)
    _assert_nms_suppressed(lite0, images, expected)
    assert any(len(d["scores"]) < 100 for d in expected)  # the padding rows are exercised too
    single = run_onnx(path, images[:1])  # dynamic batch
    _assert_same_detections(single, expected[:1])


@pytest.mark.slow
def test_a_file_with_nms_inside_is_refused_by_the_runtime_wrappers_with_one_clear_message(cli_onnx_with_nms):
    """predict / eval / bench run raw-output files; a --with-nms file gets the reason, in either runtime (OpenVINO's
    load-time additions to the graph must not fail first on the outputs it lacks)."""
    _, _, path = cli_onnx_with_nms
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        with pytest.raises(ValueError, match="NMS inside"):
            load_exported(path, backend)


@pytest.mark.slow
def test_cli_onnx_reports_and_describes_the_file(cli_onnx_with_nms):
    import onnx

    rc, stdout, path = cli_onnx_with_nms
    assert rc == 0
    assert f"wrote {path}" in stdout and "images batchx3x128x128" in stdout
    assert "verified on 2 synthetic images against eager PyTorch (float32): scores (matched)" in stdout
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # the verification's temp file
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == list(NMS_OUTPUTS)
    assert any(node.op_type == "NonMaxSuppression" for node in proto.graph.node)
    ks = _topk_sizes(proto)  # top-k over anchor x class (9207 here, more than the limit), then max_det
    assert max(ks) == EXPORT_TOPK == 3840 and sorted(ks) == [100, 3840]
    meta = read_metadata(path)
    assert meta["class_names"] == CLASS_NAMES and meta["with_nms"] and meta["score_threshold"] == 0.02
    assert meta["max_det"] == 100 and meta["input"]["mean"] == [127.0, 127.0, 127.0]


def test_pt2_with_nms_equals_postprocess(lite0, tmp_path):
    with pytest.warns(TopKWarning, match="TensorRT will reject"):  # topk 5000 > 3840
        path = export_torch(
            lite0, tmp_path / "lite0.pt2", img_size=128, dynamic_batch=True, with_nms=True, **NMS_SETTINGS
        )
    program = load_torch(path)
    images = _images(3, 128, 128, seed=2)
    expected = _eager_detections(lite0, images, **NMS_SETTINGS)
    with torch.no_grad():
        _assert_same_detections(program(images), expected, box_tol=1e-6)
    _assert_nms_suppressed(lite0, images, expected)
    assert read_metadata(path)["format"] == "pt2"


def test_detection_module_eager_equals_postprocess_in_edge_cases(lite0):
    """No export: the static-shape graph itself (padding when topk < max_det, nothing above the threshold)."""
    images = _images(2, 128, 128, seed=3)
    for settings in (
        dict(score_threshold=0.0, iou_threshold=0.5, max_det=100, topk=40),  # fewer candidates than max_det
        dict(score_threshold=0.015, iou_threshold=0.3, max_det=100, topk=5000),
    ):
        module = DetectionOutputs(lite0, (128, 128), **settings).eval()
        with torch.no_grad():
            _assert_same_detections(module(images), _eager_detections(lite0, images, **settings), box_tol=1e-6)
    empty = DetectionOutputs(lite0, (128, 128), score_threshold=0.99).eval()
    with torch.no_grad():
        boxes, scores, labels, num = empty(images)
    assert num.tolist() == [0, 0] and (labels == -1).all() and not scores.any() and not boxes.any()


def test_verification_reference_is_the_detector(lite0):
    """No export: export checks compare a file with what a ``Detector`` predicts (its pre-processing, network and
    post-processing), not with a copy of it. On pictures, the Detector's detections in the graph's fixed-size layout
    are the static-shape graph's, and its raw outputs are the network's."""
    from efficientdet.export.verify import detector_reference, image_batch, load_verification_images
    from efficientdet.inference import Detector

    detector = Detector(lite0, image_size=(96, 160), **NMS_SETTINGS)
    batch = image_batch(detector, load_verification_images(None), 3)  # 2 pictures, cycled
    assert tuple(batch.shape) == (3, 3, 96, 160) and torch.equal(batch[0], batch[2])
    boxes, scores, labels, num = detector_reference(detector, with_nms=True)(batch)
    expected = [dict(boxes=b[:n], scores=s[:n], labels=k[:n]) for b, s, k, n in zip(boxes, scores, labels, num)]
    with torch.no_grad():
        graph = DetectionOutputs(lite0, (96, 160), **NMS_SETTINGS).eval()(batch)
    _assert_same_detections(graph, expected, box_tol=1e-6)
    for i, n in enumerate(num.tolist()):  # the graph's padding too
        assert (labels[i, n:] == -1).all() and not scores[i, n:].any() and not boxes[i, n:].any()
    raw = detector_reference(detector, with_nms=False)(batch)
    for got, want in zip(raw, _eager_raw(lite0, batch), strict=True):
        assert torch.equal(got, want)


def test_nms_op_has_onnx_semantics(tmp_path):
    """The eager op (plain torch) against onnxruntime's NonMaxSuppression on crowded boxes, several classes,
    a per-class cap, tied scores and a score threshold."""
    _needs_onnx()
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 60, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 10 + torch.rand(2, 60, 2, generator=g) * 20], -1)
    scores = torch.rand(2, 4, 60, generator=g).round(decimals=1)  # ties on purpose
    scores[:, 3] = -1  # a class that never takes part
    iou, cap, threshold = 0.4, 7, 0.2
    mask = torch.ops.efficientdet.nms_keep_mask(boxes, scores, iou, cap, threshold)

    inputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [2, 60, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 4, 60]),
    ]
    constants = [
        helper.make_tensor("cap", TensorProto.INT64, [1], [cap]),
        helper.make_tensor("iou", TensorProto.FLOAT, [1], [iou]),
        helper.make_tensor("thr", TensorProto.FLOAT, [1], [threshold]),
    ]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "cap", "iou", "thr"], ["selected"])
    output = helper.make_tensor_value_info("selected", TensorProto.INT64, None)
    graph = helper.make_graph([node], "nms", inputs, [output], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.save(model, tmp_path / "nms.onnx")
    session = ort.InferenceSession(str(tmp_path / "nms.onnx"), providers=["CPUExecutionProvider"])
    (selected,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
    expected = torch.zeros(2, 60, dtype=torch.bool)
    expected[selected[:, 0], selected[:, 2]] = True
    assert torch.equal(mask, expected)
    assert 0 < int(mask.sum()) < int((scores > threshold).any(1).sum())  # some boxes were suppressed


def test_cli_effdet_checkpoint_to_pt2(tmp_path, capsys):
    """effdet's release files need --model, as for `efficientdet eval`; the raw .pt2 equals the eager model and
    refuses inputs of another size or batch (fixed at export) instead of computing something wrong."""
    ckpt = require_shared(PARITY_DIR / "tf_efficientdet_lite0_128.pt")
    out = tmp_path / "lite0.pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "pt2", "--output", str(out)]) == 1
    assert "--model" in capsys.readouterr().err
    args = ["export", "--checkpoint", str(ckpt), "--model", "efficientdet-lite0", "--format", "pt2",
            "--output", str(out), "--img-size", "128"]  # fmt: skip
    assert main(args) == 0
    model = efficientdet.create_model("efficientdet-lite0", checkpoint=ckpt).eval()
    images = _images(1, 128, 128)
    program = load_torch(out)
    with torch.no_grad():
        got = program(images)
        for bad in (_images(1, 96, 128), _images(2, 128, 128)):
            with pytest.raises(Exception, match="shape|size"):
                program(bad)
    for g, e in zip(got, _eager_raw(model, images)):
        assert float((g - e).abs().max()) <= 1e-5
    assert read_metadata(out)["config"]["padding"] == "same"


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", "x.pt", "--format", "tflite", "--output", "x.tflite"])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    missing = tmp_path / "missing.pt"
    assert main(["export", "--checkpoint", str(missing), "--output", str(tmp_path / "m.onnx")]) == 1
    assert "no such checkpoint file" in capsys.readouterr().err
    ckpt = tmp_path / "lite0.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=2), ckpt)
    args = ["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "m.onnx"), "--img-size", "1", "2", "3"]
    assert main(args) == 1
    assert "--img-size takes S or H W" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_api_errors(lite0, tmp_path):
    with pytest.raises(ValueError, match="max_det and topk"):
        DetectionOutputs(lite0, (128, 128), max_det=0)
    _needs_onnx()
    with pytest.raises(ValueError, match="opset 16"):
        export_onnx(lite0, tmp_path / "x.onnx", opset=16)
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ValueError, match=f"opset {newest + 71}: .* at most opset {newest}"):
        export_onnx(lite0, tmp_path / "x.onnx", opset=newest + 71)  # an opset-18 file was written without a word
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--score-threshold", "2", "--with-nms"], "argument --score-threshold: must be between 0 and 1, got 2"),
        (["--iou-threshold", "-0.5", "--with-nms"], "argument --iou-threshold: must be between 0 and 1, got -0.5"),
        (["--score-threshold", "0.3"], "--score-threshold is for --with-nms only"),
        (["--max-det", "10"], "--max-det is for --with-nms only"),
        (["--topk", "100"], "--topk is for --with-nms only"),
    ],
)
def test_nms_options_are_checked(tmp_path, capsys, extra, expected):
    """A score threshold of 2 exported a graph that never detects anything; without --with-nms the NMS options
    were dropped without a word (the file holds raw outputs, the caller's own post-processing applies)."""
    ckpt = tmp_path / "m.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64), ckpt)
    out = tmp_path / "m.onnx"
    with contextlib.suppress(SystemExit):  # argparse's own errors exit 2
        assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), *extra]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def _write_pictures(folder, count: int = 2):
    """A few photo-like pictures (PNG) for --verify-images."""
    from PIL import Image

    from efficientdet.data.synthetic import synthetic_images

    folder.mkdir()
    for i, array in enumerate(synthetic_images(count, size=(300, 220), seed=5)):
        Image.fromarray(array).save(folder / f"p{i}.png")
    return folder


@pytest.mark.slow
def test_cli_onnx_dynamic_size_with_nms_and_topk_5000(lite0, tmp_path):
    """--dynamic-size: one file runs at several multiples of 128 and equals eager postprocess() at each; the NMS
    graph builds its anchors in the graph. --topk 5000 is honoured (k 5000 in the graph) with a TensorRT warning;
    the verification ran on the given pictures."""
    _needs_onnx()
    import onnx

    ckpt, out = tmp_path / "lite0.pt", tmp_path / "dyn.onnx"
    efficientdet.save_model(lite0, ckpt, class_names=CLASS_NAMES)
    pictures = _write_pictures(tmp_path / "pictures")
    args = ["export", "--checkpoint", str(ckpt), "--output", str(out), "--img-size", "128", "--dynamic-size",
            "--with-nms", "--score-threshold", "0.02", "--topk", "5000", "--verify-images", str(pictures)]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(args) == 0
    assert "--topk 5000 is above 3840" in stderr.getvalue() and "TensorRT will reject" in stderr.getvalue()
    assert "images 1x3xheightxwidth" in stdout.getvalue() and "verified on 2 images" in stdout.getvalue()
    proto = onnx.load(str(out))
    assert max(_topk_sizes(proto)) == 5000
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param
    meta = read_metadata(out)
    assert meta["input"]["shape"] == [1, 3, "height", "width"] and meta["input"]["size_multiple"] == 128
    assert meta["topk"] == 5000 and "multiples of 128" in meta["input"]["size_note"]
    for h, w in ((256, 256), (256, 384)):
        images = _images(1, h, w, seed=h + w)
        expected = _eager_detections(lite0, images, **NMS_SETTINGS)
        _assert_same_detections(run_onnx(out, images), expected)


def test_dynamic_size_module_equals_postprocess(lite0):
    """No export: the free-size graph (anchors from the feature maps, candidates padded to k) in eager mode, at
    two sizes, also with k larger than anchors x classes."""
    from efficientdet.export import export_module

    for topk, size in ((5000, (256, 384)), (60000, (256, 256))):  # 256x256: 12276 anchors x 3 classes < 60000
        settings = dict(score_threshold=0.0 if topk > 5000 else 0.02, iou_threshold=0.5, max_det=100, topk=topk)
        module, _, traced = export_module(lite0, 128, True, **settings, dynamic_size=True)
        assert traced == (256, 256) and module.anchors is None
        images = _images(2, *size, seed=4)
        with torch.no_grad():
            _assert_same_detections(module(images), _eager_detections(lite0, images, **settings))


@pytest.mark.slow
def test_onnx_half_has_fp16_weights_and_stays_close(lite0, tmp_path):
    """--half: float16 initializers, float32 input; onnxruntime's CPU provider runs it, close to eager float32."""
    _needs_onnx()
    import onnx
    from onnx import TensorProto

    path = export_onnx(lite0, tmp_path / "half.onnx", img_size=128, half=True)
    proto = onnx.load(str(path))
    weights = [t for t in proto.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    big = [t for t in weights if len(t.dims) == 4]  # conv kernels
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert read_metadata(path)["precision"] == "fp16"
    images = _images(1, 128, 128, seed=6)
    got = run_onnx(path, images)
    assert got[0].dtype == torch.float32
    for g, e in zip(got, _eager_raw(lite0, images)):
        err = float((g - e).abs().max()) / max(1.0, float(e.abs().max()))
        assert 0 < err < 5e-2  # not float32 (0 would mean no fp16 arithmetic), but close
    assert verify_exported(lite0, path)["class_logits"] < 5e-2


def test_cli_verification_failure_leaves_no_file(lite0, tmp_path, monkeypatch, capsys):
    """A file that disagrees with eager PyTorch is not written: one error line with the difference, exit 1."""
    import efficientdet.export.exporter as export  # where RUNNERS lives (the package does not re-export it)

    ckpt, out = tmp_path / "lite0.pt", tmp_path / "out" / "lite0.pt2"
    efficientdet.save_model(lite0, ckpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["export", "--checkpoint", str(ckpt), "--format", "pt2", "--output", str(out), "--img-size", "128"]
    assert main([*base, "--verify-images", str(empty)]) == 1
    assert f"--verify-images {empty}: no images" in capsys.readouterr().err
    broken = lambda path, images: [t + 0.1 for t in export.run_pt2(path, images)]  # noqa: E731
    monkeypatch.setitem(export.RUNNERS, "pt2", broken)
    assert main(base) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: verification failed, nothing written: differs from eager" in err[0]
    assert "class_logits above the tolerance" in err[0]
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_compare_detections_matches_boxes():
    """Detections are matched by class and IoU: a swapped order passes, a moved box or a lost one does not."""
    from efficientdet.export.verify import compare_detections

    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 0, 0]]])
    scores = torch.tensor([[0.9, 0.8, 0.0]])
    labels = torch.tensor([[0, 1, -1]])
    num = torch.tensor([2])
    reference = (boxes, scores, labels, num)
    swapped = (boxes[:, [1, 0, 2]], torch.tensor([[0.8, 0.9, 0.0]]), labels[:, [1, 0, 2]], num)
    assert compare_detections(swapped, reference, 0.05, 100) == {"scores": 0.0, "boxes": 0.0}
    moved = (boxes + torch.tensor([1.0, 0, 1, 0]), scores, labels, num)
    assert compare_detections(moved, reference, 0.05, 100)["boxes"] == pytest.approx(1 - 90 / 110)
    lost = (boxes, scores, labels, torch.tensor([1]))
    assert compare_detections(lost, reference, 0.05, 100)["scores"] == pytest.approx(0.8 - 0.05)


def test_output_defaults_to_the_checkpoints_name_beside_it(tmp_path, capsys):
    """Without --output the file goes beside the checkpoint, named after it (best.pt -> best.onnx, as other
    detectors' export commands do); --int8 / --half / the format change the name, --pretrained names it after the
    model in the current folder."""
    from efficientdet.cli.export import default_output

    assert default_output("runs/voc/best.pt", "efficientdet-d0", "onnx") == Path("runs/voc/best.onnx")
    assert default_output("runs/voc/best.pt", "efficientdet-d0", "onnx", int8=True) == Path("runs/voc/best_int8.onnx")
    assert default_output("runs/voc/best.pt", "efficientdet-d0", "onnx", half=True) == Path("runs/voc/best_fp16.onnx")
    assert default_output("runs/voc/best.pt", "efficientdet-d0", "openvino") == Path("runs/voc/best.xml")
    assert default_output("runs/voc/best.pt", "efficientdet-d0", "pt2") == Path("runs/voc/best.pt2")
    assert default_output(None, "efficientdet-d0", "openvino", int8=True) == Path("efficientdet-d0_int8.xml")
    assert default_output("https://host/w/d0.pth?dl=1", "efficientdet-d0", "onnx") == Path("d0.onnx")

    _needs_onnx()
    ckpt = tmp_path / "best.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=128), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--no-verify"]) == 0
    assert f"wrote {tmp_path / 'best.onnx'} (onnx" in capsys.readouterr().out
    assert read_metadata(tmp_path / "best.onnx")["model"] == "efficientdet-lite0"


def test_ctrl_c_in_any_command_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """Commands without a Ctrl-C message of their own (train and predict have one) end with one line and exit 130;
    the atomic writes leave no file behind."""
    from conftest import interrupt_at_call

    import efficientdet.cli.export as export_cli

    ckpt = tmp_path / "best.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=128), ckpt)
    interrupt_at_call(monkeypatch, export_cli, "export_verified", 1)
    assert main(["export", "--checkpoint", str(ckpt)]) == 130
    assert capsys.readouterr().err == "efficientdet export: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_an_input_size_the_exported_file_does_not_take_is_one_line(tmp_path, capsys):
    """`eval --checkpoint m.onnx --img-size 448` of a file fixed at 128 px gave a traceback from the first batch
    (predict and bench said it in one line, the same one)."""
    _needs_onnx()
    pytest.importorskip("onnxruntime")
    from test_train import raccoon_subset

    data = raccoon_subset(tmp_path, n_train=1, n_val=1)
    ckpt, onnx_file = tmp_path / "m.pt", tmp_path / "m.onnx"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=128), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(onnx_file), "--no-verify"]) == 0
    capsys.readouterr()
    expected = (f"{onnx_file} takes 128x128 inputs, got 256x256 (use the file's size: leave --img-size out, or "
                "export again at the size wanted)")  # fmt: skip
    image = next((data / "JPEGImages").iterdir())
    runs = {
        "eval": ["eval", "--checkpoint", str(onnx_file), "--data", str(data), "--split", "val", "--img-size", "256"],
        "predict": ["predict", str(image), "--checkpoint", str(onnx_file), "--img-size", "256",
                    "--output", str(tmp_path / "out")],
    }  # fmt: skip
    for command, argv in runs.items():
        assert main(argv) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"efficientdet {command}: {expected}"]
    assert not (tmp_path / "out").exists()
