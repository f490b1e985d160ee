"""``efficientdet export --format openvino``: an OpenVINO IR (``.xml`` + ``.bin``), fp32 or int8 through NNCF.

The IR is converted from the ONNX file of :func:`~efficientdet.export.export_onnx` (batch norms folded first,
:func:`~efficientdet.quantize.folded_copy`) with ``openvino.convert_model``: one capture path for every format,
so the IR computes exactly what the ONNX file does. Weights are saved as fp32 (``compress_to_fp16=False``;
OpenVINO's default would store them as fp16, which the CPU plugin widens again at load: smaller file, rounded
weights). The precision a file computes in is chosen when it is compiled: OpenVINO's CPU plugin would pick bf16 on
CPUs with bf16 units, :class:`~efficientdet.export.runtimes.OpenVinoNetwork` asks for fp32 unless told otherwise.

int8: NNCF post-training quantisation (``nncf.quantize``) of the converted model with

- ``preset=MIXED``: symmetric int8 weights, asymmetric activations. The activations here are not centred on zero
  (ReLU6 in the Lite family, SiLU/swish in D0-D7, sums of both in the BiFPN), so an asymmetric range spends the 256
  levels on values that occur; NNCF's documentation recommends MIXED for models with such non-ReLU activations.
- activation ranges by ``calibration_method`` (:data:`OPENVINO_CALIBRATION_METHODS`): NNCF's own default
  ``mean-minmax`` averages each image's extremes over the calibration images; ``minmax`` takes the extremes of all
  of them; ``percentile`` averages each image's 0.01 % / 99.99 % quantiles; ``histogram`` picks the range that
  minimises the quantisation error on the histogram of all values.
- bias correction: each quantised layer's bias is shifted to undo the mean error quantisation introduces. By
  default NNCF's full ``BiasCorrection`` (it measures each layer's error with the layers before it already
  quantised; about 2x the export time), not its ``fast_bias_correction`` (each layer on its own): chosen on images
  held out of the training split of the raccoon set (``benchmarks/quantize.py --holdout-fraction``), where the
  full correction lost 0.007 AP to fp32 and the fast one 0.024 (Lite0 448 px, 100 calibration images).
- weights: NNCF's default gives the first convolution 7-bit weights and every other layer 8 bits (its "overflow
  fix" for the first layer). x86 CPUs without VNNI (AVX2 or AVX-512 only: Intel before Cascade Lake, AMD before Zen
  4) multiply uint8 activations by int8 weights with VPMADDUBSW, whose int16 pair sums can saturate with 8-bit
  weights (OpenVINO's documentation on the saturation issue); ``seven_bit_weights`` keeps every layer within 7 bits
  (NNCF's ``OverflowFix.ENABLE``; it leaves depthwise convolutions at 8 bits). Measured on an AVX2-only EPYC,
  Lite0 at 448 px: a BCCD model lost 0.105 AP on BCCD's val split with 8-bit weights and 0.014 with 7-bit ones, a
  raccoon model 0.025 and none on images held out of raccoon's train. On CPUs with VNNI the eighth bit is exact:
  on an Intel Xeon the 7-bit files of two other such models lost 0.005-0.007 AP more than the 8-bit ones on the same
  images, at the same speed, so 7 bits are an option; files with 8-bit weights warn when loaded on a CPU without
  VNNI.
- ``subset_size`` = the number of calibration images given, and with ``with_nms`` the post-processing
  (everything after the first TopK) in ``ignored_scope``: decoding and NMS stay fp32.
- accuracy control (``max_ap_drop`` with ``accuracy_data``, labelled images the model was not trained on and that
  will not report its accuracy): ``nncf.quantize_with_accuracy_control`` quantises as above, scores fp32 and int8
  by COCO AP on those images (this project's evaluation of the compiled candidate), and while int8 loses more than
  ``max_ap_drop`` AP it returns the quantised layers that hurt most (ranked by how far each moves the network's
  outputs on those images from fp32's) to fp32, one group at a time. The official EfficientDet-Lite results lose
  at most 0.4 COCO AP points (0.004) to int8; how much a model loses varies from model to model, and this bounds
  it on the user's own data. The file records both APs measured on those images. NNCF re-ranks every group after
  a step that made things worse (minutes per pass), so the AP must be steadier than the bound: a few hundred
  images, not a dozen.

The file's description (the metadata of the ONNX export) is stored in the IR's ``rt_info`` under
``efficientdet`` (:func:`efficientdet.runtimes.read_exported_metadata` reads it back).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.readers import DetectionData
from ..models.detector import EfficientDet
from .exporter import METADATA_KEY, export_onnx
from .openvino_core import OPENVINO_HINT, preserved_signal_stack, require_openvino
from .quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    CalibrationError,
    batches_from_paths,
    check_calibration_method,
    folded_copy,
    resolve_calibration,
)

APScorer = Callable[[Any, DetectionData], float]  # (network module, labelled images) -> COCO AP

OPENVINO_CALIBRATION_METHODS = ("mean-minmax", "minmax", "percentile", "histogram")
DEFAULT_OPENVINO_CALIBRATION_METHOD = "mean-minmax"
OPENVINO_WEIGHTS = "int8 symmetric, per output channel"  # NNCF's default: the first layer within 7 bits
OPENVINO_WEIGHTS_7_BIT = "int8 symmetric within 7 bits, per output channel"  # seven_bit_weights


def range_estimator(method: str) -> Any:
    """NNCF's activation range estimator for ``method`` (one of :data:`OPENVINO_CALIBRATION_METHODS`)."""
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Sets

    estimators = {"mean-minmax": Sets.MEAN_MINMAX, "minmax": Sets.MINMAX, "percentile": Sets.MEAN_QUANTILE,
                  "histogram": Sets.HISTOGRAM}  # fmt: skip
    return estimators[method]


