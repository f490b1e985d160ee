"""``efficientdet export``: ONNX, torch.export, OpenVINO and int8 files, verified before they are written."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..export.exporter import (
    DEFAULT_OPSET,
    EXPORT_TOPK,
    FORMATS,
    INPUT_NAME,
    TopKWarning,
    export_onnx,
    export_torch,
    read_any_metadata,
    topk_warning,
    verify_exported,
)
from ..export.openvino import AccuracyControlWarning
from ..export.quantize import (
    ACTIVATION_TYPES,
    DEFAULT_ACTIVATION_TYPE,
    DEFAULT_CALIBRATION_IMAGES,
    CalibrationError,
    export_onnx_int8,
)
from ..export.verify import VERIFY_IMAGES, VerificationError, describe, load_verification_images, write_verified
from ..models.detector import EfficientDet
from ..ops.postprocess import MAX_DETECTIONS, NMS_IOU
from ..utils.folders import output_clash
from .argtypes import fraction, positive_int

SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "openvino": ".xml"}  # by --format
# --with-nms's options where not given
NMS_DEFAULTS = {"score_threshold": 0.05, "iou_threshold": NMS_IOU, "max_det": MAX_DETECTIONS, "topk": EXPORT_TOPK}


def default_output(checkpoint: str | None, model_name: str, fmt: str, int8: bool = False, half: bool = False) -> Path:
    """``--output`` when not given: beside a local checkpoint, named after it (``runs/voc/best.pt`` ->
    ``runs/voc/best.onnx``, ``best_int8.onnx``, ``best_fp16.onnx``, ``best.xml``, ``best.pt2``); for
    ``--pretrained`` the model's name, for a checkpoint URL its file name, in the current folder."""
    if checkpoint is None:
        stem = model_name
    elif "://" in checkpoint:
        stem = Path(urlsplit(checkpoint).path).stem or model_name
    else:
        stem = str(Path(checkpoint).with_suffix(""))
    return Path(stem + ("_int8" if int8 else "_fp16" if half else "") + SUFFIXES[fmt])


def wrong_suffix(output: str, fmt: str) -> str | None:
    """Why ``output`` cannot hold a ``fmt`` file, or None: ``predict``, ``eval`` and ``bench`` choose the runtime by
    the suffix, so an ONNX file must end in .onnx, an OpenVINO IR in .xml and a torch.export program in .pt2."""
    if Path(output).suffix.lower() == SUFFIXES[fmt]:
        return None
    companion = " (+ NAME.bin)" if fmt == "openvino" else ""
    return (f"--output {output}: --format {fmt} writes NAME{SUFFIXES[fmt]}{companion}; predict, eval and bench "
            "tell the format by the suffix")  # fmt: skip


def nms_options_problem(args: argparse.Namespace) -> str | None:
    """An NMS option given without ``--with-nms`` (the file then holds raw outputs and the caller's own
    post-processing decides), as one line; else None, with the options not given set to :data:`NMS_DEFAULTS`."""
    for name, default in NMS_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif not args.with_nms:
            return f"--{name.replace('_', '-')} is for --with-nms only"
    return None


def cmd_export(args: argparse.Namespace) -> int:
    """``efficientdet export``: load a checkpoint, write the file, optionally check it against eager PyTorch."""
    from ..models.weights import CheckpointError
    from .weights_options import load_model_from_options

    problem = nms_options_problem(args)
    if problem:
        print(f"efficientdet export: {problem}", file=sys.stderr)
        return 2
    try:
        img_size = img_size_values(args.img_size)
        model = load_model_from_options(args.checkpoint, args.model, args.pretrained,
                                        other_task_hint="export writes detection models only")  # fmt: skip
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"efficientdet export: {e}", file=sys.stderr)
        return 1
    if args.output is None:
        checkpoint = None if args.pretrained else str(args.checkpoint)
        args.output = str(default_output(checkpoint, model.config.name, args.format, args.int8, args.half))
    problem = output_clash(("--output", args.output, "file")) or wrong_suffix(args.output, args.format)
    if problem:
        print(f"efficientdet export: {problem}", file=sys.stderr)
        return 2
    common = dict(
        img_size=img_size, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, with_nms=args.with_nms,
        score_threshold=args.score_threshold, iou_threshold=args.iou_threshold, max_det=args.max_det,
        topk=args.topk,
    )  # fmt: skip
    int8_options = (args.int8, args.calibration, args.calibration_method, args.fast_bias_correction,
                    args.seven_bit_weights, args.max_ap_drop is not None, args.int8_activations)  # fmt: skip
    return export_verified(model, args, common, deployment=args.format == "openvino" or any(int8_options))


