"""Post-training int8: calibration images and onnxruntime's static quantisation of an exported ONNX network.

What is quantised: the network only. The file is first exported with batch norms and TF "SAME" pads folded (what
the runtimes would fold anyway, done before quantisation so that each conv gets one scale per output channel for
its final weights), then run through onnxruntime's ``quant_pre_process`` (shape inference and graph optimisation,
which the quantiser's documentation recommends) and ``quantize_static``:

- QDQ format (QuantizeLinear/DequantizeLinear pairs around fp32 ops, which onnxruntime fuses into int8 kernels):
  the format that every current runtime, OpenVINO and TensorRT included, reads;
- weights with one scale per output channel (``per_channel``), held to 7 bits, and uint8 activations, one scale per
  tensor (U8S8: 1.5-3x faster in onnxruntime than int8 activations, and exact on every x86 CPU with 7-bit weights;
  ``activations="int8"`` for S8S8, ``"uint8-vnni"`` for 8-bit weights: :data:`ACTIVATION_TYPES`), each
  activation's range by default the mean over the calibration images of each image's extremes (``mean-minmax``).
  Chosen on images held out of the raccoon training split (``benchmarks/quantize.py --holdout-fraction``; Lite0 448
  px, 100 calibration images): int8 lost 0.034 AP to fp32 with ``mean-minmax``, 0.071 with ``percentile`` and 0.085
  with the extremes of all images (``minmax``, the quantiser's default), whose ranges stretch to one image's
  outliers; judged again on three models once the outputs stayed fp32, mean IoU with the fp32 boxes 0.979
  (``mean-minmax``), 0.974 (``percentile``), 0.975 (``minmax``);
- each quantised conv's bias corrected for the mean error of its rounded weights, measured on the calibration
  images (:mod:`efficientdet.export.bias_correction`; ``bias_correction=False`` leaves the quantiser's biases);
- the prediction heads' last convs stay fp32 (inputs quantised, outputs not): their outputs are the class logits
  and box codes themselves, and one 8-bit scale across a whole logit range (about -15..5) would leave steps of
  ~0.08 in the logits and ~8 % in box width and height. They are 10 small convs out of ~180; the layout ops
  between them and the outputs (Transpose, Reshape, the Concat of the levels) stay fp32 with them;
- with ``with_nms``, everything from the first TopK onward (decoding, NMS) is left out of quantisation: the
  post-processing runs in fp32 on the int8 network's outputs.

Calibration reads N images of a dataset split (VOC, COCO or YOLO, detected as everywhere else) or of a plain folder
of images, with the evaluation pre-processing (:func:`efficientdet.data.transforms.eval_transform`): the exact
inputs the network will see. N images are taken evenly spread over the split, so a sorted split (by class, by
scene) is covered end to end. Calibrate on training images, never on the images you evaluate on.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.detector import EfficientDet
from .bias_correction import BIAS_CORRECTION_IMAGES, correct_weight_bias
from .exporter import INPUT_NAME, METADATA_KEY, export_onnx
from .onnx_passes import node_producers

DEFAULT_CALIBRATION_IMAGES = 100
# How the activation ranges are read off the calibration images (onnxruntime's CalibrationMethod): "minmax" takes
# the extremes seen, "mean-minmax" the mean over the images of each image's extremes (onnxruntime's MinMax with
# CalibMovingAverage over one pass; NNCF's default for activations), "percentile" clips at the 0.001 % / 99.999 %
# quantiles of a histogram over all of them.
# (Entropy is not offered: through quantize_static, onnxruntime 1.32 gives its histogram as many bins as quantised
# levels, so the only candidate range is the full one: exactly MinMax. Checked by comparing the scales.)
CALIBRATION_METHODS = ("minmax", "mean-minmax", "percentile")
# onnxruntime's histogram calibrator (Percentile) keeps every intermediate tensor of the images of one collection
# pass in memory (100 Lite0 images at 448 px: over 22 GB, killed); calibrating in chunks of at most this many
# batches bounds it (histograms, and MinMax's extremes, are merged across chunks). "mean-minmax" keeps one min and
# max per tensor and image and runs in one pass.
CALIBRATION_CHUNK = 8
DEFAULT_CALIBRATION_METHOD = "mean-minmax"
# How activations and weights are stored (onnxruntime's QuantType for the activations, and whether the weights keep
# all 8 bits). onnxruntime multiplies uint8 activations by int8 weights (U8S8) with VNNI's dot products where the CPU
# has them (AVX512-VNNI, AVX-VNNI, AMX) and with VPMADDUBSW elsewhere on x86, whose int16 sum of two u8 x s8 products
# can saturate (onnxruntime's quantisation documentation) unless the weights stay within 7 bits (``reduce_range``).
# - "uint8" (the default): U8S8 with 7-bit weights, exact on every x86 CPU;
# - "uint8-vnni": U8S8 with 8-bit weights, exact only where the CPU has VNNI (the loader warns elsewhere);
# - "int8": S8S8 with 8-bit weights, the quantiser's own default; onnxruntime runs it through the same u8 x s8
#   kernels on CPUs without VNNI, so it saturates there too (measured on an AVX2-only EPYC, a BCCD Lite0's val split:
#   0.113 AP lost, "uint8-vnni" 0.121, the default 0.006; the loader warns).
# Chosen on images held out of raccoon's training split (three Lite0 448 models, bias corrected, outputs fp32):
# AP lost 0.0007 / -0.0054 / 0.0008, mean IoU with the fp32 boxes 0.971 / 0.978 / 0.979; network time on an Intel
# Xeon with AMX 0.47x (448 px, trained) and 0.65x (320 px) of S8S8's for both U8S8 files, whose kernels onnxruntime
# runs faster than its S8S8 ones (D0 at 512 px: 51 against 157 ms; fp32 43).
ACTIVATION_TYPES = ("uint8", "uint8-vnni", "int8")
DEFAULT_ACTIVATION_TYPE = "uint8"
WEIGHTS_7_BIT = "int8 within 7 bits (-64..64), per output channel"  # the metadata of "uint8" files
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class CalibrationError(ValueError):
    """Calibration data that cannot be used (missing, empty, unreadable); the message names it."""


def _split_image_paths(data: Path, split: str) -> list[str]:
    """Image paths of ``split`` of the dataset at ``data``; a folder that is no dataset gives its image files."""
    from ..data.readers import DatasetError, read_dataset

    if not data.exists():
        raise CalibrationError(f"--calibration {data}: no such file or folder")
    try:
        return [r.path for r in read_dataset(data, None, split).records]
    except DatasetError as e:
        if not data.is_dir():
            raise CalibrationError(f"--calibration {data}: {e}") from e
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise CalibrationError(
                f"--calibration {data}: no images (neither a VOC/COCO/YOLO dataset nor a folder of image files)"
            ) from e
        return [str(p) for p in files]


def check_calibration_method(
    method: str, methods: Sequence[str] = CALIBRATION_METHODS, runtime: str = "ONNX int8"
) -> None:
    """Raise :class:`CalibrationError` unless ``method`` is one of ``methods`` (default: onnxruntime's)."""
    if method not in methods:
        raise CalibrationError(f"--calibration-method {method!r}: for {runtime} choose one of {', '.join(methods)}")


def check_activation_type(activations: str) -> None:
    """Raise :class:`CalibrationError` unless ``activations`` is one of :data:`ACTIVATION_TYPES`."""
    if activations not in ACTIVATION_TYPES:
        raise CalibrationError(f"--int8-activations {activations!r}: choose one of {', '.join(ACTIVATION_TYPES)}")


def calibration_batches(
    data: str | os.PathLike,
    image_size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    split: str = "train",
    count: int = DEFAULT_CALIBRATION_IMAGES,
    batch_size: int = 1,
) -> list[np.ndarray]:
    """Up to ``count`` pre-processed images of ``split`` of ``data`` as float32 ``[batch_size, 3, H, W]`` arrays.

    The images are evenly spread over the split; unreadable ones are skipped. A last incomplete batch is dropped
    (a fixed-batch file takes only its batch).
    """
    if count < 1:
        raise CalibrationError(f"--calibration-images must be at least 1, got {count}")
    paths = _split_image_paths(Path(data), split)
    if not paths:
        raise CalibrationError(f"--calibration {data}: split {split!r} has no images")
    return batches_from_paths(paths, image_size, mean, std, count, batch_size, source=str(data))


def batches_from_paths(
    paths: Sequence[str],
    image_size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    count: int = DEFAULT_CALIBRATION_IMAGES,
    batch_size: int = 1,
    source: str = "calibration images",
) -> list[np.ndarray]:
    """:func:`calibration_batches` for a list of image files (``source`` names them in errors).

    Each file is decoded as prediction decodes it for the network (a large JPEG at a reduced scale,
    :meth:`efficientdet.inference.Detector.decode`), so that the ranges are calibrated on the inputs the
    quantised network will get.
    """
    from ..data.images import ImageReadError, decode_image
    from ..data.transforms import eval_transform, size_hw

    picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int))
    images = []
    for i in picks:
        try:
            array = decode_image(paths[i], size_hw(image_size)).pixels
        except ImageReadError:
            continue
        images.append(eval_transform(array, image_size, tuple(mean), tuple(std)).image.numpy())
    if len(images) < batch_size:
        raise CalibrationError(f"--calibration {source}: {len(images)} readable images, need at least {batch_size}")
    usable = len(images) // batch_size * batch_size
    return [np.stack(images[i : i + batch_size]) for i in range(0, usable, batch_size)]


