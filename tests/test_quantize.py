"""int8 ONNX (onnxruntime QDQ) and OpenVINO (fp32, NNCF int8) exports, and running them with predict/eval/bench."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR, SHARED, require_shared, tiny_detector_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import efficientdet  # noqa: E402
from efficientdet.cli import main  # noqa: E402
from efficientdet.export import RawOutputs, export_onnx  # noqa: E402
from efficientdet.export.openvino_core import openvino_core  # noqa: E402
from efficientdet.export.runtimes import load_exported, read_exported_metadata  # noqa: E402
from efficientdet.inference import Detector  # noqa: E402
from efficientdet.ops.labeler import box_iou  # noqa: E402

LITE0 = "tf_efficientdet_lite0_128.pt"
RACCOON = SHARED / "datasets" / "raccoon"
TOP = 20  # fp32 detections compared per image: the fixture's scores are all > 0.95 there


def matched_iou(reference: list[dict], candidate: list[dict], top: int = TOP) -> np.ndarray:
    """For each of the ``top`` best reference detections per image, the best IoU with a same-class candidate box."""
    out = []
    for ref, got in zip(reference, candidate):
        for i in range(min(top, len(ref["scores"]))):
            same = got["labels"] == ref["labels"][i]
            out.append(float(box_iou(ref["boxes"][i : i + 1], got["boxes"][same]).max()) if same.any() else 0.0)
    return np.array(out)


@pytest.fixture(scope="module")
def lite0(parity_data):
    model = efficientdet.create_model("efficientdet-lite0", checkpoint=PARITY_DIR / LITE0, image_size=128).eval()
    model.class_names = [f"c{i}" for i in range(90)]
    return model, parity_data[LITE0]["input"]


@pytest.fixture(scope="module")
def calibrated(lite0, tmp_path_factory):
    """int8 files of the parity Lite0, calibrated on the fixture's own two inputs."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import export_openvino
    from efficientdet.export.quantize import export_onnx_int8

    model, x = lite0
    batches = [x[i : i + 1].numpy() for i in range(len(x))]
    folder = tmp_path_factory.mktemp("int8")
    onnx8 = export_onnx_int8(model, folder / "lite0_int8.onnx", batches)
    ov8 = export_openvino(model, folder / "lite0_int8.xml", int8=True, calibration=batches)
    return onnx8, ov8


def _padded_max_pools(xml_path) -> int:
    """How many -inf Pads an OpenVINO IR holds (the SAME max-pools' explicit pads)."""
    import numpy as np
    import openvino as ov

    count = 0
    for op in ov.Core().read_model(str(xml_path)).get_ordered_ops():
        value = op.input_value(3).get_node() if op.get_type_name() == "Pad" and op.get_input_size() > 3 else None
        if value is not None and value.get_type_name() == "Constant" and np.isneginf(value.get_data()).all():
            count += 1
    return count