def require_nncf() -> Any:
    """The ``nncf`` module, or an ImportError saying how to install it."""
    try:
        import nncf
    except ImportError as e:
        raise ImportError(f"int8 OpenVINO export needs NNCF, which is not installed: {OPENVINO_HINT}") from e
    return nncf


def postprocess_ops(model: Any) -> list[str]:
    """Friendly names of the ops at or after the first TopK of an OpenVINO model (a ``with_nms`` graph's
    decoding and NMS)."""
    stack = [op for op in model.get_ops() if op.get_type_name() == "TopK"]
    seen: dict[str, None] = {}
    while stack:
        op = stack.pop()
        name = op.get_friendly_name()
        if name in seen:
            continue
        seen[name] = None
        for output in op.outputs():
            stack.extend(target.get_node() for target in output.get_target_inputs())
    return list(seen)


def check_accuracy_data(
    data: DetectionData | None, max_ap_drop: float | None, with_nms: bool, score_ap: APScorer | None
) -> None:
    """Raise :class:`CalibrationError` (one line) unless accuracy control has what it needs."""
    if max_ap_drop is None:
        if data is not None or score_ap is not None:
            raise CalibrationError("accuracy images are for accuracy control only: give --max-ap-drop too")
        return
    if not 0 <= max_ap_drop < 1:
        raise CalibrationError(f"--max-ap-drop {max_ap_drop:g}: an AP difference, from 0 to below 1 (e.g. 0.01)")
    if data is None or not data.records:
        raise CalibrationError("--max-ap-drop needs labelled accuracy images (--accuracy-split of a dataset)")
    if not any(len(r.boxes) for r in data.records):
        raise CalibrationError("--max-ap-drop: the accuracy images have no boxes, so AP is undefined on them")
    if with_nms:
        raise CalibrationError("--max-ap-drop scores the raw-output network; export without --with-nms")
    if score_ap is None:
        raise CalibrationError("--max-ap-drop needs score_ap, e.g. efficientdet.evaluation.validate.coco_ap")


