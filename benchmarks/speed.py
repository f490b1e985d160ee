"""Inference speed: our EfficientDet-D0 end to end on the CPU against effdet's ``DetBenchPredict``, one process.

Every contestant gets the same input and the timings are interleaved (one call of each per round, the order
rotating from round to round), so that load from other processes and thermal drift hit all of them alike:

- ``ours <backend>``: :class:`efficientdet.inference.Detector` on uint8 HxWx3 arrays (640x480 by default):
  resize / pad / normalise, the network, top-5000 candidates, decoding, per-class NMS, boxes mapped back to the
  image. ``plain`` is the eager network as built (no BN folding, NCHW); ``eager`` folds BN and SAME padding and
  runs channels-last; ``compile`` adds ``torch.compile`` (inductor, weights frozen; compilation is warm-up and
  reported); ``onnxruntime`` runs the file of :func:`efficientdet.export.export_onnx`; ``openvino`` the OpenVINO IR
  of :func:`efficientdet.export.openvino.export_openvino`; ``onnxruntime int8`` / ``openvino int8`` the
  post-training int8 files (onnxruntime's QDQ quantiser with the default uint8 activations / NNCF;
  ``onnxruntime int8 int8`` and ``onnxruntime int8 uint8-vnni`` the other ``export --int8-activations``;
  ``openvino int8 7bit`` / ``openvino int8 8bit``, timed only when named, OpenVINO's with 7-bit weights in every
  dense conv / NNCF's default of 7 bits in the first conv only), calibrated here on ``--calibration-images``
  random images: speed does not depend on the calibration, accuracy does (``benchmarks/quantize.py`` measures
  it on real data). ``openvino bf16`` / ``openvino int8 bf16`` (by default only on CPUs with bf16 units) run the
  same files with OpenVINO computing the float layers in bf16, its own default on such CPUs (``bench --dtype
  bf16``); the project runs them in fp32 unless asked.
- ``effdet``: ``effdet.create_model("tf_efficientdet_d0", bench_task="predict")`` (random weights: speed does not
  depend on them), the same architecture with TF "SAME" padding. ``DetBenchPredict`` takes a normalised tensor,
  so it gets the same pre-processing as ours, timed inside its figure: the end-to-end ratio compares what the
  two packages do from the same uint8 array to detections.

The network alone is timed the same way (``network`` columns), and post-processing alone on the network's real
outputs with 5000 candidates reaching NMS (score threshold 0, as effdet has none): ours with the plain-torch NMS
(what runs without torchvision) and with torchvision's kernel where it is importable, effdet's with its own. End
to end, ours uses its own NMS unless ``--torchvision-nms`` (for 5000 candidates over 90 classes torchvision's
``batched_nms`` loops over the classes on CPU and measured slower). Each timed call follows one untimed call of
the same contestant (``--rewarm``), so that no contestant pays for the caches the previous one evicted.

effdet needs torchvision and timm, so it runs from a side environment, e.g.

    python3 -m venv /tmp/effdet-venv && /tmp/effdet-venv/bin/pip install torchvision timm effdet onnxruntime \\
        onnxscript && /tmp/effdet-venv/bin/pip install --no-deps -e .
    HF_HUB_OFFLINE=1 /tmp/effdet-venv/bin/python benchmarks/speed.py --threads 2

Without effdet importable it prints our figures alone. Targets (this project's 2-core CPU): eager <= 0.75x
effdet's end-to-end latency, our best backend (int8 and OpenVINO included) <= 0.20x, post-processing of 5000
candidates <= 5 ms; with ``--model efficientdet-lite0 --img-size 320``, the int8 network <= 8 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import efficientdet
from efficientdet import postprocess as post_module
from efficientdet.inference import Detector
from efficientdet.inference.detector import picture_regions
from efficientdet.tools.bench import (
    BACKENDS,
    exported_network,
    interleaved,
    prepare_network,
    summarize,
    synthetic_images,
)
from efficientdet.utils.device import cpu_has_native_bf16

INT8_CONTESTANTS = ("onnxruntime int8", "onnxruntime int8 int8", "onnxruntime int8 uint8-vnni", "openvino int8")
# OpenVINO computing the float layers in bf16 (its own default on CPUs with bf16 units; ours is fp32): timed by
# default where the CPU has such units
BF16_CONTESTANTS = ("openvino bf16", "openvino int8 bf16")
# OpenVINO int8 files with their weights' bits named (7: every dense conv within 7 bits, 8: NNCF's default, the
# first layer only), whatever the export's default: for comparing the two, so not in the default set
OPENVINO_WEIGHT_CONTESTANTS = ("openvino int8 7bit", "openvino int8 8bit")
CONTESTANTS = ("plain",) + BACKENDS + INT8_CONTESTANTS + BF16_CONTESTANTS + OPENVINO_WEIGHT_CONTESTANTS
# eager <= 0.75x and post-processing <= 5 ms: the first speed targets; best <= 0.20x with int8 / OpenVINO allowed;
# the int8 network of Lite0 at 320 px within 8 ms (checked when that is the model and size measured).
TARGETS = {"eager": 0.75, "best": 0.20, "postprocess_ms": 5.0, "lite0_320_int8_network_ms": 8.0}


def load_effdet(name: str, size: int) -> torch.nn.Module | None:
    """effdet's ``DetBenchPredict`` with random weights, or None where effdet (torchvision, timm) is missing."""
    try:
        from effdet import create_model
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        print(f"effdet not importable ({type(e).__name__}: {e}): our figures only", file=sys.stderr)
        return None
    return create_model(
        name, bench_task="predict", pretrained=False, pretrained_backbone=False, image_size=(size, size)
    ).eval()