def test_openvino_int8_keeps_the_max_pools_explicit_pads(lite0, calibrated, tmp_path):
    """fp32 IRs fold the SAME max-pools' pads into the MaxPool (identical outputs); int8 keeps them, so that NNCF
    quantises the graph it quantised before (folded, the pools' inputs got quantisers and int8 AP moved)."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import export_openvino

    model, _ = lite0
    _, ov8 = calibrated
    assert _padded_max_pools(export_openvino(model, tmp_path / "fp32.xml")) == 0
    assert _padded_max_pools(ov8) > 0


def _largest_conv_weights(xml_path) -> list[int]:
    """Per (dense) Convolution of an int8 IR, the largest magnitude among its stored int8 weights."""
    import openvino as ov

    def consumer(node):
        for _ in range(8):  # int8 constant -> Convert -> (Subtract) -> Multiply -> the layer
            node = next(iter(node.output(0).get_target_inputs())).get_node()
            if node.get_type_name() in ("Convolution", "GroupConvolution"):
                return node.get_type_name()
        return None

    model = ov.Core().read_model(str(xml_path))
    return [int(np.abs(op.get_data().astype(np.int32)).max()) for op in model.get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8
            and consumer(op) == "Convolution"]  # fmt: skip


def test_openvino_seven_bit_weights_and_the_warning_without_vnni(lite0, calibrated, tmp_path, monkeypatch):
    """``seven_bit_weights`` keeps every dense convolution's int8 weights within 7 bits (NNCF's overflow fix on
    every layer), where the default gives all but the first the full 8 bits (127 at each channel's largest
    weight): on x86 CPUs without VNNI uint8 x int8 pair sums saturate int16 with 8-bit weights. The file says
    which it holds, and an 8-bit one warns when loaded on such a CPU, naming the file; a 7-bit one never does."""
    pytest.importorskip("openvino")
    from efficientdet.export import runtimes
    from efficientdet.export.openvino import OPENVINO_WEIGHTS, OPENVINO_WEIGHTS_7_BIT, export_openvino

    model, x = lite0
    _, default = calibrated
    batches = [x[i : i + 1].numpy() for i in range(len(x))]
    seven = export_openvino(model, tmp_path / "seven.xml", int8=True, calibration=batches, seven_bit_weights=True)
    default_largest, seven_largest = _largest_conv_weights(default), _largest_conv_weights(seven)
    assert len(seven_largest) == len(default_largest) > 50
    assert max(seven_largest) <= 64 and max(default_largest) == 127
    assert read_exported_metadata(seven)["quantization"]["weights"] == OPENVINO_WEIGHTS_7_BIT
    assert read_exported_metadata(default)["quantization"]["weights"] == OPENVINO_WEIGHTS
    monkeypatch.setattr(runtimes, "x86_cpu_without_vnni", lambda: True)
    with pytest.warns(runtimes.Int8SaturationWarning, match="lite0_int8.xml: OpenVINO int8 file with 8-bit weights"):
        load_exported(default, "openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("error", runtimes.Int8SaturationWarning)
        load_exported(seven, "openvino")
    monkeypatch.setattr(runtimes, "x86_cpu_without_vnni", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", runtimes.Int8SaturationWarning)
        load_exported(default, "openvino")


def test_the_speed_benchmark_times_named_openvino_weights(lite0, tmp_path):
    """``exported_network`` (``benchmarks/speed.py``'s ``openvino int8 7bit`` / ``8bit``) writes one file per
    weights' width, side by side in one folder, each holding what it is named for; unnamed, the export's default."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import OPENVINO_WEIGHTS, OPENVINO_WEIGHTS_7_BIT
    from efficientdet.tools.bench import exported_network

    model, x = lite0
    batches = [x[i : i + 1].numpy() for i in range(len(x))]
    nets = {bits: exported_network(model, "openvino", tmp_path, 128, 1, 1, batches, seven_bit_weights=bits)
            for bits in (True, False, None)}  # fmt: skip
    assert len({net.path for net in nets.values()}) == 3 and all(net.path.parent == tmp_path for net in nets.values())
    weights = {bits: net.metadata["quantization"]["weights"] for bits, net in nets.items()}
    assert weights[True] == OPENVINO_WEIGHTS_7_BIT and weights[False] == OPENVINO_WEIGHTS
    assert max(_largest_conv_weights(nets[True].path)) <= 64 < max(_largest_conv_weights(nets[False].path))


@pytest.mark.slow
def test_int8_onnx_biases_are_corrected_by_default(lite0, calibrated, tmp_path):
    """The parity Lite0's quantised convs with a bias (batch norms folded in) get it corrected, and the file says
    so; ``bias_correction=False`` keeps the quantiser's biases (the two files differ in those only)."""
    import onnx
    from onnx import numpy_helper

    from efficientdet.export.quantize import export_onnx_int8

    model, x = lite0
    onnx8, _ = calibrated
    corrected = int(read_exported_metadata(onnx8)["quantization"]["bias_correction"].split()[0])
    assert corrected > 50
    plain = export_onnx_int8(model, tmp_path / "plain.onnx", [x[i : i + 1].numpy() for i in range(len(x))],
                             bias_correction=False)  # fmt: skip
    assert read_exported_metadata(plain)["quantization"]["bias_correction"] == "none"
    arrays = [{i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer} for p in (onnx8, plain)]
    differ = {name for name in arrays[0] if not np.array_equal(arrays[0][name], arrays[1][name])}
    assert len(differ) == corrected and all(arrays[0][name].dtype == np.int32 for name in differ)


def test_fp32_files_run_as_the_network(lite0, tmp_path):
    """ONNX in onnxruntime and OpenVINO, and the OpenVINO IR: the eager detections, box for box."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import export_openvino

    model, x = lite0
    onnx_path = export_onnx(model, tmp_path / "lite0.onnx")
    xml_path = export_openvino(model, tmp_path / "lite0.xml")
    assert xml_path.with_suffix(".bin").is_file()
    reference = Detector(model, score_threshold=0.5).predict_tensor(x)
    assert min(len(r["scores"]) for r in reference) >= TOP
    for path, backend in ((onnx_path, "onnxruntime"), (onnx_path, "openvino"), (xml_path, None)):
        net = load_exported(path, backend)
        assert net.class_names == model.class_names and net.config.image_size == 128
        got = Detector(net, score_threshold=0.5).predict_tensor(x)  # batch 2 through a batch-1 file: chunked
        assert (matched_iou(reference, got) > 0.99).all(), (path, backend)
    assert read_exported_metadata(xml_path)["format"] == "openvino"


@pytest.mark.slow
def test_int8_files_are_quantised_and_follow_fp32(lite0, calibrated):
    """Both int8 files load with their metadata, are really quantised, and track the fp32 network's raw outputs.

    Why outputs and not detections: the fixture's weights and batch-norm statistics are random, its top scores
    all saturate near 0.99 (logits ~5 over thousands of anchors), so which boxes survive NMS is decided by logit
    differences far below int8's resolution; measured matched-box IoU there is ~0.3 for both int8 files even at
    output correlation 0.99. Detection-level agreement of a trained model is what ``benchmarks/quantize.py``
    measures (AP, and IoU of int8 boxes with the fp32 ones).
    """
    import onnx

    model, x = lite0
    onnx8, ov8 = calibrated
    ops = [n.op_type for n in onnx.load(str(onnx8)).graph.node]
    assert ops.count("QuantizeLinear") > 100 and ops.count("DequantizeLinear") > 100
    ov_types = {op.get_type_name() for op in openvino_core().read_model(str(ov8)).get_ops()}
    assert "FakeQuantize" in ov_types or "FakeConvert" in ov_types
    with torch.no_grad():
        ref_cls, ref_box = RawOutputs(model)(x)
    assert read_exported_metadata(ov8)["quantization"]["bias_correction"] == "full"  # the default (chosen on val)
    for path, floor in ((onnx8, 0.97), (ov8, 0.93)):  # measured: 0.987 / 0.977 and 0.965 / 0.954
        meta = read_exported_metadata(path)
        assert meta["precision"] == "int8" and meta["class_names"] == model.class_names
        assert meta["quantization"]["calibration"]["images"] == 2
        cls, box = (t[0].reshape(ref_cls.shape[0], -1) for t in load_exported(path)(x))
        assert not torch.equal(cls, ref_cls.flatten(1))  # really int8
        for got, ref in ((cls, ref_cls), (box, ref_box)):
            corr = np.corrcoef(got.flatten(), ref.flatten())[0, 1]
            assert corr > floor, (path, corr)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    require_shared(RACCOON)
    folder = tmp_path_factory.mktemp("tiny")
    ckpt = tiny_detector_checkpoint(folder / "tiny.pt", ["raccoon"])
    return folder, ckpt


def test_openvino_outputs_are_the_callers_and_the_input_is_left_alone(tmp_path):
    """The OpenVINO wrapper lets the runtime write into arrays of its own (no copy of the runtime's reused
    buffers): a later call must not change an earlier call's outputs still held, each call's outputs are what a
    fresh copy-out of the runtime's own result holds, and the caller's input array is not changed (it is read in
    place)."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import export_openvino

    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet-lite0", num_classes=3, image_size=64).eval()
    net = load_exported(export_openvino(model, tmp_path / "tiny.xml"))
    assert net.channels_last_input
    first, second = (torch.randn(1, 64, 64, 3) for _ in range(2))  # NHWC, as the wrapper hands them over
    kept = first.clone()
    out1 = [a.copy() for a in net.run(first.numpy())]
    held = net.run(first.numpy())
    out2 = net.run(second.numpy())
    assert torch.equal(first, kept)
    assert all(np.array_equal(a, b) for a, b in zip(held, out1))  # not overwritten by the second call
    assert not np.array_equal(out2[0], held[0])
    reference = net.compiled.create_infer_request().infer({0: second.numpy()})  # a request's own buffers
    assert np.array_equal(reference[net.outputs[0]], out2[0]) and np.array_equal(reference[net.outputs[1]], out2[1])
    # Output arrays are reused (binding new memory every call is slow), but only once nothing refers to them:
    # not while a view or a tensor made from them lives.
    tensor = torch.from_numpy(held[0][:1])
    del held, out2
    for _ in range(3):
        again = net.run(second.numpy())
        assert any(again[0] is arrays[0] for arrays, _ in net._output_sets)  # a kept set, not new memory
        assert not np.shares_memory(again[0], tensor.numpy())
        del again
    assert len(net._output_sets) == 2  # the one the tensor holds and the one reused since
    assert torch.equal(tensor, torch.from_numpy(out1[0][:1]))


class RecordingRequest:
    """An OpenVINO infer request that records which of its methods ran the inferences (and forwards every call)."""

    def __init__(self, request) -> None:
        self._request, self.calls = request, []

    def __getattr__(self, name):
        if name in ("infer", "start_async", "wait"):
            self.calls.append(name)
        return getattr(self._request, name)


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_openvino_inference_runs_on_the_compiled_models_threads(tmp_path, dynamic_batch):
    """Each inference is handed to the compiled model's own threads (``start_async`` + ``wait``), not run on the
    caller's thread with ``infer`` (slower: benchmarks/openvino_request.py), with fixed and with free batches, and
    it returns what a synchronous ``infer`` of the same input gives."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import export_openvino

    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet-lite0", num_classes=3, image_size=64).eval()
    net = load_exported(export_openvino(model, tmp_path / "tiny.xml", dynamic_batch=dynamic_batch))
    assert (net._output_shapes is None) == dynamic_batch
    images = torch.randn(2 if dynamic_batch else 1, 64, 64, 3).numpy()
    reference = net.compiled.create_infer_request().infer({0: images})
    net.request = RecordingRequest(net.request)
    outputs = net.run(images)
    assert net.request.calls == ["start_async", "wait"]
    assert all(np.array_equal(reference[port], out) for port, out in zip(net.outputs, outputs))


def test_openvino_gives_anchor_maxima_and_reads_nhwc_and_detections_stay_the_same(tmp_path):
    """At load time an OpenVINO network adds each anchor's best class logit to its graph's outputs and reads NHWC
    images (the layout of the project's pre-processed batches): the raw outputs are those of the file as written,
    the maxima are theirs, and a Detector (which now hands over channels-last batches) finds the very detections
    of the file as written, with and without a score threshold."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import export_openvino
    from efficientdet.export.runtimes import OpenVinoNetwork

    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet-lite0", num_classes=3, image_size=64).eval()
    path = export_openvino(model, tmp_path / "tiny.xml")  # 774 anchors
    metadata = read_exported_metadata(path)
    as_written = OpenVinoNetwork(path, metadata, anchor_maxima=False, channels_last_input=False)
    loaded = OpenVinoNetwork(path, metadata)
    assert len(as_written.run(np.zeros((1, 3, 64, 64), np.float32))) == 2
    images = torch.rand(2, 3, 64, 64)
    (cls, *_), box = as_written(images)
    loaded_cls, loaded_box = loaded(images.contiguous(memory_format=torch.channels_last))
    assert torch.equal(loaded_cls[0], cls) and torch.equal(loaded_box[0], box[0])
    assert as_written(images)[0].anchor_maxima is None
    assert torch.equal(loaded_cls.anchor_maxima, cls.view(2, -1, 3).amax(2))
    for threshold in (0.0, 0.01):
        detectors = [Detector(net, topk=50, score_threshold=threshold) for net in (as_written, loaded)]
        assert [d.channels_last for d in detectors] == [False, True]
        found = [d(images) for d in detectors]
        assert sum(len(r["boxes"]) for r in found[0]) > 0
        for a, b in zip(*found):
            assert all(torch.equal(a[key], b[key]) for key in ("boxes", "scores", "labels"))


@pytest.mark.slow
def test_cli_export_openvino_then_predict_eval_bench(tiny_files, capsys):
    pytest.importorskip("openvino")
    folder, ckpt = tiny_files
    xml = folder / "tiny.xml"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "openvino", "--output", str(xml)]) == 0
    image = next((RACCOON / "JPEGImages").glob("*.jpg"))
    for backend in ("openvino", None):
        out = folder / f"pred_{backend}"
        args = ["predict", str(image), "--checkpoint", str(xml), "--output", str(out), "--device", "cpu"]
        assert main(args + (["--backend", backend] if backend else [])) == 0
        dets = json.loads((out / "detections.json").read_text())
        assert dets and {d["category_name"] for d in dets} == {"raccoon"}
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(xml), "--data", str(RACCOON), "--split", "test", "--device", "cpu",
            "--workers", "0", "--json", str(folder / "eval.json")]  # fmt: skip
    assert main(args) == 0
    assert 0.0 <= json.loads((folder / "eval.json").read_text())["AP"] <= 1.0
    capsys.readouterr()
    bench = ["bench", "--checkpoint", str(xml), "--iterations", "2", "--warmup", "1", "--json"]
    assert main(bench) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "openvino" and result["img_size"] == 128 and result["network"]["median_ms"] > 0