def print_accuracy_control(path: Path) -> None:
    """What accuracy control measured on its images (stored in the file), and a warning when above the bound."""
    from ..export.runtimes import read_exported_metadata

    report = read_exported_metadata(path)["quantization"]["accuracy_control"]
    fp32, int8, bound = report["fp32_ap"], report["int8_ap"], report["max_ap_drop"]
    line = (f"accuracy control on {report['images']} --accuracy-split images: fp32 AP {fp32:.4f}, int8 AP "
            f"{int8:.4f} (lost {fp32 - int8:.4f}, --max-ap-drop {bound:g})")  # fmt: skip
    print(line)
    if not report["reached"]:
        print(f"efficientdet export: warning: {path}: int8 loses more AP than --max-ap-drop {bound:g} even with "
              "every layer accuracy control could revert in fp32", file=sys.stderr)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``efficientdet export`` on the CLI's subcommands."""
    from .weights_options import add_weights_options

    p = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX (fp32, fp16, int8), an OpenVINO IR (fp32, int8) or a torch.export program",
        description="Input: images [B, 3, H, W], normalised RGB floats. Outputs: class_logits [B, A, C] and "
        "box_codes [B, A, 4] (anchors: efficientdet.anchors_for_config), or with --with-nms boxes [B, max_det, 4] "
        "(x1, y1, x2, y2 input pixels), scores, labels (-1 = padding) and num_detections.",
    )
    add_weights_options(p)
    p.add_argument("--model", help="model name: needed for effdet's files and for --pretrained")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default onnx)")
    p.add_argument(
        "--output",
        help="file to write (default: beside the checkpoint, named after it: best.pt -> "
        "best.onnx, best_int8.onnx, best_fp16.onnx, best.xml, best.pt2; --pretrained: MODEL.onnx here)",
    )
    p.add_argument(
        "--img-size", type=positive_int, nargs="+", metavar="S", help="input size S or H W (default: the model's)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of the input (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch dimension vary")
    p.add_argument("--with-nms", action="store_true", help="include top-k, box decoding and per-class NMS")
    # the in-graph NMS's options: None until given, so that one given without --with-nms is said (NMS_DEFAULTS)
    p.add_argument("--score-threshold", type=fraction,
                   help=f"with --with-nms (default {NMS_DEFAULTS['score_threshold']})")  # fmt: skip
    p.add_argument("--iou-threshold", type=fraction, help=f"with --with-nms (default {NMS_IOU})")
    p.add_argument("--max-det", type=positive_int, help=f"with --with-nms (default {MAX_DETECTIONS})")
    p.add_argument("--topk", type=positive_int,
                   help=f"in-graph top-k with --with-nms (default {EXPORT_TOPK}, TensorRT's TopK limit; eager "
                        "post-processing uses 5000)")  # fmt: skip
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--dynamic-size", action="store_true",
                   help="let height and width vary: multiples of 128 (2^max_level), at least 256")  # fmt: skip
    p.add_argument("--half", action="store_true",
                   help="float16 weights and network (GPU runtimes); input and outputs stay float32")  # fmt: skip
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="before writing, run the file on pictures and compare with eager PyTorch; the file is "
                        "only written if it agrees (default on; --no-verify skips)")  # fmt: skip
    p.add_argument(
        "--verify-images",
        metavar="DIR",
        help=f"folder of pictures for --verify (the first {VERIFY_IMAGES}; default: synthetic ones)",
    )

    add_int8_options(p)
    p.set_defaults(func=cmd_export)


