"""export.onnx_passes.merge_max_pool_pads: the -inf Pad folded into the MaxPool, nothing else touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from efficientdet.export.onnx_passes import merge_max_pool_pads, merge_max_pool_pads_in_file  # noqa: E402


def _pad_pool_model(
    pads: list[int], value: float = -np.inf, pool_pads: list[int] | None = None, extra_use: bool = False
) -> onnx.ModelProto:
    """x [1, 2, H, W] -> Pad(pads, value) -> MaxPool(3x3, stride 2) -> y; with ``extra_use`` the padded tensor is
    also an output."""
    pool_attrs = {"kernel_shape": [3, 3], "strides": [2, 2]}
    if pool_pads is not None:
        pool_attrs["pads"] = pool_pads
    nodes = [
        helper.make_node("Pad", ["x", "pads", "value"], ["padded"], mode="constant"),
        helper.make_node("MaxPool", ["padded"], ["y"], **pool_attrs),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, None, None])]
    if extra_use:
        outputs.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, [1, 2, None, None]))
    graph = helper.make_graph(
        nodes,
        "pad_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, None, None])],
        outputs,
        initializer=[
            numpy_helper.from_array(np.array(pads, np.int64), "pads"),
            numpy_helper.from_array(np.array(value, np.float32), "value"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _pool_pads(model: onnx.ModelProto) -> list[int]:
    pool = next(node for node in model.graph.node if node.op_type == "MaxPool")
    return helper.get_attribute_value(next(a for a in pool.attribute if a.name == "pads"))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _same_max_pool(x: np.ndarray, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """Reference: torch pads with -inf, then pools (what TF's SAME max-pool computes)."""
    padded = F.pad(torch.from_numpy(x), (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(padded, 3, 2).numpy()


@pytest.mark.parametrize(
    ("size", "pads"),
    [
        ((8, 8), (0, 0, 1, 1)),  # even sides: SAME pads the bottom / right only
        ((5, 5), (1, 1, 1, 1)),  # odd sides: one on each end
        ((2, 3), (0, 1, 1, 1)),  # a coarsest level: a window larger than the unpadded side
    ],
)
def test_merged_pool_computes_the_same_maxima_including_all_negative_windows(size, pads):
    top, left, bottom, right = pads
    model = _pad_pool_model([0, 0, top, left, 0, 0, bottom, right])
    x = -np.abs(np.random.default_rng(0).standard_normal((1, 2, *size))).astype(np.float32) - 1.0
    before = _run(model, x)
    assert merge_max_pool_pads(model) == 1
    assert [node.op_type for node in model.graph.node] == ["MaxPool"]
    pool = model.graph.node[0]
    assert pool.input[0] == "x"
    assert _pool_pads(model) == [top, left, bottom, right]
    assert not model.graph.initializer  # the pad's amounts and value went with it
    onnx.checker.check_model(model)
    after = _run(model, x)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after, _same_max_pool(x, top, left, bottom, right))


def test_pool_pads_add_up():
    model = _pad_pool_model([0, 0, 0, 0, 0, 0, 1, 1], pool_pads=[1, 1, 0, 0])
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    before = _run(model, x)
    assert merge_max_pool_pads(model) == 1
    assert _pool_pads(model) == [1, 1, 1, 1]
    np.testing.assert_array_equal(_run(model, x), before)


@pytest.mark.parametrize(
    ("pads", "value", "extra_use"),
    [
        ([0, 0, 0, 0, 0, 0, 1, 1], 0.0, False),  # a zero pad can win a max of negative values: not the same pool
        ([0, 1, 0, 0, 0, 0, 1, 1], -np.inf, False),  # pads a channel
        ([0, 0, 0, 0, 0, 0, 1, 1], -np.inf, True),  # the padded tensor is read elsewhere too
        ([0, 0, 3, 0, 0, 0, 0, 0], -np.inf, False),  # a pad as large as the kernel: ONNX's MaxPool may not take it
    ],
)
def test_other_pads_are_left_alone(pads, value, extra_use):
    model = _pad_pool_model(pads, value=value, extra_use=extra_use)
    before = model.SerializeToString()
    assert merge_max_pool_pads(model) == 0
    assert model.SerializeToString() == before


def test_file_is_rewritten_only_when_something_folds(tmp_path):
    folds, stays = tmp_path / "folds.onnx", tmp_path / "stays.onnx"
    onnx.save(_pad_pool_model([0, 0, 0, 0, 0, 0, 1, 1]), str(folds))
    onnx.save(_pad_pool_model([0, 0, 0, 0, 0, 0, 1, 1], value=0.0), str(stays))
    untouched = stays.stat().st_mtime_ns
    assert merge_max_pool_pads_in_file(folds) == 1 and merge_max_pool_pads_in_file(stays) == 0
    assert [node.op_type for node in onnx.load(str(folds)).graph.node] == ["MaxPool"]
    assert stays.stat().st_mtime_ns == untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folds.onnx", "stays.onnx"]  # no staging file left


def test_pads_kept_as_external_data_are_left_alone(tmp_path):
    """A file past ONNX's 2 GB limit keeps its tensors in external data: read without loading them, and a pad whose
    amounts live there is not folded (nothing is rewritten)."""
    path = tmp_path / "external.onnx"
    onnx.save(_pad_pool_model([0, 0, 0, 0, 0, 0, 1, 1]), str(path), save_as_external_data=True, size_threshold=0)
    written = path.stat().st_mtime_ns
    assert merge_max_pool_pads_in_file(path) == 0
    assert path.stat().st_mtime_ns == written
    x = np.random.default_rng(2).standard_normal((1, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(onnx.load(str(path)), x), _same_max_pool(x, 0, 0, 1, 1))