def test_openvino_computes_in_fp32_unless_asked(tiny_files, capsys):
    """OpenVINO's CPU plugin computes in bf16 by default where the CPU has bf16 units (AVX512-BF16, AMX): an fp32
    file must compute what onnxruntime computes from the same ONNX file (float rounding apart) on every CPU; bf16
    is opt-in (``compute="bf16"``, ``bench --dtype bf16``) and onnxruntime refuses it."""
    pytest.importorskip("openvino")
    from efficientdet.models.factory import load_checkpoint

    folder, ckpt = tiny_files
    onnx_path = export_onnx(load_checkpoint(ckpt), folder / "tiny_compute.onnx")
    x = torch.rand(1, 3, 128, 128) * 4 - 2
    want = [level[0].flatten() for level in load_exported(onnx_path, "onnxruntime")(x)]
    net = load_exported(onnx_path, "openvino")
    got = [level[0].flatten() for level in net(x)]
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4)
    assert str(net.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert load_exported(onnx_path, "openvino", compute="bf16").precision == "fp32"  # the file's own precision
    with pytest.raises(ValueError, match="onnxruntime runs an exported file as written"):
        load_exported(onnx_path, "onnxruntime", compute="bf16")
    with pytest.raises(ValueError, match="choose from fp32, bf16"):
        load_exported(onnx_path, "openvino", compute="fp16")


@pytest.mark.slow
def test_cli_int8_onnx_and_backend_check(tiny_files, capsys):
    folder, ckpt = tiny_files
    out = folder / "tiny_int8.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--output", str(out), "--int8", "--calibration", str(RACCOON),
            "--calibration-images", "2"]  # fmt: skip
    assert main(args) == 0
    meta = read_exported_metadata(out)
    assert meta["precision"] == "int8" and meta["quantization"]["calibration"]["images"] == 2
    assert meta["quantization"]["calibration"]["split"] == "train"
    assert "wrote" in capsys.readouterr().out
    bench = ["bench", "--checkpoint", str(out), "--backend", "onnxruntime", "--iterations", "2", "--json"]
    assert main(bench) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"
    # an OpenVINO IR cannot run in onnxruntime: one line, exit 1
    image = next((RACCOON / "JPEGImages").glob("*.jpg"))
    bad = ["predict", str(image), "--checkpoint", str(folder / "x.xml"), "--backend", "onnxruntime"]
    assert main(bad) == 1
    assert "runs on --backend openvino only" in capsys.readouterr().err