def add_int8_options(p: Any) -> None:
    """``--int8`` and the calibration options of ``efficientdet export``."""
    p.add_argument("--int8", action="store_true",
                   help="post-training int8 (onnx: onnxruntime QDQ; openvino: NNCF); needs --calibration")  # fmt: skip
    p.add_argument("--calibration", metavar="DATA",
                   help="calibration images for --int8: a VOC/COCO/YOLO dataset or a folder of images")  # fmt: skip
    p.add_argument("--calibration-split", default="train", help="dataset split to calibrate on (default train)")
    p.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                   help=f"images to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})")  # fmt: skip
    p.add_argument("--calibration-method", metavar="METHOD",
                   help="how --int8 sets activation ranges: onnx mean-minmax (default), minmax or percentile; "
                        "openvino mean-minmax (default), minmax, percentile or histogram")  # fmt: skip
    p.add_argument("--int8-activations", choices=ACTIVATION_TYPES,
                   help=f"onnx --int8: how activations are stored (default {DEFAULT_ACTIVATION_TYPE}: uint8 with 7-bit "
                        "weights, exact on every CPU); uint8-vnni: 8-bit weights, exact on CPUs with VNNI "
                        "(AVX512-VNNI, AVX-VNNI, AMX) only; int8: int8 activations and 8-bit weights, 1.5-3x "
                        "slower in onnxruntime here, exact with VNNI only")  # fmt: skip
    p.add_argument("--fast-bias-correction", action="store_true",
                   help="openvino --int8: NNCF's fast bias correction (half the export time; lost more AP here) "
                        "instead of the full one")  # fmt: skip
    p.add_argument("--seven-bit-weights", action="store_true",
                   help="openvino --int8: 7-bit weights in every layer, exact on x86 CPUs without VNNI (AVX2 only: "
                        "Intel before Cascade Lake, AMD before Zen 4), where 8-bit weights can saturate (default: "
                        "8 bits, NNCF's, for CPUs with VNNI or AMX)")  # fmt: skip
    p.add_argument("--max-ap-drop", type=float, metavar="D",
                   help="openvino --int8: accuracy control (NNCF): layers that cost the most AP go back to fp32 "
                        "until int8 loses at most D AP (e.g. 0.01) on the --accuracy-split images")  # fmt: skip
    p.add_argument("--accuracy-split", default="val",
                   help="labelled split of the --calibration dataset that --max-ap-drop scores on (default val; "
                        "not the split you report accuracy on)")  # fmt: skip


def check_deployment_options(args: Any) -> None:
    """The option errors of :func:`export_deployment`, raised before anything is written."""
    if args.int8 and not args.calibration:
        raise CalibrationError("--int8 needs --calibration DATA (a dataset or a folder of images)")
    if args.calibration and not args.int8:
        raise ValueError("--calibration is for --int8 only")
    if args.calibration_method and not args.int8:
        raise ValueError("--calibration-method is for --int8 only")
    for option in ("fast_bias_correction", "seven_bit_weights", "max_ap_drop"):
        if getattr(args, option) not in (None, False) and not (args.int8 and args.format == "openvino"):
            raise ValueError(f"--{option.replace('_', '-')} is for --format openvino --int8 only")
    if args.int8_activations and not (args.int8 and args.format == "onnx"):
        raise ValueError("--int8-activations is for --format onnx --int8 only (OpenVINO's NNCF chooses its own)")
    if args.int8 and args.format not in ("onnx", "openvino"):
        raise ValueError(f"--int8 is for --format onnx or openvino, not {args.format}")
    what = "--int8" if args.int8 else "--format openvino"
    for option in ("half", "dynamic_size"):  # int8 and the IR are CPU files of one size, calibrated at that size
        if getattr(args, option, False):
            raise ValueError(f"--{option.replace('_', '-')} does not go with {what} (fixed-size fp32/int8 CPU files)")