def accuracy_control_inputs(
    nncf: Any,
    data: DetectionData,
    score_ap: APScorer,
    meta: dict[str, Any],
    size: Any,
    model: EfficientDet,
    batch_size: int,
) -> tuple[Any, Any]:
    """The accuracy images as NNCF wants them: an ``nncf.Dataset`` of records (each pre-processed, repeated to the
    file's batch, for the runs NNCF makes itself) and the ``validation_fn`` that scores a compiled candidate.

    The score is ``score_ap`` of the candidate on those records (``coco_ap``: this project's COCO AP, pre- and
    post-processing as ``eval``; passed in, because evaluation sits above export in the package's layers).
    With it go the network's raw outputs per image, which puts NNCF in its "logits" mode: it ranks the quantised
    layers by how far each one moves those outputs from fp32's (cheap, and smoother than one image's AP), and
    scores by AP only the models it actually considers.
    """
    from dataclasses import replace

    from .runtimes import CompiledOpenVinoNetwork

    cfg = model.config

    def network_input(record: Any) -> np.ndarray:
        image = batches_from_paths([record.path], size, cfg.mean, cfg.std, 1, 1, source=record.path)[0]
        return np.repeat(image, batch_size, axis=0)

    def validate(compiled: Any, records: Any) -> tuple[float, list[list[np.ndarray]]]:
        records = list(records)
        network = CompiledOpenVinoNetwork(compiled, meta, "int8 candidate")
        ap = score_ap(network, replace(data, records=records))
        outputs = [[np.array(o) for o in compiled(network_input(r)).values()] for r in records]
        return max(0.0, ap), outputs

    return nncf.Dataset(list(data.records), network_input), validate


class AccuracyControlWarning(UserWarning):
    """Accuracy control reverted every layer it could and int8 still loses more than ``max_ap_drop``."""