def test_cli_openvino_and_int8_exports_are_verified_before_they_are_written(tiny_files, tmp_path, monkeypatch, capsys):
    """OpenVINO IRs and int8 files go through ``--verify`` like every export: an fp32 IR must compute the eager
    network (float rounding apart), an int8 file must follow it on average (``verify.INT8``); a file that computes
    something else (here: written from a model whose weights were scrambled) fails, and nothing is left behind,
    neither the IR's .xml nor its .bin nor a temp file."""
    pytest.importorskip("openvino")
    import efficientdet.export.openvino as openvino_export
    from efficientdet.export import verify_export
    from efficientdet.models.factory import load_checkpoint

    _, ckpt = tiny_files
    xml = tmp_path / "ok" / "tiny.xml"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "openvino", "--output", str(xml)]) == 0
    out = capsys.readouterr().out
    assert "verified on 2 synthetic images against eager PyTorch (float32): class_logits" in out
    diffs = [float(word.rstrip(",")) for word in out.split("(float32): ")[1].split()[1::2]]
    assert len(diffs) == 2 and max(diffs) < 1e-4
    assert sorted(p.name for p in xml.parent.iterdir()) == ["tiny.bin", "tiny.xml"]
    assert max(verify_export(load_checkpoint(ckpt), xml).values()) < 1e-3  # the Python check on random tensors

    int8 = tmp_path / "ok" / "tiny_int8.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--output", str(int8), "--int8", "--calibration", str(RACCOON),
            "--calibration-images", "2"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "against eager PyTorch (float32) (int8: mean differences): class_logits" in out and int8.is_file()

    real_export = openvino_export.export_openvino

    def scrambled(model, path, **kwargs):
        other = load_checkpoint(ckpt)
        with torch.no_grad():
            for p in other.parameters():
                p.copy_(p.flatten()[torch.randperm(p.numel(), generator=torch.Generator().manual_seed(1))].view_as(p))
        return real_export(other, path, **kwargs)

    monkeypatch.setattr(openvino_export, "export_openvino", scrambled)
    bad = tmp_path / "bad" / "tiny.xml"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "openvino", "--output", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: verification failed, nothing written: differs from eager PyTorch" in err
    assert err.strip().endswith("(--no-verify writes the file unchecked)")
    assert len(err.strip().splitlines()) == 1 and list(bad.parent.iterdir()) == []
    # an option error is found before anything is made, the output's folder included
    never = tmp_path / "never" / "tiny.xml"
    args = ["export", "--checkpoint", str(ckpt), "--format", "openvino", "--output", str(never), "--calibration-method",
            "minmax"]  # fmt: skip
    assert main(args) == 1
    assert "--calibration-method is for --int8 only" in capsys.readouterr().err and not never.parent.exists()


