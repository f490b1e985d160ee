"""``efficientdet predict``: images, folders, globs, videos, cameras and streams -> drawings and detections."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

from ..data.images import ImageReadError
from ..export.runtimes import input_size_problem
from ..inference.detector import CPU_BATCH_SIZE, CPU_PARALLEL_FRAMES, GPU_BATCH_SIZE
from ..inference.predict import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_OUTPUT,
    DEFAULT_SCORE_THRESHOLD,
    expand_sources,
    is_picture_source,
    listed_sources,
    nothing_read_line,
    predict,
)
from ..inference.tiling import DEFAULT_TILE_OVERLAP
from ..inference.video import VIDEO_EXTENSIONS
from ..ops.postprocess import MAX_DETECTIONS, NMS_IOU, NMS_METHODS
from ..utils.folders import first_free_folder, holds_files, output_clash
from ..utils.text import counted
from .argtypes import fraction, non_negative_int, overlap_arg, positive_int, tile_arg
from .common import retain_memory_for_batches
from .weights_options import add_backend_option, add_weights_options, load_model_from_options


def cmd_predict(args: argparse.Namespace) -> int:
    """The ``predict`` command: 0 when every image was processed, 1 when any source or file failed."""
    from ..inference.class_filter import UnknownClassError
    from ..models.weights import CheckpointError
    from ..utils.device import DeviceError

    retain_memory_for_batches(args.batch_size)
    if args.output is None:  # a new folder per run: runs/predict, runs/predict2, ...
        args.output = first_free_folder(DEFAULT_OUTPUT, holds_files)
    problem = output_clash(("--output", args.output, "folder"))
    if problem:  # said before the model loads, as the other commands say theirs
        print(f"efficientdet predict: {problem}", file=sys.stderr)
        return 2
    if args.task == "segmentation":
        if args.source and all(is_picture_source(source) for source in args.source):  # folders, images: sources
            args.sources, args.source = [*args.sources, *args.source], None
        given = detection_options_given(args)
        if given:
            print(f"efficientdet predict: {given[0]} is for detection models; --task segmentation takes sources, "
                  "--checkpoint/--pretrained, --model, --output, --device, --img-size and --recursive",
                  file=sys.stderr)  # fmt: skip
            return 2
        return _cmd_predict_segmentation(args)
    if not args.sources and not args.source:
        print("efficientdet predict: give at least one SOURCE or --source", file=sys.stderr)
        return 2
    try:
        model = load_model_from_options(args.checkpoint, args.model, args.pretrained, args.backend)
        size_problem = input_size_problem(model, args.img_size)
        if size_problem:  # before any image is read (the network would say it at the first one)
            raise ValueError(size_problem)
        summary = predict(
            args.sources, model, args.output, model_name=args.model, video_sources=args.source or (),
            vid_stride=args.vid_stride, max_frames=args.max_frames, parallel_frames=args.parallel_frames,
            score_threshold=args.score_threshold, iou_threshold=args.iou, nms=args.nms,
            class_agnostic=args.class_agnostic, max_det=args.max_det, batch_size=args.batch_size,
            device=args.device, image_size=args.img_size, recursive=args.recursive, draw=args.draw,
            max_pixels=args.max_pixels, classes=args.classes, save_txt=args.save_txt,
            save_conf=args.save_conf, save_crop=args.save_crop, progress=None, tile=args.tile,
            tile_overlap=args.tile_overlap, flip_tta=args.flip_tta, vote_iou=args.box_voting,
        )  # fmt: skip
    except UnknownClassError as e:  # a usage error, like argparse's own (exit 2), found before anything is written
        print(f"efficientdet predict: --classes: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, DeviceError, ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"efficientdet predict: {e}", file=sys.stderr)
        return 1
    print(summary.line())
    return summary.exit_code


def detection_options_given(args: argparse.Namespace) -> list[str]:
    """The flags given that only detection uses (each differs from its default), in the order of the help."""
    defaults: dict[str, tuple[str, Any]] = args.detection_only
    return [flag for dest, (flag, default) in defaults.items() if getattr(args, dest) != default]


def _cmd_predict_segmentation(args: argparse.Namespace) -> int:
    """``predict --task segmentation``: colour overlays and id masks, one image at a time, failures named."""
    from ..inference.segmentation import predict_segmentation
    from ..models.weights import CheckpointError
    from ..utils.device import resolve_device

    start = time.perf_counter()
    try:
        model = load_model_from_options(args.checkpoint, args.model, args.pretrained, task="segmentation")
        device = resolve_device(args.device)  # checked before any output: DeviceError is a ValueError
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"efficientdet predict: {e}", file=sys.stderr)
        return 1
    done = 0
    with tempfile.TemporaryDirectory(prefix="efficientdet-url-images-") as downloads:  # images given by URL
        sources = listed_sources(args.sources)
        images, failures = expand_sources(sources, args.recursive, exclude=args.output, download_to=downloads)
        for _, message in failures:  # each message names its source
            print(message, file=sys.stderr)
        if not images:  # as for detection: bad input, nothing written
            print(nothing_read_line(len(failures)))
            return 1
        for image in images:
            try:
                predict_segmentation(model, [image.path], args.output, img_size=args.img_size, device=device)
                done += 1
            except (ImageReadError, OSError) as e:
                message = image.naming(str(e))
                message = message if image.shown in message else f"{image.shown}: {message}"
                failures.append((image.shown, message))
                print(message, file=sys.stderr)
    print(f"predict: {counted(done, 'image')} segmented, {len(failures)} failed, {time.perf_counter() - start:.1f} s; "
          f"overlays and masks in {args.output}")  # fmt: skip
    return 1 if failures else 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``efficientdet`` command's subparsers."""
    p = sub.add_parser(
        "predict", help="detect objects in images, folders and globs: drawn images + detections.json",
        description="Detect objects in images; write each image with its boxes drawn, and detections.json "
        "(COCO results, with file and class names). Unreadable files are reported and skipped (exit code 1). "
        "Videos, cameras and streams: a drawn video and detections.jsonl each, in OUTPUT/<name>/.",
    )  # fmt: skip
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="image files, folders, quoted glob patterns ('photos/**/*.jpg'), image URLs "
                   "(https://.../bus.jpg: downloaded for the run), video files "
                   f"({', '.join(VIDEO_EXTENSIONS)}), /dev/videoN, rtsp:// or http(s):// streams, .txt lists of "
                   "these (one per line)")  # fmt: skip
    p.add_argument("--source", action="append", metavar="VIDEO",
                   help="video source whatever its name: camera index (0), device, URL, file (repeatable); folders, "
                   "images, globs and .txt lists given here run as SOURCEs")  # fmt: skip
    add_weights_options(p)
    add_backend_option(p)  # an exported --checkpoint (.onnx, .xml): efficientdet.runtimes
    p.add_argument("--model", help="model name: needed for effdet's files and for --pretrained")
    p.add_argument("--output", help=f"output folder (default {DEFAULT_OUTPUT}, or {DEFAULT_OUTPUT}2, "
                   f"{DEFAULT_OUTPUT}3 ... when that already holds files)")  # fmt: skip
    p.add_argument("--score-threshold", type=fraction, default=DEFAULT_SCORE_THRESHOLD,
                   help=f"keep detections scoring at least this (default {DEFAULT_SCORE_THRESHOLD})")  # fmt: skip
    p.add_argument("--nms", choices=NMS_METHODS, default="hard",
                   help="hard: greedy NMS at --iou (default); soft: Gaussian soft-NMS, sigma 0.5")  # fmt: skip
    p.add_argument("--iou", type=fraction, default=NMS_IOU, help=f"hard-NMS IoU threshold (default {NMS_IOU})")
    p.add_argument("--class-agnostic", action="store_true", help="boxes of different classes suppress each other")
    p.add_argument("--flip-tta", action="store_true",
                   help="test-time augmentation: also run each image mirrored, merge the detections")  # fmt: skip
    p.add_argument("--box-voting", type=fraction, default=None, metavar="IOU",
                   help="after NMS, move each box to the score-weighted mean of the candidates of its class "
                   "overlapping it by at least this IoU, e.g. 0.8 (default: off)")  # fmt: skip
    p.add_argument("--max-det", type=positive_int, default=MAX_DETECTIONS,
                   help=f"detections kept per image (default {MAX_DETECTIONS})")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"images, frames or tiles per forward pass (default {CPU_BATCH_SIZE} on a CPU, where one at a "
                   f"time ran fastest, {GPU_BATCH_SIZE} on a GPU; large images go alone)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--img-size", type=positive_int, help="input size (default: the model's own)")
    p.add_argument("--recursive", action="store_true", help="also take images from subfolders of folder sources")
    p.add_argument("--classes", metavar="LIST",
                   help="keep only these classes: names or 0-based indices, comma-separated (person,car)")  # fmt: skip
    p.add_argument("--save-txt", action="store_true",
                   help="write YOLO label files labels/<image>.txt (class cx cy w h, 0..1); auto-labels")  # fmt: skip
    p.add_argument("--save-conf", action="store_true", help="add the score to each label line (implies --save-txt)")
    p.add_argument("--save-crop", action="store_true",
                   help="save each detection as crops/<class>/<image>_<k>.jpg (videos: <name>/crops/<class>/"
                        "<name>_<frame>_<k>.jpg)")  # fmt: skip
    p.add_argument("--no-draw", dest="draw", action="store_false", help="do not write the drawn images")
    p.add_argument("--tile", type=tile_arg, default=0, metavar="SIZE",
                   help="sliced inference for small objects in large images: tiles of SIZE px (>= 32) plus a "
                   "full-image pass, merged; costs (tiles + 1) forward passes per image (default 0: off)")  # fmt: skip
    p.add_argument("--tile-overlap", type=overlap_arg, default=DEFAULT_TILE_OVERLAP, metavar="F",
                   help="overlap of neighbouring tiles: a fraction of SIZE in [0, 1) "
                   f"(default {DEFAULT_TILE_OVERLAP})")  # fmt: skip
    p.add_argument("--max-pixels", type=non_negative_int, default=DEFAULT_MAX_PIXELS,
                   help=f"skip larger images (default {DEFAULT_MAX_PIXELS:,}, Pillow's limit; 0: none)")  # fmt: skip
    p.add_argument("--vid-stride", type=positive_int, default=1, help="videos: process every Nth frame (default 1)")
    p.add_argument("--max-frames", type=positive_int, help="videos: stop each source after N processed frames")
    p.add_argument("--parallel-frames", type=positive_int, default=None, metavar="N",
                   help=f"videos: frames run at once, each in a thread with its share of the CPU threads (default "
                   f"{CPU_PARALLEL_FRAMES} on a CPU, 1 on a GPU and for exported files)")  # fmt: skip
    p.add_argument("--task", choices=["detection", "segmentation"], default="detection",
                   help="segmentation: write <stem>_overlay.png and <stem>_mask.png (class ids) per image")  # fmt: skip
    # what --task segmentation does not take: said, not dropped (detection_options_given)
    segmentation_takes = {"sources", "checkpoint", "pretrained", "model", "output", "device", "img_size", "recursive",
                          "task", "help"}  # fmt: skip
    detection_only = {a.dest: (a.option_strings[0], a.default) for a in p._actions
                      if a.dest not in segmentation_takes}  # fmt: skip
    p.set_defaults(func=cmd_predict, detection_only=detection_only)
    return p
