"""Bias correction of an int8 ONNX file: each quantised conv's bias absorbs the mean error of its rounded weights.

Rounding a conv's weights to int8 changes its output by ``conv(x, W_int8 - W)``, and that error does not average out:
per output channel it has a mean, which shifts every value of the channel the same way (a small bias that the next
layers, batch norms folded away, cannot undo). Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction" (ICCV 2019), subtract that expected error from the bias; NNCF's bias correction, which the
OpenVINO export uses, does the same with quantised inputs. Here, after onnxruntime's quantiser has written the QDQ
file, the fp32 network (the file the quantiser read) runs on calibration images with every quantised conv's input
exposed; the mean over images and positions of ``conv(x, W_int8 - W)`` per output channel (the conv's own strides,
pads and groups, so borders count) is subtracted from the bias, which stays int32 at its scale (input scale x
weight scale). Only the weights' rounding is corrected, not the inputs': adding each conv's own input rounding and
clipping, ``conv(Q(x) - x, W_int8)``, was tried on the same held-out images and not adopted (closer boxes with uint8
activations, none with int8 ones; docs/int8.md).

Chosen on images held out of raccoon's training split (``benchmarks/quantize.py --holdout-fraction 0.1``, three
models), and judged again once the network's outputs stayed fp32: the mean IoU of int8 boxes with the fp32 ones rose
0.966 -> 0.979 (int8 activations) and 0.967 -> 0.978 (uint8), AP lost 0.0019 -> 0.0008 and 0.0043 -> -0.0054.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .onnx_passes import node_producers

BIAS_CORRECTION_IMAGES = 32  # calibration images the mean error is taken over (spread over all of them)


def _weight_error(quantized_inits: dict[str, Any], dequantize: Any, fp32_weight: np.ndarray) -> np.ndarray | None:
    """``W_int8 * scale - W`` of one conv (per-channel or per-tensor scale and zero point), or None when the weight
    is not a quantised initializer."""
    from onnx import numpy_helper

    if dequantize is None or dequantize.op_type != "DequantizeLinear" or dequantize.input[0] not in quantized_inits:
        return None
    q = numpy_helper.to_array(quantized_inits[dequantize.input[0]]).astype(np.float32)
    shape = (-1,) + (1,) * (q.ndim - 1)
    scale = np.reshape(numpy_helper.to_array(quantized_inits[dequantize.input[1]]).astype(np.float32), shape)
    zero = 0.0
    if len(dequantize.input) > 2 and dequantize.input[2]:
        zero = np.reshape(numpy_helper.to_array(quantized_inits[dequantize.input[2]]).astype(np.float32), shape)
    return (q - zero) * scale - fp32_weight


def _conv_output_mean(x: np.ndarray, weight: np.ndarray, attributes: dict[str, Any]) -> np.ndarray:
    """Per output channel, the mean over batch and positions of the ONNX Conv of ``x`` with ``weight`` (no bias)."""
    top, left, bottom, right = attributes.get("pads", [0, 0, 0, 0])
    padded = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    out = F.conv2d(padded, torch.from_numpy(weight), None, attributes.get("strides", [1, 1]), 0,
                   attributes.get("dilations", [1, 1]), attributes.get("group", 1))  # fmt: skip
    return out.double().mean((0, 2, 3)).numpy()


def correct_weight_bias(
    fp32_model: Any, quantized_model: Any, batches: Sequence[np.ndarray], images: int = BIAS_CORRECTION_IMAGES
) -> int:
    """Correct the biases of ``quantized_model`` (a QDQ ``onnx.ModelProto``, changed in place) for the mean error of
    its rounded conv weights, measured on up to ``images`` of the calibration ``batches`` run through ``fp32_model``
    (the ModelProto the quantiser read; its convs carry the same node names). Returns how many convs it corrected:
    those with int8 weights and an int32 bias, both initializers; 2-D convs only (this project's networks)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    fp32_inits = {init.name: init for init in fp32_model.graph.initializer}
    fp32_convs = {node.name: node for node in fp32_model.graph.node if node.op_type == "Conv"}
    inits = {init.name: init for init in quantized_model.graph.initializer}
    producers = node_producers(quantized_model.graph.node)
    jobs = []  # (fp32 input tensor name, weight error, conv attributes, the bias's DequantizeLinear)
    for node in quantized_model.graph.node:
        reference = fp32_convs.get(node.name)
        if node.op_type != "Conv" or reference is None or len(node.input) < 3 or reference.input[1] not in fp32_inits:
            continue
        bias = producers.get(node.input[2])
        if bias is None or bias.op_type != "DequantizeLinear" or bias.input[0] not in inits:
            continue
        if len(bias.input) > 2 and bias.input[2] and numpy_helper.to_array(inits[bias.input[2]]).any():
            continue  # a bias with a zero point: not what the quantiser writes
        error = _weight_error(inits, producers.get(node.input[1]),
                              numpy_helper.to_array(fp32_inits[reference.input[1]]).astype(np.float32))  # fmt: skip
        if error is not None and error.ndim == 4:
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            jobs.append((reference.input[0], error, attributes, bias))
    if not jobs:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32_model)
    outputs = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(name for name, *_ in jobs):
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the fp32 values, as written
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    per_batch = max(1, len(batches[0]))
    step = max(1, len(batches) * per_batch // images)
    used = list(batches[::step])[: max(1, images // per_batch)]
    sums = [np.zeros(len(error), np.float64) for _, error, _, _ in jobs]
    for batch in used:
        values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch})))
        for i, (name, error, attributes, _) in enumerate(jobs):
            sums[i] += _conv_output_mean(values[name], error, attributes)
    for total, (_, _, _, bias) in zip(sums, jobs):
        init = inits[bias.input[0]]
        stored = numpy_helper.to_array(init)
        scale = numpy_helper.to_array(inits[bias.input[1]]).astype(np.float64)
        corrected = stored.astype(np.float64) * scale - total / len(used)
        limits = np.iinfo(stored.dtype)
        init.CopyFrom(numpy_helper.from_array(
            np.clip(np.round(corrected / scale), limits.min, limits.max).astype(stored.dtype), init.name))  # fmt: skip
    return len(jobs)