def quantize_with_ap_control(
    nncf: Any,
    float_model: Any,
    batches: list[np.ndarray],
    settings: dict[str, Any],
    advanced: Any,
    data: DetectionData,
    score_ap: APScorer,
    max_ap_drop: float,
    **inputs: Any,
) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control`` scored by ``score_ap`` on ``data``; returns the model and what it
    measured: both APs on those images, so the file says what int8 costs there (a warning when above the bound).
    ``advanced``: NNCF's ``AdvancedQuantizationParameters`` (activation ranges, weights' bits) as without control.

    ``inputs`` (``meta``, ``size``, ``model``, ``batch_size``) go to :func:`accuracy_control_inputs`.
    """
    import warnings

    from .runtimes import compile_for_cpu

    accuracy_set, validate = accuracy_control_inputs(nncf, data, score_ap, **inputs)
    quantized = nncf.quantize_with_accuracy_control(
        float_model.clone(), nncf.Dataset(batches), accuracy_set, validate, max_drop=max_ap_drop,
        drop_type=nncf.DropType.ABSOLUTE, **settings, advanced_quantization_parameters=advanced,
    )  # fmt: skip
    fp32_ap, int8_ap = (validate(compile_for_cpu(m), data.records)[0] for m in (float_model, quantized))
    report = {"max_ap_drop": max_ap_drop, "images": len(data.records), "fp32_ap": round(fp32_ap, 6),
              "int8_ap": round(int8_ap, 6), "reached": fp32_ap - int8_ap <= max_ap_drop + 1e-9}  # fmt: skip
    if not report["reached"]:
        warnings.warn(f"accuracy control: int8 still loses {fp32_ap - int8_ap:.4f} AP on the {len(data.records)} "
                      f"accuracy images (fp32 {fp32_ap:.4f}, int8 {int8_ap:.4f}), more than --max-ap-drop "
                      f"{max_ap_drop:g}", AccuracyControlWarning, stacklevel=3)  # fmt: skip
    return quantized, report


def export_openvino(
    model: EfficientDet,
    path: str | os.PathLike,
    int8: bool = False,
    calibration: str | os.PathLike | Sequence[np.ndarray] | None = None,
    calibration_split: str = "train",
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    img_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    calibration_method: str = DEFAULT_OPENVINO_CALIBRATION_METHOD,
    fast_bias_correction: bool = False,
    seven_bit_weights: bool = False,
    max_ap_drop: float | None = None,
    accuracy_data: DetectionData | None = None,
    score_ap: APScorer | None = None,
    **export_kwargs: Any,
) -> Path:
    """Write ``model`` as an OpenVINO IR at ``path`` (``.xml``; the weights go to the ``.bin`` beside it).

    ``export_kwargs`` go to :func:`~efficientdet.export.export_onnx` (``dynamic_batch``, ``with_nms``, ...).
    ``int8`` needs ``calibration``: a dataset or image folder (:func:`~efficientdet.quantize.calibration_batches`)
    or pre-processed float32 ``[batch_size, 3, H, W]`` arrays; ``calibration_method``, ``fast_bias_correction``
    and ``seven_bit_weights`` as in the module docstring. ``max_ap_drop`` with ``accuracy_data`` (labelled images,
    e.g. the ``val`` split) and ``score_ap`` (:func:`efficientdet.evaluation.validate.coco_ap`): accuracy control as
    in the module docstring. Everything is checked (calibration and accuracy data, packages) before anything is written.
    """
    from .exporter import _image_size

    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"--output {path}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    check_calibration_method(calibration_method, OPENVINO_CALIBRATION_METHODS, "OpenVINO")
    if not int8 and (max_ap_drop is not None or accuracy_data is not None):
        raise CalibrationError("--max-ap-drop is for --int8 only")
    if not int8 and seven_bit_weights:
        raise CalibrationError("--seven-bit-weights is for --int8 only")
    check_accuracy_data(accuracy_data, max_ap_drop, bool(export_kwargs.get("with_nms")), score_ap)
    ov = require_openvino()
    nncf = require_nncf() if int8 else None
    size = _image_size(model, img_size)
    batches, used = None, None
    if int8:
        batches, used = resolve_calibration(calibration, size, model, calibration_split, calibration_images, batch_size)
    with tempfile.TemporaryDirectory(prefix="efficientdet-openvino-") as tmp:
        # int8 keeps the explicit -inf pads of the max-pools: with them folded into the MaxPool, NNCF quantises the
        # pools' inputs and the int8 AP of three raccoon models fell by 0.0002-0.0056 (fp32 files fold them)
        onnx_path = export_onnx(folded_copy(model), Path(tmp) / "model.onnx", img_size=size, batch_size=batch_size,
                                pool_pads_inside=not int8, **export_kwargs)  # fmt: skip
        import onnx

        meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}[METADATA_KEY])
        ov_model = ov.convert_model(str(onnx_path))
        meta["format"] = "openvino"
        if nncf is not None and batches is not None:
            settings = dict(
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(batches),
                ignored_scope=nncf.IgnoredScope(names=postprocess_ops(ov_model), validate=False),
                fast_bias_correction=fast_bias_correction,
            )
            advanced = nncf.AdvancedQuantizationParameters(
                activations_range_estimator_params=range_estimator(calibration_method),
                # NNCF's default, FIRST_LAYER, named so that a later NNCF changing it changes nothing here
                overflow_fix=nncf.OverflowFix.ENABLE if seven_bit_weights else nncf.OverflowFix.FIRST_LAYER,
            )
            with preserved_signal_stack():  # NNCF compiles with Cores of its own (see openvino_core)
                if max_ap_drop is None:
                    ov_model = nncf.quantize(ov_model, nncf.Dataset(batches), **settings, advanced_parameters=advanced)
                else:
                    assert accuracy_data is not None and score_ap is not None  # check_accuracy_data
                    ov_model, report = quantize_with_ap_control(
                        nncf, ov_model, batches, settings, advanced, accuracy_data, score_ap, max_ap_drop,
                        meta=meta, size=size, model=model, batch_size=batch_size,
                    )  # fmt: skip
            quantization = {
                "tool": "nncf.quantize" if max_ap_drop is None else "nncf.quantize_with_accuracy_control",
                "preset": "mixed", "weights": OPENVINO_WEIGHTS_7_BIT if seven_bit_weights else OPENVINO_WEIGHTS,
                "activations": f"int8 asymmetric, per tensor, {calibration_method} ranges",
                "bias_correction": "fast" if fast_bias_correction else "full",
                "calibration": used,
            }  # fmt: skip
            if max_ap_drop is not None:
                quantization["accuracy_control"] = report
            meta.update(precision="int8", quantization=quantization)
        ov_model.set_rt_info(json.dumps(meta), METADATA_KEY)
        # written next to the target, then renamed: no half-written IR under the final name
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".openvino-", dir=path.parent))
        try:
            ov.save_model(ov_model, str(staging / path.name), compress_to_fp16=False)
            os.replace(staging / path.with_suffix(".bin").name, path.with_suffix(".bin"))
            os.replace(staging / path.name, path)
        finally:
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
    return path