def effdet_post(bench: torch.nn.Module) -> Callable[[list, list, int], Any]:
    """effdet's post-processing alone: what ``DetBenchPredict.forward`` runs after the network."""
    from effdet.bench import _batch_detection, _post_process

    def run(class_out: list, box_out: list, batch: int) -> Any:
        c, b, indices, classes = _post_process(
            class_out,
            box_out,
            num_levels=bench.num_levels,
            num_classes=bench.num_classes,
            max_detection_points=bench.max_detection_points,
        )
        return _batch_detection(
            batch,
            c,
            b,
            bench.anchors.boxes,
            indices,
            classes,
            None,
            None,
            max_det_per_image=bench.max_det_per_image,
            soft_nms=bench.soft_nms,
        )

    return run


def with_torch_nms(detector: Detector, images: list) -> Callable[[], Any]:
    """``detector(images)`` with our own NMS (see :func:`torch_nms`)."""

    def run() -> Any:
        with torch_nms():
            return detector(images)

    return run


@contextlib.contextmanager
def torch_nms() -> Iterator[None]:
    """Run our post-processing with its plain-torch NMS even where torchvision's kernel is importable."""
    saved = post_module._tv_batched_nms
    post_module._tv_batched_nms = None
    try:
        yield
    finally:
        post_module._tv_batched_nms = saved