def export_deployment(model: EfficientDet, args: Any, common: dict[str, Any], output: Path) -> Path:
    """``efficientdet export`` for ``--int8`` and ``--format openvino`` (``common``: the shared export options), to
    ``output`` (the verified write's temp file), its options already checked (:func:`check_deployment_options`).

    Raises ValueError / CalibrationError / ImportError with a one-line message for the command to print.
    """
    calib = dict(calibration=args.calibration, calibration_split=args.calibration_split,
                 calibration_images=args.calibration_images)  # fmt: skip
    if args.calibration_method:
        calib["calibration_method"] = args.calibration_method
    if args.format == "openvino":
        from ..export.openvino import export_openvino

        accuracy = {}
        if args.max_ap_drop is not None:
            from ..evaluation.validate import coco_ap

            accuracy = dict(max_ap_drop=args.max_ap_drop, score_ap=coco_ap,
                            accuracy_data=accuracy_images(args.calibration, args.accuracy_split))  # fmt: skip
        return export_openvino(model, output, int8=args.int8,
                               fast_bias_correction=args.fast_bias_correction,
                               seven_bit_weights=args.seven_bit_weights, **accuracy, **calib, **common)  # fmt: skip
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise ImportError("int8 ONNX export needs onnxruntime: pip install 'efficientdet[export]'") from e
    if args.int8_activations:
        calib["activations"] = args.int8_activations
    return export_onnx_int8(model, output, opset=args.opset, **calib, **common)


def accuracy_images(data: str, split: str) -> Any:
    """The labelled images that ``--max-ap-drop`` scores on, or a one-line ValueError naming the problem."""
    from ..data.readers import read_dataset

    try:
        return read_dataset(data, None, split)
    except (ValueError, OSError) as e:
        raise ValueError(f"--accuracy-split {split} of --calibration {data}: {e}") from e


def img_size_values(values: list[int] | None) -> int | tuple[int, int] | None:
    if values is None:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"--img-size takes S or H W, got {len(values)} values")


def export_verified(model: EfficientDet, args: argparse.Namespace, common: dict[str, Any], deployment: bool) -> int:
    """Export to a temp file beside ``--output``, verify it on pictures (unless ``--no-verify``), then rename.

    ``deployment``: an OpenVINO IR or an int8 file (:func:`export_deployment`), held to the int8 tolerance of
    :mod:`efficientdet.export.verify` where it is int8 (the same check catches a file that computes something else,
    not the small AP an int8 file loses: ``eval`` measures that)."""
    warning = topk_warning(args.with_nms, args.topk)
    if warning:
        print(f"efficientdet export: warning: {warning}", file=sys.stderr)
    from ..data.images import ImageReadError

    try:
        if deployment:
            check_deployment_options(args)
        images = load_verification_images(args.verify_images) if args.verify else None
    except (ValueError, OSError, ImageReadError) as e:  # each names the option, folder or file
        print(f"efficientdet export: {e}", file=sys.stderr)
        return 1
    options = dict(common, dynamic_size=args.dynamic_size, half=args.half)
    diffs: dict[str, float] = {}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TopKWarning)  # printed above, once
            warnings.simplefilter("ignore", AccuracyControlWarning)  # printed below, from the file's report
            if deployment:
                export_deployment(model, args, common, output=tmp)
            elif args.format == "onnx":
                export_onnx(model, tmp, opset=args.opset, **options)
            else:
                export_torch(model, tmp, **options)

    def check(tmp: Path) -> None:
        if images is not None:
            diffs.update(verify_exported(model, tmp, images, batch_size=2 if args.dynamic_batch else args.batch_size))

    try:
        path = write_verified(args.output, write, check, companions=(".bin",) if args.format == "openvino" else ())
    except VerificationError as e:
        print(f"efficientdet export: {args.output}: verification failed, nothing written: {e} (--no-verify writes "
              "the file unchecked)", file=sys.stderr)  # fmt: skip
        return 1
    except (ImportError, ValueError, RuntimeError, OSError) as e:
        print(f"efficientdet export: {e}", file=sys.stderr)
        return 1
    meta = read_any_metadata(path)
    shape = "x".join(map(str, meta["input"]["shape"]))
    files = [path, path.with_suffix(".bin")] if args.format == "openvino" else [path]
    print(f"wrote {path} ({args.format}, {meta['model']}, {meta['precision']}, {INPUT_NAME} {shape} -> "
          f"{', '.join(meta['outputs'])}; {sum(f.stat().st_size for f in files) / 1e6:.1f} MB)")  # fmt: skip
    if images is not None:
        how = " (int8: mean differences)" if meta["precision"] == "int8" and not args.with_nms else ""
        print(f"verified on {len(images)} {'' if args.verify_images else 'synthetic '}images against eager "
              f"PyTorch (float32){how}: {describe(diffs)}")  # fmt: skip
    if args.max_ap_drop is not None:
        print_accuracy_control(path)
    return 0