def test_calibration_folder_without_images(tiny_files, tmp_path, capsys):
    folder, ckpt = tiny_files
    (tmp_path / "notes.txt").write_text("no images here")
    out = tmp_path / "m.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--output", str(out), "--int8", "--calibration", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no images" in err and str(tmp_path) in err
    assert not out.exists()
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--int8"]) == 1
    assert "--int8 needs --calibration" in capsys.readouterr().err


def test_missing_openvino_says_how_to_install(tiny_files, tmp_path, monkeypatch, capsys):
    _, ckpt = tiny_files
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    out = tmp_path / "m.xml"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "openvino", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert 'pip install "efficientdet[openvino]"' in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# OpenVINO's CPU plugin swaps the thread's alternate signal stack and, freed out of order, leaves it dangling: the next
# Python signal handler (SIGCHLD of an exiting DataLoader worker) then killed the test suite with SIGSEGV.
SIGNAL_AFTER_OPENVINO = """
import gc, os, signal, sys
signal.signal(signal.SIGUSR1, lambda *args: None)
if sys.argv[1] == "networks":  # the project's runtime wrapper, two of them freed first-in-first-out
    from efficientdet.export.runtimes import OpenVinoNetwork, read_exported_metadata
    meta = read_exported_metadata(sys.argv[2])
    a, b = OpenVinoNetwork(sys.argv[2], meta), OpenVinoNetwork(sys.argv[2], meta)
    del a; gc.collect(); del b; gc.collect()
else:  # what NNCF does inside its quantize(): Cores of its own, freed in any order
    import openvino as ov
    from efficientdet.export.openvino_core import preserved_signal_stack
    with preserved_signal_stack():
        a = ov.Core().compile_model(sys.argv[2], "CPU")
        b = ov.Core().compile_model(sys.argv[2], "CPU")
        del a
    del b
    gc.collect()
os.kill(os.getpid(), signal.SIGUSR1)  # runs the handler on the thread's alternate stack
print("alive")
"""


@pytest.mark.parametrize("case", ["networks", "cores_in_the_guard"])
def test_signals_still_work_after_openvino_plugins_are_freed(tmp_path, case):
    """Without one shared Core (networks) or the guard around NNCF (cores), these died with SIGSEGV (-11)."""
    pytest.importorskip("openvino")
    from efficientdet.export.openvino import export_openvino

    model = efficientdet.create_model("efficientdet-lite0", num_classes=1, image_size=64).eval()
    xml = export_openvino(model, tmp_path / "tiny.xml")
    out = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_OPENVINO, case, str(xml)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "alive", (out.returncode, out.stderr[-1000:])


def _activation_scales(path) -> dict[str, float]:
    """The per-tensor (scalar) scales of an int8 ONNX file: one per quantised activation."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {
        i.name: float(numpy_helper.to_array(i)) for i in graph.initializer if i.name.endswith("_scale") and not i.dims
    }


def test_onnx_calibration_method_sets_the_activation_ranges(tiny_files, tmp_path):
    """``percentile`` and ``mean-minmax`` give other activation scales than ``minmax`` on the same images, and the
    file says which.

    Written after finding that onnxruntime's Entropy method, through ``quantize_static``, returns exactly the MinMax
    scales (its histogram has no more bins than levels): a method that is accepted but changes nothing fails here.
    """
    from efficientdet.export.quantize import export_onnx_int8
    from efficientdet.models.factory import load_checkpoint

    _, ckpt = tiny_files
    model = load_checkpoint(str(ckpt)).eval()
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 3, 128, 128)).astype(np.float32) * (1 + i) for i in range(3)]
    scales = {}
    for method in ("minmax", "mean-minmax", "percentile"):
        path = export_onnx_int8(model, tmp_path / f"{method}.onnx", batches, calibration_method=method)
        assert read_exported_metadata(path)["quantization"]["activations"] == f"uint8, per tensor, {method} calibration"
        scales[method] = _activation_scales(path)
    shared = scales["minmax"].keys() & scales["percentile"].keys()
    assert len(shared) > 100
    changed = [k for k in shared if not np.isclose(scales["minmax"][k], scales["percentile"][k], rtol=1e-3)]
    # the normal-noise input's tails are clipped; most inner ranges of this random model are ReLU6's 0..6 either way
    # (measured: 5 of 227 scales differ)
    assert "images_scale" in changed and scales["percentile"]["images_scale"] < scales["minmax"]["images_scale"]
    assert len(changed) >= 3
    # mean-minmax: the input range is the mean of the three images' (x1, x2, x3 noise), 2/3 of the widest one's
    ratio = scales["mean-minmax"]["images_scale"] / scales["minmax"]["images_scale"]
    assert 0.6 < ratio < 0.73, ratio


def _quantised_tensors(path) -> tuple[set, int]:
    """The dtypes of an int8 ONNX file's activation zero points, and the largest magnitude of its int8 weights."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_point_types = {arrays[n.input[2]].dtype for n in graph.node if n.op_type == "QuantizeLinear"}
    weights = [arrays[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in arrays]
    return zero_point_types, max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.ndim == 4)


