"""``efficientdet train|eval --task segmentation``: the options that only segmentation has, and the two commands.

The detection parsers of ``efficientdet.cli`` gain these options; options the two tasks share (``--model``,
``--epochs``, ``--batch-size``, ``--img-size``, ``--lr``, ``--output``, ``--workers``, ``--seed``, ``--device``,
``--amp``, ``--pretrained-backbone``, ``--checkpoint``, ``--resume``, ``--tensorboard``, ``--data`` as a VOC root,
...) keep one spelling and meaning for both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ..utils.atomic import atomic_open

TASKS = ("detection", "segmentation")


def add_task_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, default="detection",
                   help="detection (default) or segmentation (efficientdet-seg-* models, mask PNGs)")  # fmt: skip


def _add_data_args(p: argparse.ArgumentParser, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        p.add_argument(f"--{prefix}-images", help=f"segmentation: folder of {prefix} images (paired by file stem)")
        p.add_argument(f"--{prefix}-masks", help=f"segmentation: folder of {prefix} label PNGs (class id per pixel)")
    p.add_argument("--num-classes", type=int, help="segmentation: number of classes (ids 0..K-1 in the masks)")
    p.add_argument("--ignore-index", type=_ignore_index, default=argparse.SUPPRESS,
                   help="segmentation: mask value excluded from loss and metrics (default 255; 'none': no such "
                        "value; CamVid: 11)")  # fmt: skip


def _ignore_index(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def add_segmentation_train_args(p: argparse.ArgumentParser) -> None:
    """Options of `efficientdet train --task segmentation` that detection does not have."""
    add_task_arg(p)
    _add_data_args(p, ("train", "val"))
    p.add_argument("--crop-size", type=int, help="segmentation: training crop (default: --img-size)")
    p.add_argument("--class-weights", metavar="SPEC",
                   help="segmentation: loss weight per class: 'median-freq' (SegNet's median frequency balancing, "
                        "from the training masks), 'none' (default) or K comma-separated numbers")  # fmt: skip


def add_segmentation_eval_args(p: argparse.ArgumentParser) -> None:
    """Options of `efficientdet eval --task segmentation` (the images/masks to score, or --data + --split)."""
    add_task_arg(p)
    p.add_argument("--images", help="segmentation: folder of images (paired with --masks by file stem)")
    p.add_argument("--masks", help="segmentation: folder of label PNGs")
    p.add_argument("--num-classes", type=int, help="segmentation: checked against the model (default: the model's)")
    p.add_argument("--ignore-index", type=_ignore_index, default=argparse.SUPPRESS,
                   help="segmentation: mask value excluded from the metrics (default: the one the model was "
                        "trained with, else 255; 'none': no such value)")  # fmt: skip


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# Options of `efficientdet train` that only detection has: given with --task segmentation, they are an error.
DETECTION_ONLY = ("box_loss_weight", "format", "aspect_ratios", "anchor_scale")


def _seg_train_config(args: argparse.Namespace) -> Any:
    from ..engine.recipe import RESUME_CHANGEABLE
    from ..engine.train_segmentation import SegTrainConfig, resume_segmentation_config

    given = {k: v for k, v in vars(args).items() if k in SegTrainConfig.__dataclass_fields__ and v is not None}
    if "ignore_index" in vars(args):  # absent unless given (argparse.SUPPRESS); None is `--ignore-index none`
        given["ignore_index"] = args.ignore_index
    if getattr(args, "scale_range", None) is not None:
        given["scale_range"] = tuple(args.scale_range)
    if str(given.get("val_split", "")).lower() == "none":
        given["val_split"] = None
    if args.resume:
        changes = {k: v for k, v in given.items() if k in RESUME_CHANGEABLE}
        return resume_segmentation_config(args.resume, **changes)
    if given.get("model") is None:
        given["model"] = "efficientdet-seg-lite0"
    return SegTrainConfig(**given)


def run_train(args: argparse.Namespace) -> int:
    """`efficientdet train --task segmentation ...`"""
    from ..data.readers import DatasetError
    from ..engine.train import TrainingError
    from ..models.segmenter import is_segmentation_model
    from ..models.weights import CheckpointError
    from ..utils.fields import flag_name

    _setup_logging()
    if args.model is not None and not is_segmentation_model(args.model):
        print(f"efficientdet train: --task segmentation needs an efficientdet-seg-* model, not {args.model}",
              file=sys.stderr)  # fmt: skip
        return 2
    has_pairs = args.train_images is not None or args.train_masks is not None
    if not args.resume and not has_pairs and args.data is None:
        print("efficientdet train --task segmentation: give --train-images and --train-masks (and --val-images, "
              "--val-masks), or --data VOC_ROOT", file=sys.stderr)  # fmt: skip
        return 2
    unsupported = [flag_name(k) for k in DETECTION_ONLY if getattr(args, k, None) is not None]
    if unsupported:
        print(f"efficientdet train: {', '.join(unsupported)}: detection only, not supported with --task "
              "segmentation", file=sys.stderr)  # fmt: skip
        return 2
    try:
        from ..engine.train_segmentation import train_segmentation

        result = train_segmentation(_seg_train_config(args))
    except (TrainingError, CheckpointError, DatasetError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"efficientdet train: {e}", file=sys.stderr)
        return 1
    best = result["best_miou"]
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 reports for the job
        return 0
    print(f"best mIoU {100 * best:.2f}%; checkpoints: {result['best']} (best), {result['last']} (last)"
          if best >= 0 else f"checkpoints: {result['best']} (best), {result['last']} (last)")  # fmt: skip
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """`efficientdet eval --task segmentation --checkpoint FILE (--images DIR --masks DIR | --data VOC) [--json F]`"""
    from ..data.readers import DatasetError
    from ..data.segmentation import check_masks, read_segmentation_split
    from ..engine.train import TrainingError, resolve_device
    from ..engine.train_segmentation import DEFAULT_IGNORE_INDEX, evaluate_segmentation
    from ..evaluation.segmentation_metrics import format_metrics, json_safe
    from ..models.factory import load_checkpoint
    from ..models.segmenter import EfficientDetSegmentation
    from ..models.weights import CheckpointError, read_file

    _setup_logging()
    try:
        device = resolve_device(args.device)
        model = load_checkpoint(args.checkpoint, args.model)
        if not isinstance(model, EfficientDetSegmentation):
            raise CheckpointError(f"{args.checkpoint}: holds a detection model; drop --task segmentation")
        model = model.to(device)
        if "ignore_index" in vars(args):  # given on the command line (argparse.SUPPRESS otherwise)
            ignore = args.ignore_index
        else:
            stored = read_file(args.checkpoint)
            ignore = stored.get("ignore_index", DEFAULT_IGNORE_INDEX) if isinstance(stored, dict) else None
        num_classes = args.num_classes or model.config.num_classes
        if num_classes != model.config.num_classes:
            raise ValueError(f"the model predicts {model.config.num_classes} classes, --num-classes is {num_classes}")
        data = read_segmentation_split(args.images, args.masks, args.data, args.split)
        check_masks(data, num_classes, ignore)
        metrics = evaluate_segmentation(
            model, data, num_classes, ignore, args.img_size, args.batch_size, args.workers, device
        )
    except (CheckpointError, DatasetError, TrainingError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"efficientdet eval: {e}", file=sys.stderr)
        return 1
    print(format_metrics(metrics, model.class_names))
    if args.json:
        with atomic_open(args.json, "w") as f:
            json.dump(json_safe(metrics), f, indent=2)
        print(f"wrote {args.json}")
    return 0
