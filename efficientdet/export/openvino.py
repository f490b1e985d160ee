"""``efficientdet export --format openvino``: an OpenVINO IR (``.xml`` + ``.bin``), fp32 or int8 through NNCF.

The IR is converted from the ONNX file of :func:`~efficientdet.export.export_onnx` (batch norms folded first,
:func:`~efficientdet.quantize.folded_copy`) with ``openvino.convert_model``: one capture path for every format,
so the IR computes exactly what the ONNX file does. Weights are saved as fp32 (``compress_to_fp16=False``;
OpenVINO's default would store them as fp16, which the CPU plugin widens again at load: smaller file, rounded
weights); the CPU plugin still chooses its own inference precision (fp32 on CPUs without bf16/fp16 units).

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
- ``subset_size`` = the number of calibration images given, and with ``with_nms`` the post-processing
  (everything after the first TopK) in ``ignored_scope``: decoding and NMS stay fp32.

The file's description (the metadata of the ONNX export) is stored in the IR's ``rt_info`` under
``efficientdet`` (:func:`efficientdet.runtimes.read_exported_metadata` reads it back).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.detector import EfficientDet
from .exporter import METADATA_KEY, export_onnx
from .openvino_core import OPENVINO_HINT, preserved_signal_stack, require_openvino
from .quantize import DEFAULT_CALIBRATION_IMAGES, check_calibration_method, folded_copy, resolve_calibration

OPENVINO_CALIBRATION_METHODS = ("mean-minmax", "minmax", "percentile", "histogram")
DEFAULT_OPENVINO_CALIBRATION_METHOD = "mean-minmax"


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
    **export_kwargs: Any,
) -> Path:
    """Write ``model`` as an OpenVINO IR at ``path`` (``.xml``; the weights go to the ``.bin`` beside it).

    ``export_kwargs`` go to :func:`~efficientdet.export.export_onnx` (``dynamic_batch``, ``with_nms``, ...).
    ``int8`` needs ``calibration``: a dataset or image folder (:func:`~efficientdet.quantize.calibration_batches`)
    or pre-processed float32 ``[batch_size, 3, H, W]`` arrays; ``calibration_method`` and ``fast_bias_correction``
    as in the module docstring. Everything is checked (calibration data, packages) before anything is written.
    """
    from .exporter import _image_size

    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"--output {path}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    check_calibration_method(calibration_method, OPENVINO_CALIBRATION_METHODS, "OpenVINO")
    ov = require_openvino()
    nncf = require_nncf() if int8 else None
    size = _image_size(model, img_size)
    batches, used = None, None
    if int8:
        batches, used = resolve_calibration(calibration, size, model, calibration_split, calibration_images, batch_size)
    with tempfile.TemporaryDirectory(prefix="efficientdet-openvino-") as tmp:
        onnx_path = export_onnx(folded_copy(model), Path(tmp) / "model.onnx", img_size=size, batch_size=batch_size,
                                **export_kwargs)  # fmt: skip
        import onnx

        meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}[METADATA_KEY])
        ov_model = ov.convert_model(str(onnx_path))
        meta["format"] = "openvino"
        if nncf is not None and batches is not None:
            ignored = nncf.IgnoredScope(names=postprocess_ops(ov_model), validate=False)
            with preserved_signal_stack():  # NNCF compiles with Cores of its own (see openvino_core)
                ov_model = nncf.quantize(
                    ov_model,
                    nncf.Dataset(batches),
                    preset=nncf.QuantizationPreset.MIXED,
                    subset_size=len(batches),
                    ignored_scope=ignored,
                    fast_bias_correction=fast_bias_correction,
                    advanced_parameters=nncf.AdvancedQuantizationParameters(
                        activations_range_estimator_params=range_estimator(calibration_method)
                    ),
                )
            meta.update(precision="int8", quantization={
                "tool": "nncf.quantize", "preset": "mixed", "weights": "int8 symmetric, per output channel",
                "activations": f"int8 asymmetric, per tensor, {calibration_method} ranges",
                "bias_correction": "fast" if fast_bias_correction else "full",
                "calibration": used,
            })  # fmt: skip
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