def test_activation_types_store_what_they_say_and_8_bit_weights_warn_without_vnni(
    tiny_files, tmp_path, capsys, monkeypatch
):
    """``--int8-activations``: the default (uint8) stores uint8 zero points and weights within 7 bits, ``uint8-vnni``
    uint8 with the weights' full 8 bits, ``int8`` int8 with 8 bits; each file says which and runs. Loading on an x86
    CPU without VNNI warns, naming the file, for both files with 8-bit weights: there onnxruntime's u8 x s8 kernels
    can saturate with 8-bit weights, never with 7-bit ones (their pair sums stay within int16)."""
    from efficientdet.export import runtimes

    folder, ckpt = tiny_files
    base = ["export", "--checkpoint", str(ckpt), "--int8", "--calibration", str(RACCOON), "--calibration-images", "2"]
    files = {}
    # symmetric per-channel scales: each channel's largest weight lands on the range's end (64 or 127)
    for activations, zero_type, largest_weight in ((None, np.uint8, 64), ("uint8-vnni", np.uint8, 127),
                                                   ("int8", np.int8, 127)):  # fmt: skip
        out = files[activations] = tmp_path / f"{activations}.onnx"
        assert main(base + ["--output", str(out)] + (["--int8-activations", activations] if activations else [])) == 0
        zero_point_types, largest = _quantised_tensors(out)
        assert zero_point_types == {np.dtype(zero_type)}
        assert largest == largest_weight, activations
        quant = read_exported_metadata(out)["quantization"]
        assert quant["activations"].startswith(f"{np.dtype(zero_type).name}, per tensor")
        assert quant["weights"].startswith("int8 within 7 bits" if largest_weight == 64 else "int8, per output")
        assert quant["bias_correction"] != "none"  # on by default (counted on a model with biases below)
        capsys.readouterr()
        bench = ["bench", "--checkpoint", str(out), "--backend", "onnxruntime", "--iterations", "1", "--json"]
        assert main(bench) == 0
        assert json.loads(capsys.readouterr().out)["precision"] == "int8"
    monkeypatch.setattr(runtimes, "x86_cpu_without_vnni", lambda: True)
    with pytest.warns(runtimes.Int8SaturationWarning, match="uint8-vnni.onnx: int8 file with 8-bit weights"):
        load_exported(files["uint8-vnni"], "onnxruntime")
    # S8S8 too: onnxruntime runs it through the same u8 x s8 kernels there (measured on an AVX2-only EPYC: a BCCD
    # Lite0 lost 0.113 AP on its val split with the int8 file, 0.006 with the default)
    with pytest.warns(runtimes.Int8SaturationWarning, match="int8.onnx: int8 file with 8-bit weights"):
        load_exported(files["int8"], "onnxruntime")
    # the command prints it as one line, as it prints errors (Python's format would name the library's source line)
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda *w: shown.append(warnings.formatwarning(*w[:4])))
    with warnings.catch_warnings():
        warnings.simplefilter("always", runtimes.Int8SaturationWarning)
        assert main(["bench", "--checkpoint", str(files["int8"]), "--backend", "onnxruntime", "--iterations", "1"]) == 0
    assert shown == [f"efficientdet bench: warning: {files['int8']}: int8 file with 8-bit weights on a CPU without "
                     "VNNI, where uint8 x int8 kernels can saturate (detections may differ from the file's measured "
                     "ones); the default --int8-activations uint8 (7-bit weights) cannot\n"]  # fmt: skip
    assert warnings.formatwarning.__module__ == "warnings"  # Python's own again after the command
    with warnings.catch_warnings():
        warnings.simplefilter("error", runtimes.Int8SaturationWarning)
        load_exported(files[None], "onnxruntime")
    monkeypatch.setattr(runtimes, "x86_cpu_without_vnni", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", runtimes.Int8SaturationWarning)
        load_exported(files["uint8-vnni"], "onnxruntime")


def test_calibration_method_errors(tiny_files, tmp_path, capsys):
    """An unknown method, or a method for the wrong format, or one without --int8: one line naming it, exit 1, no
    file."""
    folder, ckpt = tiny_files
    out = tmp_path / "m.onnx"
    base = ["export", "--checkpoint", str(ckpt), "--output", str(out)]
    int8 = ["--int8", "--calibration", str(RACCOON), "--calibration-images", "1"]
    cases = [
        (base + int8 + ["--calibration-method", "entropy"],
         "--calibration-method 'entropy': for ONNX int8 choose one of minmax, mean-minmax, percentile"),
        (base + int8 + ["--calibration-method", "histogram"], "for ONNX int8 choose one of"),
        (base + ["--calibration-method", "minmax"], "--calibration-method is for --int8 only"),
        (base + int8 + ["--fast-bias-correction"], "--fast-bias-correction is for --format openvino --int8 only"),
        (base + ["--int8-activations", "uint8"], "--int8-activations is for --format onnx --int8 only"),
        (base + int8 + ["--seven-bit-weights"], "--seven-bit-weights is for --format openvino --int8 only"),
        (base + ["--format", "openvino", "--output", str(out.with_suffix(".xml")), "--seven-bit-weights"],
         "--seven-bit-weights is for --format openvino --int8 only"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()
    pytest.importorskip("openvino")
    xml = tmp_path / "m.xml"
    args = ["export", "--checkpoint", str(ckpt), "--output", str(xml), "--format", "openvino", *int8,
            "--calibration-method", "percentil"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "for OpenVINO choose one of mean-minmax, minmax, percentile, histogram" in err, err
    assert not xml.exists() and not xml.with_suffix(".bin").exists()


def test_accuracy_control_errors(tiny_files, tmp_path, capsys):
    """--max-ap-drop outside openvino int8, a missing accuracy split, a drop that is not an AP difference: one line
    naming the option, exit 1, no file."""
    folder, ckpt = tiny_files
    int8 = ["--int8", "--calibration", str(RACCOON), "--calibration-images", "1"]
    onnx_out, xml = tmp_path / "m.onnx", tmp_path / "m.xml"
    ov = ["export", "--checkpoint", str(ckpt), "--output", str(xml), "--format", "openvino"]
    cases = [
        (["export", "--checkpoint", str(ckpt), "--output", str(onnx_out), *int8, "--max-ap-drop", "0.01"],
         "--max-ap-drop is for --format openvino --int8 only"),
        (ov + ["--max-ap-drop", "0.01"], "--max-ap-drop is for --format openvino --int8 only"),
        (ov + int8 + ["--max-ap-drop", "0.01"], "--accuracy-split val of --calibration"),  # raccoon has no val
        (ov + int8 + ["--max-ap-drop", "2", "--accuracy-split", "test"], "--max-ap-drop 2: an AP difference"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not onnx_out.exists() and not xml.exists()


@pytest.mark.slow
def test_accuracy_control_measures_what_int8_costs(tiny_files, tmp_path, capsys):
    """--max-ap-drop scores fp32 and int8 by this project's COCO AP on the accuracy images, through NNCF's accuracy
    control: the APs stored in the file equal `eval`'s of the fp32 file and of the written int8 file there. A
    bound the quantised model already meets reverts nothing (as many FakeQuantize ops as plain int8).

    Which layers NNCF reverts when the bound is not met is NNCF's search; on this random model every layer costs
    a little and the search runs for many minutes, so the real check of that is benchmarks/quantize.py on raccoon.
    """
    pytest.importorskip("openvino")
    from dataclasses import replace

    from efficientdet.cli.export import print_accuracy_control
    from efficientdet.data.readers import read_dataset
    from efficientdet.evaluation.validate import coco_ap, evaluate_model, predict_records
    from efficientdet.export.openvino import export_openvino

    folder, ckpt = tiny_files
    model = efficientdet.create_model("efficientdet-lite0", checkpoint=ckpt).eval()
    data = read_dataset(RACCOON, None, "train")
    data = replace(data, records=data.records[:4])
    detections, _ = predict_records(model, data.records)
    labelled = replace(data, records=[  # its own fp32 detections as labels, so that AP is not zero
        replace(r, boxes=d["boxes"][:10].numpy().astype(np.float32), labels=d["labels"][:10].numpy().astype(np.int64),
                iscrowd=np.zeros(min(10, len(d["boxes"])), bool), areas=None)
        for r, d in zip(data.records, detections)
    ])  # fmt: skip
    calib = dict(calibration=str(RACCOON), calibration_images=4)

    def ap(path):
        return evaluate_model(load_exported(path), labelled).metrics["AP"]

    def quantisers(path):
        return sum(op.get_type_name() == "FakeQuantize" for op in openvino_core().read_model(str(path)).get_ops())

    fp32_ap = ap(export_openvino(model, tmp_path / "fp32.xml"))
    plain = export_openvino(model, tmp_path / "plain.xml", int8=True, **calib)
    controlled = export_openvino(model, tmp_path / "controlled.xml", int8=True, max_ap_drop=0.99,
                                 accuracy_data=labelled, score_ap=coco_ap, **calib)  # fmt: skip
    quantization = read_exported_metadata(controlled)["quantization"]
    assert quantization["tool"] == "nncf.quantize_with_accuracy_control"
    report = quantization["accuracy_control"]
    assert report["fp32_ap"] == pytest.approx(fp32_ap, abs=1e-5)
    assert report["int8_ap"] == pytest.approx(ap(controlled), abs=1e-5)
    assert report["int8_ap"] < report["fp32_ap"], report  # int8 costs something here: the figures mean something
    assert report["reached"] and report["max_ap_drop"] == 0.99 and report["images"] == 4
    assert quantisers(controlled) == quantisers(plain) > 0
    capsys.readouterr()  # NNCF's progress bars
    print_accuracy_control(controlled)
    line = capsys.readouterr().out.strip()
    assert line.startswith("accuracy control on 4 --accuracy-split images: fp32 AP ") and "--max-ap-drop 0.99" in line

    xml = tmp_path / "cli.xml"  # the CLI reads the accuracy images from a split of --calibration
    args = ["export", "--checkpoint", str(ckpt), "--output", str(xml), "--format", "openvino", "--int8",
            "--calibration", str(RACCOON), "--calibration-images", "1", "--max-ap-drop", "0.99",
            "--accuracy-split", "test"]  # fmt: skip
    assert main(args) == 0
    report = read_exported_metadata(xml)["quantization"]["accuracy_control"]
    assert report["images"] == 40 and report["reached"]
    assert f"accuracy control on 40 --accuracy-split images: fp32 AP {report['fp32_ap']:.4f}" in capsys.readouterr().out


def test_chunked_calibration_keeps_the_minmax_ranges(tiny_files, tmp_path, monkeypatch):
    """Calibration runs in chunks of at most CALIBRATION_CHUNK batches (bounded memory); MinMax ranges merged over
    chunks of one image equal those of one pass over all four."""
    import efficientdet.export.quantize as quantize
    from efficientdet.models.factory import load_checkpoint

    _, ckpt = tiny_files
    model = load_checkpoint(str(ckpt)).eval()
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((1, 3, 128, 128)).astype(np.float32) * (4 - i) for i in range(4)]  # widest first
    assert [quantize.calibration_stride(n) for n in (4, 9, 97, 100)] == [4, 3, 1, 5]
    scales = []
    for chunk in (1, 8):
        monkeypatch.setattr(quantize, "CALIBRATION_CHUNK", chunk)
        path = quantize.export_onnx_int8(model, tmp_path / f"c{chunk}.onnx", batches, calibration_method="minmax")
        scales.append(_activation_scales(path))
    assert scales[0].keys() == scales[1].keys() and len(scales[0]) > 100
    assert all(np.isclose(scales[0][k], scales[1][k], rtol=1e-6) for k in scales[0])
    # the input's range is the first (widest, |x| up to ~17) image's, not the last chunk's (~4): merged, not replaced
    assert scales[0]["images_scale"] > 0.09


def test_calibration_sees_a_photo_as_prediction_feeds_it_to_the_network(tmp_path):
    """int8 ranges are calibrated on the network's real input: a 640x320 JPEG at 64 px is pre-processed from its
    1/8 decoding, exactly as ``Detector`` (and so ``predict`` and ``eval``) pre-processes the file."""
    from PIL import Image

    from efficientdet.export.quantize import batches_from_paths

    pixels = np.random.default_rng(4).integers(0, 255, (320, 640, 3), dtype=np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    detector = Detector(efficientdet.create_model("efficientdet-lite0", num_classes=1), image_size=64)
    expected = detector.preprocess([str(path)])[0].cpu().contiguous().numpy()
    [batch] = batches_from_paths([str(path)], 64, detector.config.mean, detector.config.std, count=1)
    np.testing.assert_array_equal(batch, expected)


def _quantised_on_the_way_to(graph, names: list[str]) -> list[str]:
    """The QuantizeLinear / DequantizeLinear nodes met walking back from ``names`` to the convs that compute them."""
    from efficientdet.export.onnx_passes import node_producers

    producers = node_producers(graph.node)
    stack, seen, found = list(names), set(), []
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type == "Conv":
            continue
        seen.add(node.name)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            found.append(node.name)
        stack.extend(node.input)
    return found


@pytest.mark.parametrize("with_nms", [False, True])
def test_int8_onnx_leaves_the_logits_and_box_codes_in_fp32(lite0, tmp_path, with_nms):
    """The heads' last convs run in fp32, and so does everything between them and the outputs: one 8-bit scale per
    tensor over all logits (or box codes) would round every score and box and clip the highest logits. (It once
    quantised the Concat of the levels' outputs, which put the outputs back on 8 bits.)"""
    import onnx

    from efficientdet.export.quantize import export_onnx_int8, postprocess_nodes

    model, x = lite0
    path = export_onnx_int8(model, tmp_path / "int8.onnx", [x[:1].numpy()], with_nms=with_nms, bias_correction=False)
    graph = onnx.load(str(path)).graph
    if with_nms:
        post = set(postprocess_nodes(graph))
        names = [i for node in graph.node if node.name in post for i in node.input]
        assert post and names
    else:
        names = ["class_logits", "box_codes"]
    assert _quantised_on_the_way_to(graph, names) == []
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(_quantised_on_the_way_to(graph, [convs[-1].input[0]])) > 0  # the walk does see quantisation


def test_quantize_benchmark_scores_the_split_it_is_given(tmp_path):
    """benchmarks/quantize.py judges int8 settings on validation data: ``--split val`` scores a dataset's own
    validation split (calibration then reads ``train``), ``--holdout-fraction`` a share of ``train`` and calibrates
    on the rest, and the two together are refused."""
    import importlib.util

    from conftest import REPO
    from test_train import raccoon_subset

    spec = importlib.util.spec_from_file_location("quantize_benchmark", REPO / "benchmarks" / "quantize.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = raccoon_subset(tmp_path, n_train=12, n_val=3)
    val_ids = (data / "ImageSets" / "Main" / "val.txt").read_text().split()

    scored, calibration_paths = bench.evaluation_data(bench.parse_args(["--data", str(data), "--split", "val"]))
    assert [Path(r.path).stem for r in scored.records] == val_ids and calibration_paths is None

    args = bench.parse_args(["--data", str(data), "--holdout-fraction", "0.25"])
    held_out, kept = bench.evaluation_data(args)
    held = {Path(r.path).stem for r in held_out.records}
    calibrated_on = {Path(p).stem for p in kept}
    assert (len(held), len(calibrated_on)) == (3, 9) and not held & calibrated_on and not held & set(val_ids)

    with pytest.raises(SystemExit) as refused:
        bench.parse_args(["--data", str(data), "--split", "val", "--holdout-fraction", "0.5"])
    assert refused.value.code == 2
