"""``efficientdet bench``: runs, reports the documented keys; the onnxruntime backend matches eager mode.

No timing is asserted (timings belong to benchmarks/speed.py, not to tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import efficientdet
from efficientdet.cli import main
from efficientdet.inference import Detector
from efficientdet.tools.bench import (
    BenchConfig,
    format_result,
    interleaved,
    percentile,
    prepare_network,
    run_benchmark,
    summarize,
    synthetic_images,
)

STAT_KEYS = {"median_ms", "p90_ms", "mean_ms", "min_ms", "throughput_ips"}
TOP_KEYS = {"model", "img_size", "batch_size", "backend", "device", "threads", "dtype", "fold", "channels_last"}
TOP_KEYS |= {"iterations", "warmup", "torch", "setup_s", "first_call_s", "warmup_s", "peak_memory_mb", "memory_kind"}
TOP_KEYS |= {"network", "end_to_end", "preprocess", "postprocess"}


def check_result(r: dict) -> None:
    assert set(r) >= TOP_KEYS
    for key in ("network", "end_to_end", "preprocess", "postprocess"):
        assert set(r[key]) >= STAT_KEYS
        assert all(r[key][k] > 0 for k in STAT_KEYS), (key, r[key])
        assert r[key]["p90_ms"] >= r[key]["median_ms"] >= r[key]["min_ms"]
    assert r["postprocess"]["candidates"] == 5000
    assert r["peak_memory_mb"] > 0 and r["first_call_s"] > 0 and r["warmup_s"] >= r["first_call_s"]


def test_cli_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    argv = ["bench", "--model", "efficientdet-lite0", "--img-size", "128", "--iterations", "2", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    check_result(r)
    assert (r["model"], r["img_size"], r["batch_size"], r["backend"]) == ("efficientdet-lite0", 128, 1, "eager")
    assert r["fold"] and r["channels_last"] and r["dtype"] == "fp32" and r["memory_kind"].startswith("cpu_")
    assert r["iterations"] == 2
    assert torch.get_num_threads() == threads  # --threads (unset here) never leaks out of the benchmark


def test_cli_bench_table_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "--model",
        "efficientdet-lite0",
        "--img-size",
        "64",
        "--iterations",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--batch-size",
        "2",
        "--no-fold",
        "--no-channels-last",
        "--dtype",
        "bf16",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "end to end" in out and "postprocess" in out and "peak memory" in out and "bf16" in out


def test_cli_bench_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", "efficientdet-d99"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_summary_statistics() -> None:
    s = summarize([0.001 * i for i in range(1, 11)], batch_size=2)
    assert s["median_ms"] == pytest.approx(5.5) and s["p90_ms"] == pytest.approx(9.1)
    assert s["min_ms"] == pytest.approx(1.0) and s["throughput_ips"] == pytest.approx(2 / 0.0055)
    assert percentile([3.0], 90) == 3.0


def test_bf16_network_runs_and_returns_float32() -> None:
    model = efficientdet.create_model("efficientdet-lite0", num_classes=3).eval()
    net = prepare_network(model, "eager", img_size=64, dtype="bf16")
    with torch.inference_mode():
        cls, box = net(torch.randn(1, 3, 64, 64))
    assert all(t.dtype == torch.float32 for t in cls + box)
    # the heads' last conv runs in float32: logits are not bf16-quantized (ties would slow the top-k down)
    assert not torch.equal(cls[0], cls[0].bfloat16().float())


def test_unknown_backend_and_dtype() -> None:
    model = efficientdet.create_model("efficientdet-lite0", num_classes=3)
    with pytest.raises(ValueError, match="backend"):
        prepare_network(model, "tensorrt")
    with pytest.raises(ValueError, match="dtype"):
        prepare_network(model, "eager", dtype="int8")
    with pytest.raises(ValueError, match="the onnxruntime backend runs fp32 only"):
        prepare_network(model, "onnxruntime", img_size=64, dtype="bf16")


def test_openvino_bf16_is_opt_in(tmp_path: Path) -> None:
    """``--dtype bf16`` with the openvino backend asks OpenVINO for bf16 float layers; fp32 stays fp32 everywhere."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from efficientdet.utils.device import cpu_has_native_bf16

    model = efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=64).eval()
    hints = {}
    for dtype in ("fp32", "bf16"):
        net = prepare_network(model, "openvino", img_size=64, threads=1, dtype=dtype, workdir=tmp_path / dtype)
        hints[dtype] = str(net.compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert hints["fp32"] == "<Type: 'float32'>"
    if cpu_has_native_bf16():  # elsewhere OpenVINO may keep f32: no bf16 units to ask for
        assert hints["bf16"] == "<Type: 'bfloat16'>"


@pytest.fixture(scope="module")
def onnx_network(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, torch.nn.Module]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet-lite0", num_classes=5).eval()
    workdir = tmp_path_factory.mktemp("ort")
    return model, prepare_network(model, "onnxruntime", img_size=128, threads=1, workdir=workdir)


def test_onnxruntime_backend_matches_eager(onnx_network: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """Same detections through the Detector: the flat ONNX outputs are read in the eager anchor order."""
    model, net = onnx_network
    images = synthetic_images(1, (100, 150))
    ref = Detector(model, image_size=128, score_threshold=0.0, max_det=50)(images)[0]
    out = Detector(net, image_size=128, score_threshold=0.0, max_det=50)(images)[0]
    assert torch.equal(out["labels"], ref["labels"])
    assert torch.allclose(out["scores"], ref["scores"], atol=1e-5)
    assert torch.allclose(out["boxes"], ref["boxes"], atol=1e-3)


def test_onnxruntime_benchmark_result(
    onnx_network: tuple[torch.nn.Module, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full benchmark on the onnxruntime backend (its export reused from the fixture to keep this fast)."""
    import efficientdet.tools.bench as bench

    _, net = onnx_network
    monkeypatch.setattr(bench, "prepare_network", lambda *args, **kwargs: net)
    cfg = BenchConfig(
        model="efficientdet-lite0", img_size=128, backend="onnxruntime", iterations=2, threads=1, num_classes=5
    )
    r = run_benchmark(cfg)
    check_result(r)
    assert r["backend"] == "onnxruntime" and not r["channels_last"]
    assert "onnxruntime" in format_result(r)


def test_bench_of_a_checkpoint_takes_its_model(tmp_path, capsys):
    """`bench --checkpoint lite0.pt` used to fail with "holds a efficientdet-lite0 model, not efficientdet-d0" unless
    --model repeated what the file says."""
    from conftest import tiny_detector_checkpoint

    ckpt = tiny_detector_checkpoint(tmp_path / "tiny.pt", ["raccoon"])
    assert main(["bench", "--checkpoint", str(ckpt), "--iterations", "1", "--warmup", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "efficientdet-lite0" and result["img_size"] == 128


def test_num_classes_with_a_checkpoint_is_one_line(tmp_path, capsys):
    """`--num-classes 5` beside a one-class checkpoint was dropped without a word (the file's classes were timed)."""
    from conftest import tiny_detector_checkpoint

    ckpt = tiny_detector_checkpoint(tmp_path / "tiny.pt", ["raccoon"])
    assert main(["bench", "--checkpoint", str(ckpt), "--num-classes", "5", "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["efficientdet bench: --num-classes is for random weights; --checkpoint's model has its own classes"]


def test_interleaved_rotates_the_order_and_rewarms_before_each_timed_call():
    """The benchmarks' interleaving (speed.py, quantize.py, openvino_request.py): each round times every function
    once, the starting function rotating, and each timed call follows ``rewarm`` untimed calls of that function."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    wall, cpu = interleaved(fns, rounds=2, rewarm=2)
    assert calls == list("aaabbbccc" + "bbbcccaaa")
    assert {k: len(v) for k, v in wall.items()} == {k: len(v) for k, v in cpu.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(t >= 0 for times in wall.values() for t in times)
