"""``efficientdet eval``: COCO metrics (detection) or mIoU (segmentation) of a model on a dataset split.

The options are the fields of :class:`DetectionEvalOptions` or :class:`SegmentationEvalOptions` (``--task``), made
into flags as ``train``'s are, plus the weights options that ``predict``, ``export`` and ``bench`` share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine.recipe import DEFAULT_WORKERS, SMALL_CPU_CORES, default_workers
from ..engine.tasks.detection import DATASET_OPTION, FORMAT_OPTION
from ..evaluation.validate import EVAL_NMS, EVAL_VOTE_IOU
from ..ops.postprocess import NMS_METHODS
from ..utils.atomic import atomic_open
from ..utils.fields import (
    OptionError,
    check_fields,
    int_at_least,
    number_in,
    one_of,
    option,
    optional_float,
    optional_int,
)
from ..utils.folders import output_clash
from ..utils.text import counted
from .common import retain_memory_for_batches, setup_logging
from .options import add_config_options, add_task_parser, given_options, option_flags
from .weights_options import add_weights_options

if TYPE_CHECKING:
    import torch


@dataclass
class EvalOptions:
    """What both tasks' evaluation takes."""

    data: str | None = field(default=None, metadata=option("dataset path"))
    split: str = field(default="val", metadata=option("split to evaluate"))
    json: str | None = field(default=None, metadata=option("write the metrics here"))
    img_size: int | None = field(
        default=None,
        metadata=option("input size", int_at_least(1, optional=True), default_text="the model's own"),
    )
    batch_size: int = field(default=8, metadata=option("images per batch", int_at_least(1)))
    # None: as training, engine.recipe.default_workers (worker processes take cores from the network on few cores)
    workers: int | None = field(
        default=None,
        metadata=option(
            "data-loading processes", int_at_least(0, optional=True),
            default_text=f"0 on a CPU of at most {SMALL_CPU_CORES} cores, else {DEFAULT_WORKERS} (as train)",
        ),
    )  # fmt: skip
    device: str = field(default="auto", metadata=option("auto, cpu, cuda, cuda:1 ..."))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class DetectionEvalOptions(EvalOptions):
    data: str | None = field(default=None, metadata=DATASET_OPTION)
    format: str | None = field(default=None, metadata=FORMAT_OPTION)
    json: str | None = field(
        default=None, metadata=option("write the metrics, the per-class table and the detections' path here")
    )
    plots: str | None = field(
        default=None,
        metadata=option(
            "write PR curves per class (IoU 0.5, 0.75), the F1-vs-score curve and the confusion matrix (IoU 0.5, at "
            "the best-F1 score; background row/column) into DIR",
            metavar="DIR",
        ),
    )
    nms: str = field(
        default=EVAL_NMS,
        metadata=option(
            "soft: Gaussian soft-NMS, sigma 0.5 (the paper's evaluation; also the evaluation during training); "
            "hard: greedy NMS at IoU 0.5 (effdet's evaluation)",
            one_of(NMS_METHODS),
        ),
    )
    flip_tta: bool = field(
        default=False,
        metadata=option("test-time augmentation: each image also runs mirrored, detections merged (2x the time)"),
    )
    max_det: int | None = field(
        default=None,
        metadata=option(
            "detections kept and scored an image",
            int_at_least(1, optional=True),
            default_text="COCO's 100, or 300 / 1000 / 3000 where an image of the split holds more objects",
        ),
    )
    box_voting: float | None = field(
        default=EVAL_VOTE_IOU,
        metadata=option(
            "after NMS, move each box to the score-weighted mean of the candidates of its class overlapping it by "
            "at least this IoU (box voting, e.g. 0.8); 'none': off",
            number_in(0, 1, low_open=True, optional=True),
            parse=optional_float,
            metavar="IOU",
            default_text="none",
        ),
    )