def cpu_ms(seconds: list[float]) -> float:
    """Median process CPU time per call, ms."""
    return float(statistics.median(seconds)) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientdet-d0")
    p.add_argument("--effdet-model", default="tf_efficientdet_d0")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and onnxruntime (default 2)")
    p.add_argument("--iterations", type=int, default=30, help="timed rounds (default 30)")
    p.add_argument("--warmup", type=int, default=3)
    skipped = OPENVINO_WEIGHT_CONTESTANTS + (() if cpu_has_native_bf16() else BF16_CONTESTANTS)
    default = tuple(c for c in CONTESTANTS if c not in skipped)
    p.add_argument("--backends", default=",".join(default), help=f"ours to time (default {','.join(default)})")
    p.add_argument("--calibration-images", type=int, default=4,
                   help="random images calibrating the int8 contestants (default 4; speed only)")  # fmt: skip
    p.add_argument("--rewarm", type=int, default=1, help="untimed calls before each timed one (default 1)")
    p.add_argument(
        "--torchvision-nms",
        action="store_true",
        help="let our post-processing use torchvision's NMS kernel where importable (default: our own, which is "
        "what runs without torchvision and measured faster for 5000 candidates)",
    )
    p.add_argument("--no-effdet", action="store_true", help="time ours only")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in CONTESTANTS]
    if unknown:
        p.error(f"unknown backend(s) {unknown}; choose from {CONTESTANTS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, batch_size = args.img_size, args.batch_size
    load_start = os.getloadavg()[0]
    model = efficientdet.create_model(args.model)
    images = synthetic_images(batch_size, (480, 640))
    plain_detector = Detector(model, image_size=size, score_threshold=0.0)
    batch, scales, sizes = plain_detector.preprocess(images)

    network: dict[str, Callable[[], Any]] = {}
    end_to_end: dict[str, Callable[[], Any]] = {}
    setup: dict[str, dict[str, float]] = {}
    workdir = tempfile.mkdtemp(prefix="efficientdet-speed-")  # the exported ONNX file; removed once loaded
    for backend in backends:
        start = time.perf_counter()
        if backend == "plain":
            net = model.eval()
        elif "int8" in backend:
            calibration = [
                plain_detector.preprocess([image])[0].numpy()
                for image in synthetic_images(args.calibration_images, (480, 640), seed=1)
            ]
            compute = "bf16" if backend in BF16_CONTESTANTS else "fp32"
            words = backend.split()  # "onnxruntime int8 [ACTIVATIONS]", "openvino int8 [7bit|8bit|bf16]"
            activations = words[2] if words[0] == "onnxruntime" and len(words) > 2 else None  # None: the default
            seven_bit = {"7bit": True, "8bit": False}.get(words[-1])  # None: the export's default
            net = exported_network(model, words[0], Path(workdir), size, batch_size, args.threads, calibration,
                                   compute=compute, activations=activations, seven_bit_weights=seven_bit)  # fmt: skip
        elif backend in BF16_CONTESTANTS:
            net = prepare_network(model, "openvino", "cpu", size, batch_size, args.threads, dtype="bf16",
                                  workdir=workdir)  # fmt: skip
        else:
            net = prepare_network(model, backend, "cpu", size, batch_size, args.threads, workdir=workdir)
        prepared = time.perf_counter() - start
        det = Detector(net, image_size=size, score_threshold=0.0)
        name = f"ours {backend}"
        net_batch = det.model_input(batch)  # the layout its Detector feeds it (channels-last where it reads NHWC)
        network[name] = lambda net=net, net_batch=net_batch: net(net_batch)
        end_to_end[name] = (lambda det=det: det(images)) if args.torchvision_nms else with_torch_nms(det, images)
        setup[name] = {"setup_s": prepared}
    shutil.rmtree(workdir, ignore_errors=True)  # onnxruntime holds the model in memory
    bench = None if args.no_effdet else load_effdet(args.effdet_model, size)
    if bench is not None:
        network["effdet"] = lambda: bench.model(batch)
        end_to_end["effdet"] = lambda: bench(plain_detector.preprocess(images)[0])
        setup["effdet"] = {"setup_s": 0.0}

    with torch.inference_mode():
        for name in network:  # warm-up: compilation, onnxruntime's first runs, caches
            start = time.perf_counter()
            for _ in range(args.warmup):
                network[name]()
                end_to_end[name]()
            setup[name]["warmup_s"] = time.perf_counter() - start
            print(
                f"warmed up {name}: setup {setup[name]['setup_s']:.1f} s, warm-up {setup[name]['warmup_s']:.1f} s",
                file=sys.stderr,
            )
        e2e_times, e2e_cpu = interleaved(end_to_end, args.iterations, args.rewarm)
        net_times, net_cpu = interleaved(network, args.iterations, args.rewarm)

        # post-processing alone, on our network's real outputs
        cls, box = model(batch)
        anchors = plain_detector.anchors(tuple(batch.shape[-2:]))
        num_classes = model.config.num_classes

        regions = picture_regions(tuple(batch.shape[-2:]), scales, sizes)  # the picture, not the padding

        def ours_post() -> Any:
            return post_module.postprocess(cls, box, anchors, num_classes, 5000, score_threshold=0.0, regions=regions)

        def ours_post_torch() -> Any:
            with torch_nms():
                return ours_post()

        post_fns: dict[str, Callable[[], Any]] = {"ours (plain-torch NMS)": ours_post_torch}
        if post_module._tv_batched_nms is not None:
            post_fns["ours (torchvision NMS)"] = ours_post
        if bench is not None:
            e_cls, e_box = bench.model(batch)
            run_effdet_post = effdet_post(bench)
            post_fns["effdet (torchvision NMS)"] = lambda: run_effdet_post(e_cls, e_box, batch_size)
        for fn in post_fns.values():
            fn()
        post_times, post_cpu = interleaved(post_fns, args.iterations, args.rewarm)

    results = {
        name: {
            "network": {**summarize(net_times[name], batch_size), "cpu_median_ms": cpu_ms(net_cpu[name])},
            "end_to_end": {**summarize(e2e_times[name], batch_size), "cpu_median_ms": cpu_ms(e2e_cpu[name])},
            **setup[name],
        }
        for name in network
    }
    post = {
        name: {**summarize(t, batch_size), "cpu_median_ms": cpu_ms(post_cpu[name])} for name, t in post_times.items()
    }
    report = make_report(args, results, post, bench is not None, load_start)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def make_report(args: argparse.Namespace, results: dict, post: dict, have_effdet: bool, load_start: float) -> dict:
    """Results plus ratios against effdet and the target checks."""
    ratios: dict[str, dict[str, float]] = {}
    targets: dict[str, Any] = {}
    if have_effdet:
        ref_e2e = results["effdet"]["end_to_end"]["median_ms"]
        ref_net = results["effdet"]["network"]["median_ms"]
        for name, r in results.items():
            ratios[name] = {
                "end_to_end": r["end_to_end"]["median_ms"] / ref_e2e,
                "network": r["network"]["median_ms"] / ref_net,
                "end_to_end_cpu": r["end_to_end"]["cpu_median_ms"] / results["effdet"]["end_to_end"]["cpu_median_ms"],
            }
        ours = {n: v["end_to_end"] for n, v in ratios.items() if n.startswith("ours") and n != "ours plain"}
        if "ours eager" in ours:
            targets["eager"] = {"ratio": ours["ours eager"], "target": TARGETS["eager"]}
        if ours:
            best = min(ours, key=ours.get)
            targets["best"] = {"backend": best, "ratio": ours[best], "target": TARGETS["best"]}
    int8 = {n: r["network"]["median_ms"] for n, r in results.items() if "int8" in n}
    if int8 and args.model == "efficientdet-lite0" and args.img_size == 320:
        fastest = min(int8, key=int8.get)
        targets["lite0_320_int8_network_ms"] = {
            "ms": int8[fastest],
            "backend": fastest,
            "target": TARGETS["lite0_320_int8_network_ms"],
        }
    torch_post = post["ours (plain-torch NMS)"]["median_ms"]
    targets["postprocess_ms"] = {"ms": torch_post, "target": TARGETS["postprocess_ms"]}
    for t in targets.values():
        value = t.get("ratio", t.get("ms"))
        t["met"] = bool(value <= t["target"])
    return {
        "config": {
            "model": args.model,
            "effdet_model": args.effdet_model if have_effdet else None,
            "img_size": args.img_size,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "iterations": args.iterations,
            "rewarm": args.rewarm,
            "our_nms": "torchvision if importable" if args.torchvision_nms else "ours (plain torch/numpy)",
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]},
        },
        "results": results,
        "ratios_vs_effdet": ratios,
        "postprocess": post,
        "targets": targets,
    }


