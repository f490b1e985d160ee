"""Bias correction of int8 ONNX files: a conv's bias absorbs the mean error of its rounded weights."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from efficientdet.export.bias_correction import correct_weight_bias  # noqa: E402

OPSET = [helper.make_opsetid("", 17)]


def _conv_models(groups: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, onnx.ModelProto, float]:
    """An fp32 Conv (stride 2, pads bottom/right only, as TF's SAME pads an even side) and the same conv in QDQ form:
    weights rounded to int8 on a coarse per-channel scale, the bias int32 at a fine scale. Returns both and the
    bias scale."""
    cin, cout = 4, 4 if groups > 1 else 6
    weight = rng.normal(0.0, 1.0, (cout, cin // groups, 3, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, cout).astype(np.float32)
    attrs = dict(strides=[2, 2], pads=[0, 0, 1, 1], group=groups, kernel_shape=[3, 3])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 9, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs)], "fp32", [x], [y],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]), opset_imports=OPSET)  # fmt: skip
    w_scale = (np.abs(weight).reshape(cout, -1).max(1) / 3).astype(np.float32)  # 7 levels: a large rounding error
    w_q = np.clip(np.round(weight / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    b_scale = np.full(cout, 1e-4, np.float32)
    b_q = np.round(bias / b_scale).astype(np.int32)
    nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["Wd"], axis=0),
        helper.make_node("DequantizeLinear", ["Bq", "Bs"], ["Bd"], axis=0),
        helper.make_node("Conv", ["x", "Wd", "Bd"], ["y"], name="conv", **attrs),
    ]
    inits = [numpy_helper.from_array(w_q, "Wq"), numpy_helper.from_array(w_scale, "Ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "Wz"), numpy_helper.from_array(b_q, "Bq"),
             numpy_helper.from_array(b_scale, "Bs")]  # fmt: skip
    quantized = helper.make_model(helper.make_graph(nodes, "int8", [x], [y], inits), opset_imports=OPSET)
    return fp32, quantized, float(b_scale[0])


def _mean_error(fp32: onnx.ModelProto, quantized: onnx.ModelProto, batches: list[np.ndarray]) -> np.ndarray:
    """Per output channel, the mean of (quantised - fp32) outputs over the batches and positions."""
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (fp32, quantized)]
    diffs = [run[1].run(None, {"x": b})[0] - run[0].run(None, {"x": b})[0] for b in batches]
    return np.mean([d.mean((0, 2, 3)) for d in diffs], 0)


@pytest.mark.parametrize("groups", [1, 4])  # a full conv and a depthwise one
def test_the_bias_absorbs_the_mean_error_of_the_rounded_weights(groups):
    rng = np.random.default_rng(groups)
    fp32, quantized, bias_step = _conv_models(groups, rng)
    # inputs with a non-zero mean (like ReLU6 outputs), so that the weights' rounding shifts each channel's mean
    calibration = [(rng.random((1, 4, 9, 8)) * 3 + 0.5).astype(np.float32) for _ in range(8)]
    fresh = [(rng.random((1, 4, 9, 8)) * 3 + 0.5).astype(np.float32) for _ in range(8)]
    before, before_fresh = _mean_error(fp32, quantized, calibration), _mean_error(fp32, quantized, fresh)
    assert np.abs(before).max() > 0.05  # the coarse weights do shift the outputs
    assert correct_weight_bias(fp32, quantized, calibration) == 1
    after, after_fresh = _mean_error(fp32, quantized, calibration), _mean_error(fp32, quantized, fresh)
    # on the calibration images the mean error is gone, up to the int32 bias's step (and float rounding)
    assert np.abs(after).max() <= bias_step, (before, after)
    # on other images of the same kind it is much smaller than before
    assert np.abs(after_fresh).max() < 0.3 * np.abs(before_fresh).max(), (before_fresh, after_fresh)
    stored = numpy_helper.to_array(next(i for i in quantized.graph.initializer if i.name == "Bq"))
    assert stored.dtype == np.int32


def test_convs_without_quantised_weights_are_left_alone():
    """A conv whose weights are fp32 (the heads' last convs) or that has no bias is not touched."""
    rng = np.random.default_rng(0)
    fp32, _, _ = _conv_models(1, rng)
    before = fp32.SerializeToString()
    same = onnx.ModelProto()
    same.CopyFrom(fp32)
    assert correct_weight_bias(fp32, same, [np.ones((1, 4, 9, 8), np.float32)]) == 0
    assert same.SerializeToString() == before
