"""fp32 vs int8, onnxruntime vs OpenVINO: AP on raccoon test and network latency at batch 1, one process.

For each model (Lite0 from ``--checkpoint``, a raccoon-trained file; D0 from ``--d0-checkpoint``, ``--d0-pretrained``
or random weights) the script writes these files into ``--workdir``:

- ``onnxruntime fp32``: :func:`efficientdet.export.export_onnx`;
- ``onnxruntime int8 (METHOD)``: :func:`efficientdet.export.quantize.export_onnx_int8` (QDQ, calibrated on
  ``--calibration-images`` images of the ``train`` split: never on the images evaluated), one file per
  ``--onnx-methods`` entry;
- ``openvino fp32`` / ``openvino int8 (METHOD)``: :func:`efficientdet.export.openvino.export_openvino` (NNCF for
  int8, the same calibration images), one int8 file per ``--openvino-methods`` entry (``METHOD`` or
  ``METHOD+fast-bc`` for NNCF's fast bias correction instead of the full one, ``+7bit`` for 7-bit weights);

and evaluates each, with the eager PyTorch model (BN and SAME pads folded, channels-last: what
``Detector(optimize=True)`` runs) as the reference row, through the project's own evaluation
(:func:`efficientdet.evaluation.validate.evaluate_model`, pycocotools) on the ``test`` split: the runtime files run as
the network inside the usual pre- and post-processing (:func:`efficientdet.export.runtimes.load_exported`). AP needs
a model whose classes are the data's (a raccoon-trained checkpoint); for other weights (random or COCO D0) the AP
columns are left empty and the ``IoU vs fp32`` column (mean IoU of each fp32 detection scoring >= 0.3 with its best
same-class match, over the test images) tells how closely int8 follows fp32.

Latency: the network alone (normalised ``[1, 3, S, S]`` input to raw outputs, numpy hand-over included) with
``--threads`` threads; one call of each contestant per round, the order rotating, each timed call preceded by an
untimed one, ``--rounds`` rounds; medians. Example (this project's 2-core CPU, idle):

    python benchmarks/quantize.py --checkpoint runs/raccoon_lite0/best.pt --threads 2 --json quantize.json

Choosing the int8 settings on validation: ``--holdout-fraction F [--holdout-seed S]`` evaluates on the share of
``train`` that ``efficientdet train --val-split auto --holdout-fraction F --holdout-seed S`` holds out (the same
images: pass a checkpoint trained that way) and calibrates on the rest of ``train``; ``test`` is not read. With
several ``--onnx-methods`` / ``--openvino-methods`` the rows compare the calibration settings on those images:

    python benchmarks/quantize.py --checkpoint runs/recipe-search/frozen-448-bw200-130ep/seed0/last.pt \
        --models lite0 --holdout-fraction 0.2 --onnx-methods minmax,mean-minmax,percentile \
        --openvino-methods mean-minmax,minmax,percentile,histogram,mean-minmax+fast-bc --no-latency

Accuracy control: ``--max-ap-drop D`` adds, per ``--openvino-methods`` entry, an OpenVINO int8 file exported with
``max_ap_drop=D`` (NNCF's accuracy control, :func:`efficientdet.export.openvino.export_openvino`), scored on the
share of ``train`` that ``efficientdet train --seed S`` held out and did not train on (``--accuracy-holdout 0.1
--accuracy-seed S``, the plain command's defaults: pass the seed the checkpoint was trained with). It needs the
``test`` mode (the held-out images are then validation, ``test`` reports):

    python benchmarks/quantize.py --checkpoint runs/raccoon-plain/seed0/last.pt --models lite0 --no-latency \
        --openvino-methods mean-minmax --max-ap-drop 0.01 --accuracy-seed 0

(On raccoon's 16 held-out images that search did not converge in 30 minutes: docs/int8.md.)

A dataset with a validation split of its own that the checkpoint did not train on (BCCD's ``val``; the plain
``train`` command only evaluates on it after each epoch) judges the settings there: ``--split val`` scores on it
and calibration still reads ``train``:

    python benchmarks/quantize.py --data ../shared/datasets/bccd --split val \
        --checkpoint runs/bccd/seed0/last.pt --models lite0 --no-latency \
        --onnx-methods mean-minmax,mean-minmax+uint8-vnni,mean-minmax+int8

``--limit N`` evaluates on the first N images only (a smoke run, not a result).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from efficientdet.data.readers import read_dataset
from efficientdet.engine.tasks.detection import hold_out
from efficientdet.evaluation.validate import coco_ap, evaluate_model
from efficientdet.export import export_onnx
from efficientdet.export.openvino import export_openvino
from efficientdet.export.quantize import ACTIVATION_TYPES, DEFAULT_ACTIVATION_TYPE, batches_from_paths, export_onnx_int8
from efficientdet.export.runtimes import load_exported
from efficientdet.inference import Detector
from efficientdet.models.factory import create_model, load_checkpoint
from efficientdet.models.fuse import optimize_for_inference
from efficientdet.ops.labeler import box_iou
from efficientdet.tools.bench import interleaved

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "raccoon"
IOU_SCORE = 0.3  # fp32 detections at least this confident are the ones int8 must reproduce


def build_models(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module]]:
    models = []
    if "lite0" in args.models:
        if not args.checkpoint:
            raise SystemExit("quantize.py: Lite0 needs --checkpoint (a raccoon-trained efficientdet-lite0 file)")
        models.append(("lite0", load_checkpoint(args.checkpoint)))
    if "d0" in args.models:
        if args.d0_checkpoint:
            d0 = load_checkpoint(args.d0_checkpoint)
        elif args.d0_pretrained:
            d0 = create_model("efficientdet-d0", pretrained=True)
        else:
            torch.manual_seed(0)
            d0 = create_model("efficientdet-d0", num_classes=1)
            d0.class_names = ["raccoon"]
        models.append(("d0", d0))
    return models


def calibration_source(args: argparse.Namespace, model: torch.nn.Module, calibration_paths: list[str] | None) -> dict:
    """The calibration keywords of the int8 exports: ``train`` of ``--data``, or (validation mode) the given
    training images that are not held out, as pre-processed arrays."""
    if calibration_paths is None:
        return dict(calibration=args.data, calibration_split="train", calibration_images=args.calibration_images)
    cfg = model.config
    batches = batches_from_paths(calibration_paths, cfg.image_size, cfg.mean, cfg.std, args.calibration_images)
    return dict(calibration=batches)


def export_all(name: str, model: torch.nn.Module, args: argparse.Namespace, folder: Path,
               calibration_paths: list[str] | None) -> dict[str, Path]:  # fmt: skip
    """The files of one model (fp32 and one int8 file per calibration setting); each export's seconds printed."""
    calib = calibration_source(args, model, calibration_paths)
    jobs = {"onnxruntime fp32": lambda p: export_onnx(model, p)}
    for variant in args.onnx_methods:
        method, *options = variant.split("+")
        activations = next((o for o in options if o in ACTIVATION_TYPES), DEFAULT_ACTIVATION_TYPE)
        jobs[f"onnxruntime int8 ({variant})"] = partial(export_onnx_int8, model, calibration_method=method,
                                                        activations=activations, bias_correction="no-bc" not in options,
                                                        **calib)  # fmt: skip
    jobs["openvino fp32"] = lambda p: export_openvino(model, p)
    for variant in args.openvino_methods:
        method, *options = variant.split("+")
        unknown = set(options) - {"fast-bc", "7bit"}
        if unknown:
            raise SystemExit(f"--openvino-methods {variant}: unknown option(s) {', '.join(sorted(unknown))}")
        settings = dict(int8=True, calibration_method=method, fast_bias_correction="fast-bc" in options,
                        seven_bit_weights="7bit" in options, **calib)  # fmt: skip
        jobs[f"openvino int8 ({variant})"] = partial(export_openvino, model, **settings)
        if args.max_ap_drop is not None:
            jobs[f"openvino int8 ({variant}, max AP drop {args.max_ap_drop:g})"] = partial(
                export_openvino, model, max_ap_drop=args.max_ap_drop, accuracy_data=accuracy_images(args),
                score_ap=coco_ap, **settings,
            )  # fmt: skip
    files = {}
    for label, job in jobs.items():
        suffix = ".xml" if label.startswith("openvino") else ".onnx"
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        start = time.perf_counter()
        files[label] = Path(job(folder / f"{name}_{stem}{suffix}"))
        print(f"{name}: exported {label} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return files


def accuracy_images(args: argparse.Namespace) -> Any:
    """What ``efficientdet train --seed S`` held out of ``train`` (and so never trained on): the images accuracy
    control scores on."""
    _, held_out = hold_out(read_dataset(args.data, None, "train"), args.accuracy_holdout, args.accuracy_seed)
    if held_out is None:
        raise SystemExit(f"quantize.py: --accuracy-holdout {args.accuracy_holdout} holds out no images")
    return held_out


def mean_matched_iou(reference: list[dict], candidate: list[dict]) -> float | None:
    ious = []
    for ref, got in zip(reference, candidate):
        wh = (ref["boxes"][:, 2:] - ref["boxes"][:, :2]).clamp(min=0)
        confident = (ref["scores"] >= IOU_SCORE) & (wh.prod(1) > 0)  # boxes clipped flat have no IoU
        for i in np.flatnonzero(confident.numpy()):
            same = got["labels"] == ref["labels"][i]
            ious.append(float(box_iou(ref["boxes"][i : i + 1], got["boxes"][same]).max()) if same.any() else 0.0)
    return float(np.mean(ious)) if ious else None


def accuracy(nets: dict[str, torch.nn.Module], data: Any, paths: list[str]) -> dict[str, dict[str, Any]]:
    """AP (where the classes allow) and mean matched IoU vs the eager fp32 reference, per contestant."""
    # the same settings for all, the reference's confident boxes picked afterwards: eager against itself gives 1
    reference = Detector(nets["eager fp32"], score_threshold=0.05)(paths)
    out = {}
    for label, net in nets.items():
        row: dict[str, Any] = {"AP": None, "AP50": None}
        names = getattr(net, "class_names", None)
        if names and set(data.class_names) <= set(names):
            metrics = evaluate_model(net, data, batch_size=1, workers=0).metrics
            row.update(AP=metrics["AP"], AP50=metrics["AP50"])
        row["iou_vs_fp32"] = mean_matched_iou(reference, Detector(net, score_threshold=0.05)(paths))
        out[label] = row
    return out


def latency(nets: dict[str, torch.nn.Module], batch: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms of the network per contestant, interleaved rounds with a rotating order (see module docstring)."""
    labels = list(nets)
    with torch.inference_mode():
        for label in labels:  # warm-up: first calls allocate and compile kernels
            for _ in range(3):
                nets[label](batch)
        times, _ = interleaved({label: lambda net=nets[label]: net(batch) for label in labels}, rounds)
    return {label: statistics.median(t) * 1e3 for label, t in times.items()}


def evaluation_data(args: argparse.Namespace) -> tuple[Any, list[str] | None]:
    """The images to score on (``test``, or the held-out share of ``train``) and, in validation mode, the training
    images left to calibrate on (else None: calibration reads ``train``)."""
    if args.holdout_fraction is None:
        return read_dataset(args.data, None, args.split), None
    kept, held_out = hold_out(read_dataset(args.data, None, "train"), args.holdout_fraction, args.holdout_seed)
    if held_out is None:
        raise SystemExit(f"quantize.py: --holdout-fraction {args.holdout_fraction} holds out no images")
    return held_out, [r.path for r in kept.records]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    test, calibration_paths = evaluation_data(args)
    if args.limit:
        test.records = test.records[: args.limit]
    paths = [r.path for r in test.records]
    rows = []
    with tempfile.TemporaryDirectory(prefix="efficientdet-quantize-") as tmp:
        folder = Path(args.workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, model in build_models(args):
            model.eval()
            files = export_all(name, model, args, folder, calibration_paths)
            # eager as Detector(optimize=True) runs it: BN and SAME pads folded, channels-last
            nets: dict[str, torch.nn.Module] = {"eager fp32": optimize_for_inference(model)}
            for label, path in files.items():
                nets[label] = load_exported(path, label.split()[0], args.threads)
            scores = accuracy(nets, test, paths)
            size = model.config.image_size
            batch, _, _ = Detector(model).preprocess(paths[:1])
            ms = latency(nets, batch, args.rounds) if args.latency else {}
            split = args.split if calibration_paths is None else f"held out of train ({args.holdout_fraction})"
            for label in nets:
                rows.append({"model": name, "img_size": size, "contestant": label, **scores[label],
                             "network_ms": ms.get(label), "threads": args.threads, "evaluated_on": split,
                             "images": len(paths), "calibration_images": args.calibration_images})  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = ["| model | contestant | AP | AP50 | IoU vs fp32 | network ms |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['model']} {r['img_size']}", r["contestant"], num(r["AP"], ".4f"), num(r["AP50"], ".4f"),
                 num(r["iou_vs_fp32"], ".3f"), num(r["network_ms"], ".1f")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="raccoon-trained efficientdet-lite0 checkpoint")
    p.add_argument("--d0-checkpoint", help="efficientdet-d0 weights (default: random, one class)")
    p.add_argument("--d0-pretrained", action="store_true", help="published COCO D0 weights (no raccoon AP)")
    p.add_argument("--models", default="lite0,d0", help="comma-separated: lite0, d0 (default both)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"VOC raccoon (default {DEFAULT_DATA})")
    p.add_argument("--calibration-images", type=int, default=100, help="train images to calibrate on (default 100)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    p.add_argument(
        "--onnx-methods",
        default="mean-minmax",
        help="int8 ONNX calibration methods to compare (comma-separated: minmax, mean-minmax, percentile, each "
        "optionally +uint8, +uint8-vnni or +int8 for the activations' type (default uint8) and +no-bc without bias "
        "correction; default mean-minmax)",
    )
    p.add_argument(
        "--openvino-methods",
        default="mean-minmax",
        help="NNCF activation ranges to compare "
        "(comma-separated: mean-minmax, minmax, percentile, histogram, each optionally +fast-bc for NNCF's fast "
        "bias correction and +7bit for 7-bit weights (--seven-bit-weights); default mean-minmax)",
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        help="validation mode: score on this share of train, held out "
        "as `train --val-split auto` does, and calibrate on the rest (test is not read)",
    )
    p.add_argument("--holdout-seed", type=int, default=0, help="seed of the held-out share (default 0)")
    p.add_argument(
        "--split",
        default="test",
        help="split to score on without --holdout-fraction (default test; a dataset's own validation split, e.g. "
        "BCCD's val, where the checkpoint did not train on it, to judge settings on validation data)",
    )
    # fmt: off
    p.add_argument("--max-ap-drop", type=float, help="also export each OpenVINO int8 variant with accuracy control")
    p.add_argument("--accuracy-holdout", type=float, default=0.1,
                   help="accuracy control scores on this share of train, held out as `train` does (default 0.1)")
    p.add_argument("--accuracy-seed", type=int, default=0,
                   help="the training seed of the held-out draw (default 0: `train --seed 0`)")
    # fmt: on
    p.add_argument("--no-latency", dest="latency", action="store_false", help="accuracy only (a busy machine)")
    p.add_argument("--limit", type=int, help="evaluate on the first N images only (smoke run)")
    p.add_argument("--workdir", help="keep the exported files here (default: a temporary folder)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    for key in ("models", "onnx_methods", "openvino_methods"):
        setattr(args, key, [m.strip() for m in getattr(args, key).split(",") if m.strip()])
    if args.holdout_fraction is not None and args.split != "test":
        p.error("--split names the images to score on; --holdout-fraction scores on a share of train instead")
    if args.max_ap_drop is not None and args.holdout_fraction is not None:
        p.error("--max-ap-drop scores on held-out train images: it goes with the test mode, not --holdout-fraction")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