def resolve_calibration(
    calibration: str | os.PathLike | Sequence[np.ndarray] | None,
    image_size: int | tuple[int, int],
    model: EfficientDet,
    split: str,
    count: int,
    batch_size: int,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Calibration batches and their description: read from a dataset/folder path, or given as arrays already."""
    if calibration is None:
        raise CalibrationError("--int8 needs --calibration DATA (a dataset or a folder of images)")
    if isinstance(calibration, (str, os.PathLike)):
        cfg = model.config
        batches = calibration_batches(calibration, image_size, cfg.mean, cfg.std, split, count, batch_size)
        return batches, {"data": str(calibration), "split": split, "images": len(batches) * batch_size}
    batches = [np.asarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise CalibrationError("no calibration batches given")
    return batches, {"data": "arrays", "images": sum(len(b) for b in batches)}


def calibration_stride(count: int) -> int:
    """The largest divisor of ``count`` up to :data:`CALIBRATION_CHUNK`: onnxruntime's strided calibration needs
    equal chunks."""
    return max(d for d in range(1, min(count, CALIBRATION_CHUNK) + 1) if count % d == 0)


def _calibration_reader(batches: Sequence[np.ndarray]) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over ``batches``: rewindable (the quantiser may read twice), with
    ``set_range`` and ``len`` for strided calibration (``CalibStridedMinMax``: one chunk of batches at a time)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def __len__(self) -> int:
            return len(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

        def rewind(self) -> None:
            self._it = iter(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(batches[start_index:end_index])

    return Reader()


def folded_copy(model: EfficientDet, pads: bool = False) -> EfficientDet:
    """A copy with batch norms folded into the convs (same outputs up to rounding), class names kept.

    ``pads``: also fold the TF "SAME" pads into conv / max-pool padding. The int8 ONNX export does: with explicit
    Pad nodes between them, onnxruntime's quantised graph measured far from fp32 (output correlation 0.82 against
    0.99 folded, parity Lite0). The OpenVINO export does not: a ceil-mode max-pool whose window is larger than
    its padded input (the 2x2 top level of small inputs) is rejected by OpenVINO's ONNX reader.
    """
    from ..models.fuse import fold_batchnorm, fold_same_padding

    folded = fold_batchnorm(model)
    return fold_same_padding(folded, inplace=True) if pads else folded


def head_output_nodes(graph: Any, outputs: Sequence[str]) -> list[str]:
    """Names of the convs whose results reach ``outputs`` through layout ops only (the heads' last convs), and of
    those layout ops: left out of quantisation together, so that the outputs stay fp32 (a quantised Concat of the
    levels' outputs would put them back on one 8-bit scale)."""
    producers = node_producers(graph.node)
    found, stack, seen = [], list(outputs), set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.append(node.name)
        elif node.op_type in ("Reshape", "Transpose", "Concat", "Flatten", "Identity", "Squeeze", "Unsqueeze"):
            found.append(node.name)
            stack.extend(node.input)
    return found


def postprocess_nodes(graph: Any) -> list[str]:
    """Names of the nodes at or after the first TopK (decoding and NMS of a ``with_nms`` graph)."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    stack = [node for node in graph.node if node.op_type == "TopK"]
    seen: dict[str, None] = {}
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen[node.name] = None
        for out in node.output:
            stack.extend(consumers.get(out, []))
    return list(seen)


def fill_dead_channels(model: Any) -> int:
    """Give each conv output channel whose weights are all zero one tiny weight; return how many were changed.

    Trained networks have such channels (a batch norm scale driven to 0, folded into the conv). The quantiser's
    per-channel scale of an all-zero channel is 0, and its zero point then 0/0: NaN weights in the int8 file, which
    spoil every later layer. One weight of 1e-6 x the tensor's largest sets a valid scale; the output changes by
    at most that times one input value.
    """
    from onnx import numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        init = weights[node.input[1]]
        w = numpy_helper.to_array(init).copy()
        dead = np.flatnonzero(np.abs(w.reshape(len(w), -1)).max(1) == 0)
        if not len(dead):
            continue
        w.reshape(len(w), -1)[dead, 0] = 1e-6 * max(float(np.abs(w).max()), 1.0)
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        changed += len(dead)
    return changed


def finite_maxpool_pads(graph: Any) -> list[str]:
    """Make the -inf pad values of the TF "SAME" max-pools finite; return those Pads' and their readers' names.

    The quantiser computes a range for every tensor, and a range reaching -inf gives an infinite scale and a NaN
    zero point. float32's lowest value pads just as well in front of a max-pool (no activation is that low), and
    the Pads and max-pools themselves stay fp32 (a max-pool needs no quantised input) between int8 neighbours.
    """
    from onnx import numpy_helper

    constants = {init.name: init for init in graph.initializer}
    padded, found = set(), []
    for node in graph.node:
        pad_value = node.input[2] if node.op_type == "Pad" and len(node.input) > 2 else None
        if pad_value not in constants:
            continue
        value = numpy_helper.to_array(constants[pad_value])
        if not np.isfinite(value).all():
            finite = np.nan_to_num(value, neginf=np.finfo(value.dtype).min, posinf=np.finfo(value.dtype).max)
            constants[pad_value].CopyFrom(numpy_helper.from_array(finite, pad_value))
            found.append(node.name)
            padded.update(node.output)
    found += [node.name for node in graph.node if padded.intersection(node.input)]
    return found


def _raw_output_names(graph: Any) -> list[str]:
    """The tensors holding the class logits and box codes: the graph outputs, or in a ``with_nms`` graph the
    inputs of the post-processing that come from the network (the Reshape feeding the first TopK, the codes'
    Gather)."""
    outputs = [o.name for o in graph.output]
    if "class_logits" in outputs:
        return [name for name in outputs if name in ("class_logits", "box_codes")]
    post = set(postprocess_nodes(graph))
    producers = node_producers(graph.node)
    found = []
    for node in graph.node:
        if node.name in post:
            found.extend(i for i in node.input if i in producers and producers[i].name not in post)
    return found


def quantize_onnx_file(
    source: str | os.PathLike,
    target: str | os.PathLike,
    batches: Sequence[np.ndarray],
    quantization_info: dict[str, Any] | None = None,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    activations: str = DEFAULT_ACTIVATION_TYPE,
    bias_correction: bool = True,
) -> Path:
    """Quantise the ONNX file ``source`` (written by :func:`~efficientdet.export.export_onnx`) into ``target``.

    See the module docstring for the recipe. The metadata of ``source`` travels, with ``precision: int8`` and
    ``quantization`` (the recipe and ``quantization_info``, e.g. the calibration data) added.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_calibration_method(calibration_method)
    check_activation_type(activations)
    methods = {"minmax": CalibrationMethod.MinMax, "mean-minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}  # fmt: skip
    if calibration_method == "mean-minmax":
        # one pass: within a pass the extremes are averaged over images, across strided chunks only smoothed
        options: dict[str, Any] = {"CalibMovingAverage": True}
    else:
        options = {"CalibStridedMinMax": calibration_stride(len(batches))}
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="efficientdet-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        prepared_model = onnx.load(str(prepared))
        graph = prepared_model.graph
        fill_dead_channels(prepared_model)
        exclude = (
            finite_maxpool_pads(graph) + postprocess_nodes(graph) + head_output_nodes(graph, _raw_output_names(graph))
        )
        onnx.save(prepared_model, str(prepared))
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            _calibration_reader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=activations == "uint8",  # 7-bit weights: VPMADDUBSW's int16 sums cannot saturate
            calibrate_method=methods[calibration_method],
            nodes_to_exclude=exclude,
            extra_options=options,
        )
        model = onnx.load(str(quantized))
        # the fp32 network the quantiser read: prepared_model, as saved to `prepared` above
        corrected = correct_weight_bias(prepared_model, model, batches) if bias_correction else 0
        meta = json.loads({p.key: p.value for p in onnx.load(str(source)).metadata_props}[METADATA_KEY])
        meta.update(precision="int8", quantization={
            "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": WEIGHTS_7_BIT if activations == "uint8" else "int8, per output channel",
            "activations": f"{activations.split('-')[0]}, per tensor, {calibration_method} calibration",
            "fp32_nodes": len(exclude),
            "bias_correction": (f"{corrected} convs, their weights' rounding, over up to {BIAS_CORRECTION_IMAGES} "
                                "calibration images") if bias_correction else "none",
            **(quantization_info or {}),
        })  # fmt: skip
        del model.metadata_props[:]
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
        target.parent.mkdir(parents=True, exist_ok=True)
        from ..utils.atomic import atomic_open

        with atomic_open(target, "wb") as f:
            f.write(model.SerializeToString())
    return target


def export_onnx_int8(
    model: EfficientDet,
    path: str | os.PathLike,
    calibration: str | os.PathLike | Sequence[np.ndarray],
    calibration_split: str = "train",
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    img_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    activations: str = DEFAULT_ACTIVATION_TYPE,
    bias_correction: bool = True,
    **export_kwargs: Any,
) -> Path:
    """Export ``model`` as int8 ONNX (QDQ), calibrated on ``calibration_images`` images of ``calibration_split``.

    ``calibration_method``: one of :data:`CALIBRATION_METHODS`, how activation ranges are set.
    ``activations``: one of :data:`ACTIVATION_TYPES`, how activations are stored (see there).
    ``bias_correction``: correct each quantised conv's bias for the mean error of its rounded weights
    (:mod:`efficientdet.export.bias_correction`).

    ``calibration``: a dataset or image folder, or pre-processed ``[batch_size, 3, H, W]`` float32 arrays.
    ``export_kwargs`` go to :func:`~efficientdet.export.export_onnx` (``dynamic_batch``, ``with_nms``, ...).
    Calibration data is checked before anything is exported; nothing is written at ``path`` on failure.
    """
    from .exporter import _image_size

    check_calibration_method(calibration_method)
    check_activation_type(activations)
    size = _image_size(model, img_size)
    batches, used = resolve_calibration(calibration, size, model, calibration_split, calibration_images, batch_size)
    with tempfile.TemporaryDirectory(prefix="efficientdet-int8-") as tmp:
        fp32 = export_onnx(folded_copy(model, pads=True), Path(tmp) / "fp32.onnx", img_size=size, batch_size=batch_size,
                           **export_kwargs)  # fmt: skip
        return quantize_onnx_file(
            fp32, path, batches, {"calibration": used}, calibration_method, activations, bias_correction
        )