@dataclass
class SegmentationEvalOptions(EvalOptions):
    data: str | None = field(
        default=None, metadata=option("a VOC root or a folder of SPLIT/ + SPLITannot/ (or give --images and --masks)")
    )
    images: str | None = field(default=None, metadata=option("folder of images (paired with --masks by file stem)"))
    masks: str | None = field(default=None, metadata=option("folder of label PNGs"))
    num_classes: int | None = field(
        default=None,
        metadata=option("checked against the model", int_at_least(1, optional=True), default_text="the model's"),
    )
    ignore_index: int | None = field(
        default=None,
        metadata=option(
            "mask value excluded from the metrics ('none': no such value)",
            parse=optional_int,
            default_text="the one the model was trained with, else 255",
        ),
    )


OPTIONS: dict[str, type[EvalOptions]] = {"detection": DetectionEvalOptions, "segmentation": SegmentationEvalOptions}


def add_eval_parser(sub: argparse._SubParsersAction, task: str) -> argparse.ArgumentParser:
    from .weights_options import add_backend_option

    p = add_task_parser(
        sub, "eval", task, "metrics of a model on a dataset split (COCO AP; --task segmentation: mIoU)", "Evaluate",
        "detection (default) or segmentation",
    )  # fmt: skip
    add_weights_options(p)
    p.add_argument("--model", help="model name: needed for effdet's files and for --pretrained")
    if task == "detection":
        add_backend_option(p)  # an exported --checkpoint (.onnx, .xml): efficientdet.export.runtimes
    add_config_options(p, OPTIONS[task])
    p.set_defaults(func=cmd_eval)
    return p


def task_flags(task: str) -> set[str]:
    """Every flag ``efficientdet eval --task task`` accepts beyond the shared ones."""
    return option_flags(OPTIONS[task]) | ({"--backend"} if task == "detection" else set())


def loading_workers(given: int | None, device: torch.device) -> int:
    """``--workers``, or training's default for ``device``: loading in the process on a CPU of few cores (raccoon
    `train` evaluated in 10.5 s against 10.9-11.3 s with two workers on 2 cores)."""
    return default_workers(device) if given is None else given


def named_few(names: list[str] | None, shown: int = 5) -> str:
    """`` (a, b, c)``: the first ``shown`` names in brackets, with how many more; empty without names."""
    if not names:
        return ""
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return f" ({', '.join(names[:shown])}{more})"


def cmd_eval(args: argparse.Namespace) -> int:
    task = args.task
    given = given_options(OPTIONS[task], args)
    try:
        options = OPTIONS[task](**given)
    except OptionError as e:
        print(f"efficientdet eval: {e}", file=sys.stderr)
        return 2
    problem = output_clash(("--plots", getattr(options, "plots", None), "folder"), ("--json", options.json, "file"))
    if problem:
        print(f"efficientdet eval: {problem}", file=sys.stderr)
        return 2
    setup_logging()
    retain_memory_for_batches(options.batch_size)
    if task == "segmentation":
        if args.pretrained:
            print("efficientdet eval: --pretrained: no segmentation weights are published; use --checkpoint",
                  file=sys.stderr)  # fmt: skip
            return 2
        return _eval_segmentation(args, options, ignore_given="ignore_index" in given)  # type: ignore[arg-type]
    return _eval_detection(args, options)  # type: ignore[arg-type]


