"""``efficientdet bench``: latency, throughput and peak memory of one model on one backend.

What is timed, each after a warm-up (whose length, including any compilation, is reported):

- **network**: the raw network on a normalised ``[B, 3, S, S]`` batch as the Detector hands it over (on the
  device, channels-last for a channels-last network; for onnxruntime including the tensor <-> numpy hand-over,
  which a user pays too);
- **end to end**: :class:`efficientdet.inference.Detector` on ``B`` uint8 HxWx3 arrays (640x480 by default): resize,
  pad and normalise, the network, then top-k 5000 / decode / per-class NMS / mapping back to the image's pixels.
  Image decoding is left out (it depends on the file format, not on us);
- **pre-processing** and **post-processing** alone (the Detector's own steps, ``preprocess`` and
  ``detections``, not copies of them), the latter on the network's real outputs with the score threshold at 0
  so that all 5000 candidates reach NMS (the worst case, and what effdet's ``DetBenchPredict`` does; with random
  weights every score is near the 0.01 class prior and a 0.05 threshold would leave none).

Latencies are per call (one batch): median and 90th percentile over ``iterations`` calls; throughput is images
per second at the median. Peak memory covers the timed calls only (not model building, export or compilation):
on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set size (Linux: ``VmHWM``,
restarted after the warm-up through ``/proc/self/clear_refs``), absolute and as the increase over the process
before the model was built. Why RSS: torch's CPU allocator keeps no peak counter, tracemalloc does not see its
allocations, and RSS is what the machine has to provide (Python and libraries, weights, activations, compiled
code, onnxruntime's arena). Where the restart is impossible it falls back to the whole process's ``ru_maxrss``
(``memory_kind`` says which).
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils.threads import torch_threads

BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
EXPORTED_BACKENDS = ("onnxruntime", "openvino")  # run an exported file (efficientdet.runtimes)
DTYPES = ("fp32", "bf16")
DEFAULT_MODEL = "efficientdet-d0"  # what `bench` times without a checkpoint
DEFAULT_SOURCE_SIZE = (480, 640)  # (H, W) of the synthetic uint8 image fed end to end: a typical COCO photo


@dataclass
class BenchConfig:
    """One benchmark run. ``fold`` / ``channels_last`` of ``None`` mean "the backend's measured best"."""

    model: str | None = None  # the checkpoint's model, else DEFAULT_MODEL
    img_size: int | None = None  # default: the model's own
    batch_size: int = 1
    backend: str = "eager"
    threads: int | None = None
    device: str = "cpu"
    iterations: int = 20
    warmup: int = 3
    dtype: str = "fp32"
    fold: bool | None = None
    channels_last: bool | None = None
    num_classes: int = 90
    checkpoint: str | None = None
    pretrained: bool = False  # the published COCO weights of `model` (speed does not depend on them)
    source_size: tuple[int, int] = DEFAULT_SOURCE_SIZE
    topk: int = 5000
    seed: int = 0


def resolve_optimizations(
    backend: str, fold: bool | None, channels_last: bool | None, device_type: str = "cpu"
) -> tuple[bool, bool]:
    """Defaults chosen by measurement (README, ``benchmarks/speed.py``).

    Folding (BN into convs, SAME pads into conv/pool padding) never hurts and is on unless turned off.
    Channels-last pays in eager mode and under ``torch.compile`` on CPU (oneDNN's convs, the depthwise ones above
    all, run NHWC natively); onnxruntime gets an exported graph and picks its own layout, so there it is moot. On
    CUDA it is off unless asked for: this project had no GPU to measure it on.
    """
    fold = True if fold is None else fold
    cl = (backend not in EXPORTED_BACKENDS and device_type == "cpu") if channels_last is None else channels_last
    return fold, cl


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); ``q`` in [0, 100]."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(seconds: list[float], batch_size: int) -> dict[str, float]:
    """``median_ms``, ``p90_ms``, ``mean_ms``, ``min_ms`` and ``throughput_ips`` (images/s at the median)."""
    med = float(np.median(seconds))
    return {
        "median_ms": med * 1e3,
        "p90_ms": percentile(seconds, 90) * 1e3,
        "mean_ms": float(np.mean(seconds)) * 1e3,
        "min_ms": float(np.min(seconds)) * 1e3,
        "throughput_ips": batch_size / med if med > 0 else float("inf"),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], iterations: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``iterations`` calls of ``fn`` (synchronised on CUDA so kernels are counted)."""
    out = []
    for _ in range(iterations):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return out


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, rewarm: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per call of each function, one timed call of each per round, order rotating.

    Each timed call follows ``rewarm`` untimed calls of the same function: without them every call would start
    with caches and thread pools left cold by the previous contestant (measured: an onnxruntime end-to-end call
    took ~85 ms interleaved without it against ~64 ms run alone), which a program running one model over and over
    never sees. CPU time (all threads of the process) is reported beside wall time because at ``--threads 1`` it
    barely depends on what else runs on the machine (at 2 threads it includes OpenMP's spin-waiting).
    """
    names = list(fns)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            for _ in range(rewarm):
                fns[name]()
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return wall, cpu


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _proc_status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` (current / peak resident set) of this process from /proc, MiB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count from the current RSS (Linux ``clear_refs``), so that model building, export or
    compilation done before is not counted; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_mb("VmHWM") is not None


def exported_network(
    model: nn.Module,
    backend: str,
    folder: Path,
    img_size: int,
    batch_size: int,
    threads: int | None,
    calibration: Sequence[np.ndarray] | None = None,
    compute: str = "fp32",
    activations: str | None = None,
    seven_bit_weights: bool | None = None,
) -> nn.Module:
    """``model`` exported (fixed size and batch) into ``folder`` and opened in ``backend`` (onnxruntime: an ONNX
    file; openvino: an IR, fp32 weights): :class:`efficientdet.runtimes.ExportedNetwork`, raw outputs as one flat
    level each, the layout post-processing reads. onnxruntime's output buffers are handed over without a copy.
    With ``calibration`` (pre-processed ``[batch_size, 3, S, S]`` arrays) the file is post-training int8
    (onnxruntime's QDQ quantiser, ``activations`` one of its ``ACTIVATION_TYPES``, by default its default / NNCF,
    ``seven_bit_weights`` as in :func:`~efficientdet.export.openvino.export_openvino`, by default its default).
    ``compute="bf16"``: OpenVINO computes the float layers in bf16."""
    from ..export.exporter import export_onnx
    from ..export.runtimes import load_exported

    name = f"{model.config.name}_{img_size}_b{batch_size}" + ("_int8" if calibration is not None else "")
    if backend == "openvino":
        from ..export.openvino import export_openvino

        weights = {} if seven_bit_weights is None else {"seven_bit_weights": seven_bit_weights}
        name += "" if seven_bit_weights is None else ("_7bit" if seven_bit_weights else "_8bit")
        path = export_openvino(model, folder / f"{name}.xml", int8=calibration is not None, calibration=calibration,
                               img_size=img_size, batch_size=batch_size, **weights)  # fmt: skip
    elif calibration is not None:
        from ..export.quantize import DEFAULT_ACTIVATION_TYPE, export_onnx_int8

        activations = activations or DEFAULT_ACTIVATION_TYPE
        path = export_onnx_int8(model, folder / f"{name}_{activations}.onnx", calibration, img_size=img_size,
                                batch_size=batch_size, activations=activations)  # fmt: skip
    else:
        path = export_onnx(model, folder / f"{name}.onnx", img_size=img_size, batch_size=batch_size)
    return load_exported(path, backend, threads, compute)


class AutocastNetwork(nn.Module):
    """Runs the wrapped network under bf16 autocast and returns float32 outputs (opt-in: changes results).

    The heads' last conv runs in float32 where the heads are folded (:class:`~efficientdet.fuse.FoldedPredictionNet`):
    bf16 logits (8 significant bits) tie by the thousands, and the exact top-5000 selection of post-processing
    then has to rank far more candidates (measured on D0: post-processing 7 ms -> 105 ms).
    """

    def __init__(self, model: nn.Module, device_type: str) -> None:
        super().__init__()
        from ..models.fuse import FoldedPredictionNet

        self.net = model
        self.config = model.config
        self.device_type = device_type
        for m in model.modules():
            if isinstance(m, FoldedPredictionNet):
                m.float32_outputs = True

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            cls, box = self.net(images)
        return [c.float() for c in cls], [b.float() for b in box]


def prepare_network(
    model: nn.Module,
    backend: str = "eager",
    device: str | torch.device = "cpu",
    img_size: int | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    fold: bool | None = None,
    channels_last: bool | None = None,
    dtype: str = "fp32",
    workdir: str | Path | None = None,
) -> nn.Module:
    """The network as ``backend`` runs it: an ``nn.Module`` with ``config`` returning ``(class_outputs, box_outputs)``.

    Folds BN / switches to channels-last as :func:`resolve_optimizations` says; ``compile`` wraps it in
    ``torch.compile`` (inductor; compiled lazily at the first call, which is why the warm-up is timed);
    ``onnxruntime`` / ``openvino`` export it (fixed input size and batch) to ``workdir`` and open it on the CPU.
    """
    from ..models.fuse import fold_batchnorm, fold_same_padding, optimize_for_inference

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    device = torch.device(device)
    fold, cl = resolve_optimizations(backend, fold, channels_last, device.type)
    model = model.to(device).eval()
    if backend in EXPORTED_BACKENDS:
        if device.type != "cpu":
            raise ValueError(f"the {backend} backend runs on the CPU only (use --device cpu)")
        if dtype != "fp32" and backend != "openvino":
            raise ValueError(f"the {backend} backend runs fp32 only (int8: bench an exported int8 file)")
        size = img_size or model.config.image_size
        if not isinstance(size, int):
            raise ValueError(f"the {backend} backend needs a square --img-size")
        if fold and backend == "onnxruntime":  # the OpenVINO export folds the batch norms itself
            model = fold_same_padding(fold_batchnorm(model), inplace=True)
        folder = Path(workdir or tempfile.mkdtemp(prefix="efficientdet-bench-"))
        return exported_network(model, backend, folder, size, batch_size, threads, compute=dtype)
    if fold:
        model = optimize_for_inference(model, channels_last=cl)
    elif cl:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    net: nn.Module = AutocastNetwork(model, device.type) if dtype == "bf16" else model
    if backend == "compile":
        # freezing: weights become constants, so inductor folds them and pre-packs them for oneDNN's convs.
        return torch.compile(net, dynamic=False, options={"freezing": True} if device.type == "cpu" else None)
    return net


def synthetic_images(batch_size: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``batch_size`` random uint8 HxWx3 images (content does not change the cost of resize / normalise)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(batch_size)]


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run one benchmark and return the result dict (the JSON that ``efficientdet bench --json`` prints)."""
    from ..export.runtimes import is_exported_file, load_exported, resolve_backend
    from ..inference.detector import Detector, picture_regions
    from ..models.factory import create_model, load_checkpoint
    from ..models.segmenter import task_mismatch
    from ..models.weights import CheckpointError
    from ..ops.postprocess import _tv_batched_nms
    from ..utils.device import resolve_device

    device = resolve_device(cfg.device)
    rss_before = _proc_status_mb("VmRSS") or max_rss_mb()
    peak_reset = False
    with torch_threads(cfg.threads), tempfile.TemporaryDirectory(prefix="efficientdet-bench-") as workdir:
        torch.manual_seed(cfg.seed)
        exported = is_exported_file(cfg.checkpoint)
        if exported:  # the file is the network: no export, no folding; eager (the default) means "by suffix"
            backend = resolve_backend(cfg.checkpoint, None if cfg.backend == "eager" else cfg.backend)
            cfg = dataclasses.replace(cfg, backend=backend)
            start = time.perf_counter()
            model = load_exported(cfg.checkpoint, backend, cfg.threads, cfg.dtype)
            setup_s = time.perf_counter() - start
        elif cfg.checkpoint:
            model = load_checkpoint(cfg.checkpoint, cfg.model)
            problem = task_mismatch(model, "detection", "bench times detection models only")
            if problem:
                raise CheckpointError(f"{cfg.checkpoint}: {problem}")
        elif cfg.pretrained:
            model = create_model(cfg.model or DEFAULT_MODEL, pretrained=True)
        else:
            model = create_model(cfg.model or DEFAULT_MODEL, num_classes=cfg.num_classes)
        size = cfg.img_size or model.config.image_size
        fold, cl = resolve_optimizations(cfg.backend, cfg.fold, cfg.channels_last, device.type)
        if exported:
            net = model
        else:
            start = time.perf_counter()
            net = prepare_network(
                model, cfg.backend, device, size, cfg.batch_size, cfg.threads, fold, cl, cfg.dtype, workdir
            )
            setup_s = time.perf_counter() - start
        detector = Detector(net, device=device, image_size=size, score_threshold=0.0, topk=cfg.topk)
        images = synthetic_images(cfg.batch_size, cfg.source_size, cfg.seed)
        num_classes = model.config.num_classes
        with torch.inference_mode():
            batch, scales, sizes = detector.preprocess(images)
            start = time.perf_counter()
            net(batch)
            _sync(device)
            first_call_s = time.perf_counter() - start
            for _ in range(max(cfg.warmup - 1, 0)):
                net(batch)
            detector(images)  # warms the end-to-end path (anchor cache, post-processing)
            _sync(device)
            warmup_s = time.perf_counter() - start
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            else:
                peak_reset = reset_peak_rss()

            network = time_calls(lambda: net(batch), cfg.iterations, device)
            end_to_end = time_calls(lambda: detector(images), cfg.iterations, device)
            pre = time_calls(lambda: detector.preprocess(images), cfg.iterations, device)
            cls, box = net(batch)
            input_size = tuple(batch.shape[-2:])
            anchors = detector.anchors(input_size)
            regions = picture_regions(input_size, scales, sizes)

            def post() -> Any:  # the Detector's own post-processing step, on the network's real outputs
                return detector.detections(cls, box, input_size, regions)

            post_times = time_calls(post, cfg.iterations, device)
        candidates = min(cfg.topk, int(anchors.shape[0]) * num_classes)
    if device.type == "cuda":
        peak = {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "memory_kind": "cuda_max_allocated"}
    else:
        rss = (_proc_status_mb("VmHWM") if peak_reset else None) or max_rss_mb()
        kind = "cpu_peak_rss_timed" if peak_reset else "cpu_max_rss_process"
        peak = {"peak_memory_mb": rss, "peak_memory_delta_mb": rss - rss_before, "memory_kind": kind}
    return {
        "model": model.config.name,
        "img_size": size,
        "batch_size": cfg.batch_size,
        "backend": cfg.backend,
        "device": str(device),
        "threads": cfg.threads or torch.get_num_threads(),
        "dtype": cfg.dtype,
        "fold": fold,
        "channels_last": cl and cfg.backend not in EXPORTED_BACKENDS,
        "precision": getattr(net, "precision", cfg.dtype),
        "iterations": cfg.iterations,
        "warmup": cfg.warmup,
        "torch": torch.__version__,
        "setup_s": setup_s,
        "first_call_s": first_call_s,
        "warmup_s": warmup_s,
        "network": summarize(network, cfg.batch_size),
        "end_to_end": summarize(end_to_end, cfg.batch_size),
        "preprocess": summarize(pre, cfg.batch_size),
        "postprocess": {
            **summarize(post_times, cfg.batch_size),
            "candidates": candidates,
            "nms": "torchvision" if _tv_batched_nms is not None else "torch",
        },
        **peak,
    }


def format_result(r: dict[str, Any]) -> str:
    """A small human-readable table of one result."""
    opts = [o for o, on in (("BN/padding folded", r["fold"]), ("channels-last", r["channels_last"])) if on]
    lines = [
        f"{r['model']} {r['img_size']}x{r['img_size']} batch {r['batch_size']}, backend {r['backend']}"
        f"{' (' + ', '.join(opts) + ')' if opts else ''}, {r['device']}, {r['threads']} threads, {r['dtype']}, "
        f"torch {r['torch']}",
        f"{'':16s} {'median ms':>10s} {'p90 ms':>10s} {'images/s':>10s}",
    ]
    for key, label in (
        ("network", "network"),
        ("end_to_end", "end to end"),
        ("preprocess", "  preprocess"),
        ("postprocess", "  postprocess"),
    ):
        s = r[key]
        lines.append(f"{label:16s} {s['median_ms']:10.2f} {s['p90_ms']:10.2f} {s['throughput_ips']:10.2f}")
    post = r["postprocess"]
    lines.append(f"post-processing: top-{post['candidates']} candidates, NMS kernel: {post['nms']}")
    lines.append(f"warm-up {r['warmup_s']:.2f} s (first call {r['first_call_s']:.2f} s, setup {r['setup_s']:.2f} s)")
    if r["memory_kind"] == "cuda_max_allocated":
        lines.append(f"peak memory {r['peak_memory_mb']:.0f} MiB (torch.cuda.max_memory_allocated, timed calls)")
    elif r["memory_kind"] == "cpu_peak_rss_timed":
        lines.append(
            f"peak memory {r['peak_memory_mb']:.0f} MiB (process peak RSS during the timed calls; "
            f"+{r['peak_memory_delta_mb']:.0f} MiB over the process before the model was built)"
        )
    else:
        lines.append(
            f"peak memory {r['peak_memory_mb']:.0f} MiB (process max RSS; "
            f"+{r['peak_memory_delta_mb']:.0f} MiB over the process before the model)"
        )
    return "\n".join(lines)
