"""The ``efficientdet`` command."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..models.config import EFFDET_PARAMS, aspect_pairs, get_config, list_models
from .argtypes import non_negative_int, positive_int


def _pct(ours: float, ref: float | None) -> str:
    return f"{100.0 * (ours - ref) / ref:+.2f}%" if ref else ""


def cmd_info(args: argparse.Namespace) -> int:
    from ..models.flops import model_stats

    names = args.names or list_models()
    unknown = [n for n in names if n.lower() not in list_models()]
    if unknown:
        print(f"efficientdet info: unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}",
              file=sys.stderr)  # fmt: skip
        return 2
    overrides = {"num_classes": args.num_classes}
    rows = [model_stats(get_config(name, **overrides), args.img_size) for name in names]
    if args.json:
        keep = ("name", "params", "flops", "image_size")
        print(json.dumps([{k: r[k] for k in keep} for r in rows], indent=2))
        return 0
    header = (
        f"{'model':20s} {'backbone':19s} {'input':>5s} {'BiFPN WxD':>9s} {'head':>4s} {'fusion':>7s} {'levels':>6s} "
        f"{'params':>12s} {'paper':>7s} {'diff':>7s} {'effdet':>7s} {'FLOPs':>9s} {'paper':>7s} {'diff':>7s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        paper_p = r["paper_params"] if args.num_classes == 90 else None
        effdet_p = EFFDET_PARAMS.get(r["name"]) if args.num_classes == 90 else None
        same_size = args.img_size is None
        paper_f = r["paper_flops"] if (same_size and args.num_classes == 90) else None
        effdet_col = ("exact" if effdet_p == r["params"] else _pct(r["params"], effdet_p)) if effdet_p else ""
        size = r["image_size"] if isinstance(r["image_size"], int) else "x".join(map(str, r["image_size"]))
        bifpn = f"{r['fpn_channels']}x{r['fpn_repeats']}"
        paper_p_text = f"{paper_p / 1e6:.1f}M" if paper_p else ""
        paper_f_text = f"{paper_f / 1e9:.2f}B" if paper_f else ""
        print(
            f"{r['name']:20s} {r['backbone']:19s} {size!s:>5s} {bifpn:>9s} "
            f"{r['head_repeats']:>4d} {r['fusion']:>7s} {r['levels']:>6s} {r['params']:>12,d} "
            f"{paper_p_text:>7s} {_pct(r['params'], paper_p):>7s} {effdet_col:>7s} "
            f"{r['flops'] / 1e9:>8.2f}B {paper_f_text:>7s} {_pct(r['flops'], paper_f):>7s}"
        )
    print(
        "\nFLOPs: multiply-adds of convs/linears at the input size shown (the paper's convention); "
        "paper: SPEC section 1 (Lite params rounded to 0.1M); effdet: the effdet package's exact count."
    )
    return 0


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def anchor_overrides(aspect_ratios: Sequence[float] | None, anchor_scale: float | None) -> dict[str, Any]:
    """``--aspect-ratios`` (w/h) and ``--anchor-scale`` as model config overrides; a ValueError names a bad flag."""
    overrides: dict[str, Any] = {}
    if aspect_ratios is not None:
        try:
            overrides["aspect_ratios"] = aspect_pairs(aspect_ratios)
        except ValueError as e:
            raise ValueError(f"--aspect-ratios: {e}") from None
    if anchor_scale is not None:
        if not (math.isfinite(anchor_scale) and anchor_scale > 0):
            raise ValueError(f"--anchor-scale must be finite and > 0, got {anchor_scale}")
        overrides["anchor_scale"] = float(anchor_scale)
    return overrides


def _train_config(args: argparse.Namespace):
    from ..engine.train import TrainConfig, resume_config

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    if args.scale_range is not None:
        given["scale_range"] = tuple(args.scale_range)
    if str(given.get("val_split", "")).lower() == "none":
        given["val_split"] = None
    anchors = anchor_overrides(args.aspect_ratios, args.anchor_scale)
    if anchors and args.resume:
        raise ValueError("--aspect-ratios / --anchor-scale cannot change on --resume: the run keeps its anchors")
    if anchors:
        given["model_overrides"] = anchors
    if args.resume:
        from ..engine.recipe import RESUME_CHANGEABLE

        changes = {k: v for k, v in given.items() if k in RESUME_CHANGEABLE}
        return resume_config(args.resume, **changes)
    return TrainConfig(**given)


def cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "task", "detection") == "segmentation":
        if args.pretrained:
            print("efficientdet train: --pretrained: no segmentation weights are published; use --checkpoint or "
                  "--pretrained-backbone", file=sys.stderr)  # fmt: skip
            return 2
        from .segmentation import run_train

        return run_train(args)
    from ..engine.train import TrainingError, train
    from ..models.weights import CheckpointError

    _setup_logging()
    if args.data is None and not args.resume:
        print("efficientdet train: --data is required (or --resume RUN/last.pt); `efficientdet demo` trains on a "
              "built-in synthetic dataset", file=sys.stderr)  # fmt: skip
        return 2
    try:
        result = train(_train_config(args))
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"efficientdet train: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, from rank 0
        print(f"best AP {result['best_ap']:.4f}; checkpoints: {result['best']} (best), {result['last']} (last)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if getattr(args, "task", "detection") == "segmentation":
        if args.pretrained:
            print("efficientdet eval: --pretrained: no segmentation weights are published; use --checkpoint",
                  file=sys.stderr)  # fmt: skip
            return 2
        from .segmentation import run_eval

        return run_eval(args)
    if args.data is None:
        print("efficientdet eval: the following arguments are required: --data", file=sys.stderr)
        return 2
    from ..data.readers import read_dataset
    from ..engine.train import TrainingError, resolve_device
    from ..evaluation.coco import format_metrics, format_per_class
    from ..evaluation.validate import evaluate_model
    from ..models.weights import CheckpointError
    from .weights_options import load_model_from_options

    _setup_logging()
    try:
        device = resolve_device(args.device)
        model = load_model_from_options(args.checkpoint, args.model, args.pretrained, args.backend).to(device)
        data = read_dataset(args.data, args.format, args.split)
        if model.class_names:
            data = data.with_class_names(model.class_names, model.category_ids)
    except (CheckpointError, TrainingError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"efficientdet eval: {e}", file=sys.stderr)
        return 1
    if model.config.num_classes != len(data.class_names):
        print(f"efficientdet eval: the model predicts {model.config.num_classes} classes, the data has "
              f"{len(data.class_names)} ({', '.join(data.class_names[:5])}...)", file=sys.stderr)  # fmt: skip
        return 1
    if not len(data):
        print(f"efficientdet eval: {args.data}: split {args.split!r} has no images", file=sys.stderr)
        return 1
    dets_path = None
    if args.json:
        base, _ = os.path.splitext(args.json)
        dets_path = base + "_detections.json"
    result = evaluate_model(
        model, data, args.img_size, args.batch_size, args.workers, device, args.json, dets_path, nms=args.nms
    )
    print(format_per_class(result.coco))
    print(format_metrics(result.metrics))
    if result.unreadable_images:
        print(f"efficientdet eval: {result.unreadable_images} of {len(data)} images could not be read (named in the "
              "warnings above); their boxes count as missed", file=sys.stderr)  # fmt: skip
    if args.plots:
        from ..evaluation.plots import write_evaluation_plots

        plots = write_evaluation_plots(result.coco, data, result.detections, args.plots)
        print(f"wrote PR curves, F1 curve (best mean F1 {plots.best_f1:.3f} at score {plots.best_threshold:.2f}) "
              f"and confusion matrix to {args.plots}")  # fmt: skip
    if args.json:
        print(f"wrote {args.json} and {dets_path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..tools.demo import run_demo

    _setup_logging()
    run_demo(args.output or "runs/demo", epochs=args.epochs, seed=args.seed, workers=args.workers)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..tools.data_check import check_dataset, format_report, save_plots, write_json

    try:
        default = get_config(args.model)
        config = default.replace(**anchor_overrides(args.aspect_ratios, args.anchor_scale))
        check = check_dataset(args.data, args.format, args.splits, config, args.img_size, default)
    except KeyError as e:  # an unknown model name
        print(f"efficientdet check-data: {e.args[0]}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"efficientdet check-data: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(format_report(check))
    if args.json:
        write_json(check, args.json)
        print(f"wrote {args.json}")
    if args.plots:
        print("wrote " + ", ".join(str(p) for p in save_plots(check, args.plots)))
    return 0


def _add_anchor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aspect-ratios", type=float, nargs="+", metavar="R",
                   help="anchor width/height ratios (default: the model's, 1.0 2.0 0.5); "
                        "`efficientdet check-data` proposes some for your data")  # fmt: skip
    p.add_argument("--anchor-scale", type=float, metavar="F",
                   help="anchor side in strides of its level (default: the model's; Lite0: 3, D0: 4)")  # fmt: skip


def _add_check_data_parser(sub: Any) -> None:
    p = sub.add_parser("check-data", help="labels, box sizes and anchor coverage of a dataset, and better anchors")
    p.add_argument("--data", required=True, help="dataset: VOC root, YOLO root (data.yaml) or COCO json / folder")
    p.add_argument("--format", choices=["voc", "coco", "yolo"], help="dataset format (default: detected)")
    p.add_argument("--splits", nargs="+", metavar="SPLIT",
                   help="splits to check (default: those of train, val, test, trainval that exist)")  # fmt: skip
    p.add_argument("--model", default="efficientdet-lite0", help="whose anchors (default efficientdet-lite0)")
    p.add_argument("--img-size", type=int, help="input size (default: the model's own)")
    _add_anchor_args(p)
    p.add_argument("--json", help="write the whole report here, every box without a matching anchor included")
    p.add_argument("--plots", metavar="DIR", help="write <split>_boxes.png histograms into this folder")
    p.set_defaults(func=cmd_check_data)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (default efficientdet-lite0)")
    p.add_argument("--data", help="dataset: VOC root, YOLO root (data.yaml) or COCO json / folder")
    p.add_argument("--format", choices=["voc", "coco", "yolo"], help="dataset format (default: detected)")
    p.add_argument("--train-split", help="split to train on (default train)")
    p.add_argument("--val-split", help="split evaluated after each epoch (default val; 'none' to skip)")
    p.add_argument("--epochs", type=int, help="epochs (default 60)")
    p.add_argument("--batch-size", type=int,
                   help="images per step per process (default 8); default lr 0.24 * global batch / 64")  # fmt: skip
    p.add_argument("--img-size", type=int, help="input size (default: the model's own)")
    p.add_argument("--output", help="folder for last.pt, best.pt, metrics.csv, metrics.png (default runs/train)")
    p.add_argument("--lr", type=float, help="peak lr (default 0.24 * batch / 64; paper, COCO: 0.08 * batch / 64)")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up length (default 1)")
    p.add_argument("--scale-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="scale-jitter factor range (default 0.5 1.5; the paper's COCO setting is 0.1 2.0)")  # fmt: skip
    p.add_argument("--box-loss-weight", type=float, help="weight of the box loss against the class loss (default 50)")
    _add_anchor_args(p)
    p.add_argument("--pretrained-backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet backbone weights for a fresh start (detection default: on; packaged for Lite0-2, "
                        "else downloaded once; segmentation default: off)")  # fmt: skip
    p.add_argument("--checkpoint", help="start from these weights, a file or URL (classes it knows by name keep "
                                        "their class-head rows, the others start afresh)")  # fmt: skip
    p.add_argument("--pretrained", action="store_true", default=None,
                   help="start from the published COCO weights of --model (downloaded once)")  # fmt: skip
    p.add_argument("--resume", help="continue the run saved in this last.pt exactly where it stopped")
    p.add_argument("--freeze-backbone", action="store_true", default=None, help="train only BiFPN and heads")
    p.add_argument("--trainable-stages", type=int, metavar="N",
                   help="with --freeze-backbone: the convs of the backbone's last N of 7 stages train too, its BN "
                        "layers stay frozen (default 0)")  # fmt: skip
    p.add_argument("--workers", type=int, help="data-loading processes (default 2)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision: auto (default: CUDA only), off, bf16 (CPU too), fp16 (CUDA)")  # fmt: skip
    p.add_argument("--eval-interval", type=int, help="evaluate every N epochs (default 1)")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (smoke tests)")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun: BN statistics over the global batch (the paper's setting)")  # fmt: skip
    p.add_argument("--grad-checkpoint", action="store_true", default=None,
                   help="recompute backbone/BiFPN activations in backward: less memory, slower steps")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC tensors in training (default on: ~1.45x faster on this project's CPU)")  # fmt: skip
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="write TensorBoard logs to OUTPUT/tensorboard: losses and lr per step, metrics per epoch, "
                        "validation PR curves and drawn predictions")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from ..export.runtimes import add_backend_option
    from .segmentation import add_segmentation_eval_args, add_segmentation_train_args
    from .weights_options import add_weights_options

    parser = argparse.ArgumentParser(prog="efficientdet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameters, FLOPs and structure of the model family")
    info.add_argument("names", nargs="*", metavar="NAME", help="models to show (default: all)")
    info.add_argument("--json", action="store_true", help="print a JSON list of {name, params, flops, image_size}")
    info.add_argument("--num-classes", type=int, default=90, help="class count (default 90, COCO)")
    info.add_argument("--img-size", type=int, default=None, help="count FLOPs at this input size instead")
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train on a COCO / VOC / YOLO dataset (no --data: the synthetic demo)")
    _add_train_args(train)
    add_segmentation_train_args(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="COCO metrics of a checkpoint on a dataset split")
    add_weights_options(ev)
    ev.add_argument("--model", help="model name: needed for effdet's files and for --pretrained")
    add_backend_option(ev)  # an exported --checkpoint (.onnx, .xml): efficientdet.runtimes
    ev.add_argument("--data", help="dataset path (segmentation: a VOC root, or use --images/--masks)")
    ev.add_argument("--format", choices=["voc", "coco", "yolo"], help="dataset format (default: detected)")
    ev.add_argument("--split", default="val", help="split to evaluate (default val)")
    ev.add_argument("--json", help="write the metrics, the per-class table and the detections' path here")
    ev.add_argument("--plots", metavar="DIR",
                    help="write PR curves per class (IoU 0.5, 0.75), the F1-vs-score curve and the confusion matrix "
                         "(IoU 0.5, at the best-F1 score; background row/column) into DIR")  # fmt: skip
    ev.add_argument("--img-size", type=positive_int, help="input size (default: the model's own)")
    ev.add_argument(
        "--nms",
        choices=["hard", "soft"],
        default="hard",
        help="hard: NMS at IoU 0.5 (effdet's default); soft: Gaussian soft-NMS (the official evaluation)",
    )
    ev.add_argument("--batch-size", type=positive_int, default=8)
    ev.add_argument("--workers", type=non_negative_int, default=2)
    ev.add_argument("--device", default="auto")
    add_segmentation_eval_args(ev)
    ev.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", help="generate a synthetic dataset, train a few minutes on CPU, evaluate, draw")
    demo.add_argument("--output", help="output folder (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=25)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(func=cmd_demo)
    _add_check_data_parser(sub)
    from ..inference.predict import add_parser as add_predict_parser

    add_predict_parser(sub)
    from ..export.exporter import add_parser as add_export_parser

    add_export_parser(sub)
    from ..tools.bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