def _eval_detection(args: argparse.Namespace, options: DetectionEvalOptions) -> int:
    if options.data is None:
        print("efficientdet eval: the following arguments are required: --data", file=sys.stderr)
        return 2
    from ..data.readers import read_dataset
    from ..evaluation.coco import COCO_MAX_DETECTIONS, dense_evaluation_line, format_metrics, format_per_class
    from ..evaluation.validate import evaluate_model
    from ..export.runtimes import input_size_problem
    from ..models.weights import CheckpointError
    from ..utils.device import DeviceError, resolve_device
    from .weights_options import load_model_from_options

    try:
        device = resolve_device(options.device)
        model = load_model_from_options(args.checkpoint, args.model, args.pretrained, args.backend).to(device)
        size_problem = input_size_problem(model, options.img_size)
        if size_problem:
            raise ValueError(size_problem)
        data = read_dataset(options.data, options.format, options.split)
        if model.class_names:
            data = data.with_class_names(model.class_names, model.category_ids)
    except (CheckpointError, DeviceError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"efficientdet eval: {e}", file=sys.stderr)
        return 1
    if model.config.num_classes != len(data.class_names):
        print(f"efficientdet eval: the model predicts {counted(model.config.num_classes, 'class')}"
              f"{named_few(model.class_names)}, the data has {len(data.class_names)}{named_few(data.class_names)}",
              file=sys.stderr)  # fmt: skip
        return 1
    if not len(data):
        print(f"efficientdet eval: {options.data}: split {options.split!r} has no images", file=sys.stderr)
        return 1
    dets_path = None
    if options.json:
        base, _ = os.path.splitext(options.json)
        dets_path = base + "_detections.json"
    result = evaluate_model(
        model,
        data,
        options.img_size,
        options.batch_size,
        loading_workers(options.workers, device),
        device,
        options.json,
        dets_path,
        nms=options.nms,
        flip_tta=options.flip_tta,
        vote_iou=options.box_voting,
        max_det=options.max_det,
    )
    if options.max_det is None and result.coco.max_dets != COCO_MAX_DETECTIONS:
        print(dense_evaluation_line(result.coco.max_dets, data.records))
    print(format_per_class(result.coco))
    print(format_metrics(result.metrics))
    if result.unreadable_images:
        print(f"efficientdet eval: {result.unreadable_images} of {len(data)} images could not be read (named in the "
              "warnings above); their boxes count as missed", file=sys.stderr)  # fmt: skip
    if options.plots:
        from ..evaluation.plots import write_evaluation_plots

        plots = write_evaluation_plots(result.coco, data, result.detections, options.plots)
        print(f"wrote PR curves, F1 curve (best mean F1 {plots.best_f1:.3f} at score {plots.best_threshold:.2f}) "
              f"and confusion matrix to {options.plots}")  # fmt: skip
    if options.json:
        print(f"wrote {options.json} and {dets_path}")
    return 0


def _eval_segmentation(args: argparse.Namespace, options: SegmentationEvalOptions, ignore_given: bool) -> int:
    """``--checkpoint FILE (--images DIR --masks DIR | --data VOC) [--json F]``"""
    from ..data.readers import DatasetError
    from ..data.segmentation import check_masks, read_segmentation_split
    from ..evaluation.segmentation import DEFAULT_IGNORE_INDEX, evaluate_segmentation
    from ..evaluation.segmentation_metrics import format_metrics, json_safe
    from ..models.factory import load_checkpoint
    from ..models.segmenter import task_mismatch
    from ..models.weights import CheckpointError, read_file
    from ..utils.device import DeviceError, resolve_device

    try:
        device = resolve_device(options.device)
        model = load_checkpoint(args.checkpoint, args.model)
        problem = task_mismatch(model, "segmentation")
        if problem:
            raise CheckpointError(f"{args.checkpoint}: {problem}")
        model = model.to(device)
        ignore: Any
        if ignore_given:
            ignore = options.ignore_index
        else:
            stored = read_file(args.checkpoint)
            ignore = stored.get("ignore_index", DEFAULT_IGNORE_INDEX) if isinstance(stored, dict) else None
        num_classes = options.num_classes or model.config.num_classes
        if num_classes != model.config.num_classes:
            raise ValueError(f"the model predicts {model.config.num_classes} classes, --num-classes is {num_classes}")
        data = read_segmentation_split(options.images, options.masks, options.data, options.split)
        check_masks(data, num_classes, ignore)
        metrics = evaluate_segmentation(
            model, data, num_classes, ignore, options.img_size, options.batch_size,
            loading_workers(options.workers, device), device,
        )  # fmt: skip
    except (CheckpointError, DatasetError, DeviceError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"efficientdet eval: {e}", file=sys.stderr)
        return 1
    print(format_metrics(metrics, model.class_names))
    if options.json:
        with atomic_open(options.json, "w") as f:
            json.dump(json_safe(metrics), f, indent=2)
        print(f"wrote {options.json}")
    return 0