def print_report(r: dict) -> None:
    c = r["config"]
    print(
        f"\n{c['model']} {c['img_size']}x{c['img_size']}, batch {c['batch_size']}, {c['threads']} threads, "
        f"torch {c['torch']}, {c['iterations']} interleaved rounds; 1-min load average "
        f"{c['loadavg_1min']['start']:.1f} -> {c['loadavg_1min']['end']:.1f} on {c['cpu_count']} CPUs; "
        f"our NMS: {c['our_nms']}"
    )
    header = f"{'':24s} {'end to end ms':>26s} {'network ms':>26s} {'vs effdet (median)':>26s}"
    print(header)
    print(
        f"{'':24s} {'median':>8s} {'p90':>8s} {'cpu':>8s} {'median':>9s} {'p90':>8s} {'cpu':>8s} "
        f"{'e2e':>8s} {'net':>8s} {'e2e cpu':>8s}"
    )
    print("-" * len(header))
    for name, res in r["results"].items():
        e, n = res["end_to_end"], res["network"]
        ratio = r["ratios_vs_effdet"].get(name)
        rtext = f"{ratio['end_to_end']:7.2f}x {ratio['network']:7.2f}x {ratio['end_to_end_cpu']:7.2f}x" if ratio else ""
        print(
            f"{name:24s} {e['median_ms']:8.1f} {e['p90_ms']:8.1f} {e['cpu_median_ms']:8.1f} "
            f"{n['median_ms']:9.1f} {n['p90_ms']:8.1f} {n['cpu_median_ms']:8.1f} {rtext}"
        )
    print("(cpu: median process CPU time per call, all threads; barely affected by other jobs on the machine)")
    print("\npost-processing, 5000 candidates (median / p90 / cpu ms):")
    for name, s in r["postprocess"].items():
        print(f"  {name:26s} {s['median_ms']:8.2f} {s['p90_ms']:8.2f} {s['cpu_median_ms']:8.2f}")
    for name, res in r["results"].items():
        if res.get("warmup_s", 0) > 5:
            print(f"{name}: warm-up (incl. compilation) {res['warmup_s']:.0f} s, setup {res['setup_s']:.0f} s")
    if r["targets"]:
        print("\ntargets:")
        for key, t in r["targets"].items():
            value = f"{t['ratio']:.2f}x" if "ratio" in t else f"{t['ms']:.2f} ms"
            unit = "x" if "ratio" in t else " ms"
            extra = f" ({t['backend']})" if "backend" in t else ""
            print(f"  {key:16s} {value}{extra} <= {t['target']}{unit}: {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
