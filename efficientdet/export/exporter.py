"""``efficientdet export``: the network as ONNX or as a ``torch.export`` program (``.pt2``).

Both formats capture one of two thin wrappers around :class:`EfficientDet`, so that what is written is the same
computation whatever the format:

- :class:`RawOutputs` (default): input ``images [B, 3, H, W]`` (normalised RGB floats, as the model takes them),
  outputs ``class_logits [B, A, C]`` and ``box_codes [B, A, 4]`` (ty, tx, th, tw), flattened over the levels in
  the anchor order of :func:`efficientdet.anchors.anchors_for_config` (level, y, x, anchor). Flat tensors rather
  than per-level maps: one name each, and the anchors line up with them one to one.
- :class:`DetectionOutputs` (``with_nms``): the same network plus top-k over anchor x class, box decoding against
  anchors embedded as a constant, and per-class hard NMS, with fixed-size outputs ``boxes [B, max_det, 4]``
  (x1, y1, x2, y2, input pixels), ``scores [B, max_det]``, ``labels [B, max_det]`` (int64, 0-based) and
  ``num_detections [B]`` (int64). Rows past ``num_detections`` are padding: boxes and scores 0, labels -1. The
  detections equal :func:`efficientdet.postprocess.postprocess`'s, in the same order.

The input size is fixed at export time (the anchors and the TF "SAME" padding depend on it; the network reads
it from the input, so the graph is exact at that size) unless ``dynamic_size`` (multiples of 128, see
:mod:`efficientdet.export_graph`); the batch is fixed too unless ``dynamic_batch``. In-graph top-k defaults to
:data:`EXPORT_TOPK` (3840, TensorRT's limit). ``half`` makes the network float16. ``efficientdet export`` verifies
each file against eager PyTorch on pictures before it puts it in place (:mod:`efficientdet.export_verify`).

Why these exporters: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based ONNX exporter, the
default since torch 2.9) and ``torch.export`` for ``.pt2`` capture the model the same way, and both check the input
shape they were exported for. The TorchScript-based ONNX exporter still works in torch 2.13 but is deprecated, and
so is every ``torch.jit`` entry point (trace, script, save, load): no TorchScript output. The new ONNX exporter
writes opset 18 or newer (it has no opset-17 implementations to convert down to), hence ``opset=18``.

NMS in the graph is one custom op, ``efficientdet::nms_keep_mask``, defined with ONNX ``NonMaxSuppression``
semantics: its plain-torch implementation (:func:`efficientdet.postprocess.batched_nms` per class) runs in eager
mode and in ``.pt2`` programs (load those with ``efficientdet.export`` imported, which registers the op:
:func:`load_torch` does), and the ONNX exporter translates it to ``NonMaxSuppression`` + ``ScatterND``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference.detector import Detector
from ..models.detector import EfficientDet
from ..ops.anchors import anchors_for_config, decode_boxes
from ..ops.postprocess import MAX_DETECTIONS, NMS_IOU, batched_nms, flatten_outputs
from .graph import (
    MIN_BLOCKS,
    HalfNetwork,
    dynamic_example_size,
    feature_map_anchors,
    size_free_copy,
    size_multiple,
)
from .onnx_passes import merge_max_pool_pads_in_file
from .verify import (
    FLOAT16,
    FLOAT32,
    INT8,
    Tolerance,
    detector_reference,
    image_batch,
    load_verification_images,
    verify_file,
)

FORMATS = ("onnx", "pt2", "openvino")  # openvino (and --int8): efficientdet.quantize / openvino_export
RAW_OUTPUTS = ("class_logits", "box_codes")
NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
INPUT_NAME = "images"
DEFAULT_OPSET = 18  # the torch.export-based ONNX exporter's lowest opset
METADATA_KEY = "efficientdet"  # ONNX metadata_props key / extra file name (".json" added) holding the description
NMS_OP = "efficientdet::nms_keep_mask"
_EXCLUDED = -0.5  # (class, box) pairs with a score below this take no part in NMS; the graph writes -1 for them
# In-graph top-k default: TensorRT's TopK layer accepts k <= 3840 (TensorRT Operators documentation, TopK:
# "K ... must be less than or equal to 3840"), so a larger k makes TensorRT reject the whole ONNX graph.
# Eager post-processing (efficientdet.postprocess.TOPK_CANDIDATES) keeps the official 5000.
EXPORT_TOPK = 3840


def _nms_keep_mask_impl(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_per_class: int, score_threshold: float
) -> torch.Tensor:
    """Per-class hard NMS with ONNX ``NonMaxSuppression`` semantics, as a ``[B, K]`` mask of the kept boxes.

    ``boxes [B, K, 4]`` (any diagonal corner pair), ``scores [B, C, K]``. A (class, box) pair takes part when its
    score is > ``score_threshold``; within a class, a box is suppressed by a kept higher-scoring one with IoU >
    ``iou_threshold`` (ties: lower index first); at most ``max_per_class`` boxes are kept per class. A mask rather
    than ONNX's ``[N, 3]`` index list keeps every shape static, so torch.export needs no data-dependent sizes.
    """
    batch, _, num_boxes = scores.shape
    mask = torch.zeros(batch, num_boxes, dtype=torch.bool, device=boxes.device)
    for b in range(batch):
        classes, index = torch.nonzero(scores[b] > score_threshold, as_tuple=True)
        for c in torch.unique(classes).tolist():
            idx = index[classes == c]
            same = torch.zeros(len(idx), dtype=torch.long, device=boxes.device)
            keep = batched_nms(boxes[b, idx], scores[b, c, idx], same, iou_threshold, max_per_class)
            mask[b, idx[keep]] = True
    return mask


def _register_nms_op() -> Callable[..., torch.Tensor] | None:
    """Register ``efficientdet::nms_keep_mask`` (``torch.library.custom_op``, torch >= 2.4); None where unavailable.

    Done at import so that saved ``.pt2`` files that call the op load after ``import efficientdet.export``.
    """
    custom_op = getattr(torch.library, "custom_op", None)
    if custom_op is None:  # pragma: no cover - old torch
        return None
    try:
        op = custom_op(NMS_OP, mutates_args=())(_nms_keep_mask_impl)
    except RuntimeError:  # pragma: no cover - already registered (module re-imported under another name)
        return torch.ops.efficientdet.nms_keep_mask

    @op.register_fake
    def _(boxes, scores, iou_threshold, max_per_class, score_threshold):
        return boxes.new_empty((scores.shape[0], scores.shape[2]), dtype=torch.bool)

    return op


_nms_keep_mask = _register_nms_op()


def _onnx_nms_translation() -> Callable[..., Any]:
    """ONNX Script for ``efficientdet::nms_keep_mask``: ``NonMaxSuppression``, then the kept boxes scattered into
    a ``[B, K]`` mask (imported lazily: onnxscript is an optional dependency)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    def nms_keep_mask(boxes, scores, iou_threshold: float, max_per_class: int, score_threshold: float):
        selected = op.NonMaxSuppression(
            boxes,
            scores,
            op.Constant(value_ints=[max_per_class]),
            op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[score_threshold]),
        )  # [N, 3] (batch, class, box)
        batch_box = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # [N, 2]
        mask_shape = op.Gather(op.Shape(scores), op.Constant(value_ints=[0, 2]), axis=0)  # [B, K]
        count = op.Gather(op.Shape(selected), op.Constant(value_ints=[0]), axis=0)  # [N]
        ones = op.Expand(op.Constant(value_floats=[1.0]), count)
        mask = op.ScatterND(op.ConstantOfShape(mask_shape), batch_box, ones, reduction="max")
        return op.Cast(mask, to=TensorProto.BOOL)

    return nms_keep_mask


class RawOutputs(nn.Module):
    """The network with its per-level outputs flattened to ``class_logits [B, A, C]`` and ``box_codes [B, A, 4]``."""

    def __init__(self, model: EfficientDet) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.config.num_classes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        class_outputs, box_outputs = self.model(images)
        return flatten_outputs(class_outputs, box_outputs, self.num_classes)


class DetectionOutputs(nn.Module):
    """Network + top-k + decoding + per-class NMS with static shapes: what ``with_nms`` exports.

    Same steps and arithmetic as :func:`efficientdet.postprocess.postprocess`; written without data-dependent
    shapes (a score of -1 marks what a boolean index would drop) so that every exporter can capture it.
    ``image_size=None`` builds a free-size graph: anchors computed from the feature maps' sizes, and the
    candidates padded to ``topk`` so that top-k's k is a constant whatever the number of anchors.
    """

    def __init__(
        self,
        model: EfficientDet,
        image_size: tuple[int, int] | None,
        score_threshold: float = 0.05,
        iou_threshold: float = NMS_IOU,
        max_det: int = MAX_DETECTIONS,
        topk: int = EXPORT_TOPK,
    ) -> None:
        super().__init__()
        if _nms_keep_mask is None:  # pragma: no cover - old torch
            raise RuntimeError(f"NMS inside an exported graph needs torch >= 2.4 (this is {torch.__version__})")
        if max_det < 1 or topk < 1:
            raise ValueError(f"max_det and topk must be >= 1, got {max_det} and {topk}")
        self.raw = RawOutputs(model)
        self.config = model.config
        self.num_classes = model.config.num_classes
        device = next(model.parameters()).device
        anchors = None if image_size is None else anchors_for_config(model.config, image_size).to(device)
        self.register_buffer("anchors", anchors, persistent=False)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_det = int(max_det)
        self.topk = int(topk)

    def _candidates(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k (anchor, class) pairs: scores, labels, decoded boxes ``[B, k, 4]``, and whether each is real."""
        class_outputs, box_outputs = self.raw.model(images)
        logits, codes = flatten_outputs(class_outputs, box_outputs, self.num_classes)
        batch, num_anchors, num_classes = logits.shape
        flat = logits.reshape(batch, -1)
        if self.anchors is not None:
            anchors = self.anchors
            k = min(self.topk, num_anchors * num_classes)
        else:  # free size: pad with -inf so that k = topk always fits; the padding is never a detection
            anchors = feature_map_anchors(self.config, class_outputs)
            k = self.topk
            flat = torch.cat([flat, flat.new_full((batch, k), float("-inf"))], 1)
        top_logits, flat_idx = torch.topk(flat, k)
        real = flat_idx < num_anchors * num_classes
        anchor_idx = torch.where(real, torch.div(flat_idx, num_classes, rounding_mode="floor"), 0)
        labels = flat_idx % num_classes
        scores = torch.sigmoid(top_logits.float())
        top_codes = torch.gather(codes, 1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4)).float()
        boxes = decode_boxes(top_codes, anchors[anchor_idx].float())  # [B, k, 4] x1, y1, x2, y2
        return scores, labels, boxes, real

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, labels, boxes, real = self._candidates(images)
        k, num_classes = scores.shape[1], self.num_classes

        # postprocess() drops candidates below the threshold (>=, while NonMaxSuppression's own test is >), and
        # NMS is per class: each candidate takes part in its own class's row only.
        passing = torch.where((scores >= self.score_threshold) & real, scores, -1.0)
        class_ids = torch.arange(num_classes, device=labels.device).view(1, -1, 1)
        per_class = torch.where(labels.unsqueeze(1) == class_ids, passing.unsqueeze(1), -1.0)  # [B, C, k]
        keep = _nms_keep_mask(boxes, per_class, self.iou_threshold, self.max_det, _EXCLUDED)  # [B, k]

        # Candidates are sorted by score, so the kept ones in index order are postprocess()'s detections in order:
        # rank them by (k - index) and take the first max_det.
        m = min(self.max_det, k)
        rank = torch.where(keep, (k - torch.arange(k, device=keep.device)).to(scores.dtype), 0.0)
        order = torch.topk(rank, m).indices
        valid = torch.gather(keep, 1, order)
        out_boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        out_scores = torch.gather(scores, 1, order) * valid
        out_labels = torch.where(valid, torch.gather(labels, 1, order), -1)
        if m < self.max_det:  # fewer candidates than max_det (tiny input / few classes): pad to the fixed size
            pad = self.max_det - m
            out_boxes = F.pad(out_boxes, (0, 0, 0, pad))
            out_scores = F.pad(out_scores, (0, pad))
            out_labels = F.pad(out_labels, (0, pad), value=-1)
        return out_boxes, out_scores, out_labels, valid.sum(1)


def _image_size(model: EfficientDet, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    size = model.config.image_size if img_size is None else img_size
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    return h, w


def export_module(
    model: EfficientDet,
    img_size: int | tuple[int, int] | None = None,
    with_nms: bool = False,
    score_threshold: float = 0.05,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    topk: int = EXPORT_TOPK,
    *,
    dynamic_size: bool = False,
    half: bool = False,
) -> tuple[nn.Module, tuple[str, ...], tuple[int, int]]:
    """The module every exporter captures (eval mode), its output names and the input (H, W) to trace it at.

    ``dynamic_size``: SAME pads fixed for sides that are multiples of ``2**max_level`` and anchors built in the
    graph (:mod:`efficientdet.export_graph`); the size returned is then ``img_size`` rounded up to such a multiple
    (at least two of them). ``half``: the network in float16 between float32 input and outputs.
    Public so that a caller can run exactly what was exported, eagerly, e.g. to compare against the file.
    """
    size = _image_size(model, img_size)
    net: Any = model
    if dynamic_size:
        size = dynamic_example_size(size, size_multiple(model.config))
        net = size_free_copy(model)
    if half:
        net = HalfNetwork(net)
    if with_nms:
        anchor_size = None if dynamic_size else size
        module: nn.Module = DetectionOutputs(net, anchor_size, score_threshold, iou_threshold, max_det, topk)
        names = NMS_OUTPUTS
    else:
        module, names = RawOutputs(net), RAW_OUTPUTS
    return module.eval(), names, size


def topk_warning(with_nms: bool, topk: int) -> str | None:
    """The warning for an in-graph top-k that TensorRT rejects, or None."""
    if with_nms and topk > EXPORT_TOPK:
        return (f"--topk {topk} is above {EXPORT_TOPK}, the largest k of TensorRT's TopK layer: "
                "TensorRT will reject this graph (onnxruntime and OpenVINO run it)")  # fmt: skip
    return None


def _input_dims(
    model: EfficientDet, size: tuple[int, int], batch_size: int, dynamic_batch: bool, dynamic_size: bool
) -> tuple[tuple[dict[int, Any], ...] | None, dict[str, Any]]:
    """``dynamic_shapes`` for the exporters, and the input's description for the metadata."""
    dims: dict[int, Any] = {}
    shape: list[Any] = [batch_size, 3, *size]
    info: dict[str, Any] = {}
    if dynamic_batch:
        dims[0], shape[0] = torch.export.Dim("batch", min=1), "batch"
    if dynamic_size:
        multiple = size_multiple(model.config)
        # Derived dims tell torch.export that the sides are multiples: with them every size expression simplifies.
        dims[2] = multiple * torch.export.Dim("height_blocks", min=MIN_BLOCKS)
        dims[3] = multiple * torch.export.Dim("width_blocks", min=MIN_BLOCKS)
        shape[2:] = ["height", "width"]
        info = {"size_multiple": multiple, "min_size": MIN_BLOCKS * multiple, "traced_size": list(size),
                "size_note": f"height and width: any multiples of {multiple} (the stride of level "
                             f"{model.config.max_level}), at least {MIN_BLOCKS * multiple}"}  # fmt: skip
    return ((dims,) if dims else None), {"shape": shape, **info}


def _example_input(model: EfficientDet, batch_size: int, dynamic_batch: bool, size: tuple[int, int]) -> torch.Tensor:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # torch.export specialises a dimension of size 1 to a constant, so a dynamic batch is traced with 2.
    batch = max(batch_size, 2) if dynamic_batch else batch_size
    param = next(model.parameters())
    return torch.randn(batch, 3, *size, device=param.device, dtype=param.dtype)


def _metadata(
    model: EfficientDet, fmt: str, names: tuple[str, ...], dims: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """What a consumer of the file needs besides the graph: pre-processing, sizes, outputs, classes.

    ``dims``: ``shape`` (a name where free: "batch", "height", "width") and, for a free size, its constraints.
    """
    config = model.config
    pixels = "RGB, (x - mean) / std of 0-255 values"
    return {
        "model": config.name,
        "format": fmt,
        "input": {
            "name": INPUT_NAME,
            **dims,
            "dtype": "float32",
            "pixels": pixels,
            "mean": list(config.mean),
            "std": list(config.std),
        },
        "outputs": list(names),
        "num_classes": config.num_classes,
        "class_names": getattr(model, "class_names", None),
        "category_ids": getattr(model, "category_ids", None),  # the training data's ids (COCO JSON), where known
        "config": config.to_dict(),
        **extra,
    }


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Export in eval mode (batch norm statistics, no stochastic depth); give the model back as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes that do not concern this model (e.g. "torchvision is not installed")."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)  # torch-internal
            yield
    finally:
        logger.setLevel(level)


def _require_onnx_exporter() -> None:
    missing = []
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'efficientdet[export]' "
            "(onnx, onnxscript, and onnxruntime to run the file)"
        )
    import inspect

    params = inspect.signature(torch.onnx.export).parameters
    if "dynamo" not in params or "custom_translation_table" not in params:  # pragma: no cover - old torch
        raise RuntimeError(
            f"ONNX export uses the torch.export-based exporter of torch >= 2.6 (this is torch {torch.__version__})"
        )


def _prepare(
    model: EfficientDet,
    fmt: str,
    img_size: int | tuple[int, int] | None,
    batch_size: int,
    dynamic_batch: bool,
    dynamic_size: bool,
    half: bool,
    with_nms: bool,
    nms: dict[str, Any],
    **extra: Any,
) -> tuple[nn.Module, tuple[str, ...], torch.Tensor, tuple[dict[int, Any], ...] | None, dict[str, Any]]:
    """What both exporters capture: the module, output names, example input, dynamic shapes and metadata."""
    message = topk_warning(with_nms, nms["topk"])
    if message:
        warnings.warn(message, TopKWarning, stacklevel=3)
    module, names, size = export_module(model, img_size, with_nms, **nms, dynamic_size=dynamic_size, half=half)
    example = _example_input(model, batch_size, dynamic_batch, size)
    dynamic_shapes, dims = _input_dims(model, size, batch_size, dynamic_batch, dynamic_size)
    precision = {"precision": "fp16" if half else "fp32"}  # of the network; input and outputs are float32
    meta = _metadata(model, fmt, names, dims, **extra, **precision, **_nms_meta(with_nms, **nms))
    return module, names, example, dynamic_shapes, meta


class TopKWarning(UserWarning):
    """An export setting that some runtime (TensorRT) rejects."""


def export_onnx(
    model: EfficientDet,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    with_nms: bool = False,
    opset: int = DEFAULT_OPSET,
    score_threshold: float = 0.05,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    topk: int = EXPORT_TOPK,
    *,
    dynamic_size: bool = False,
    half: bool = False,
    pool_pads_inside: bool = True,
) -> Path:
    """Write ``model`` as ONNX to ``path`` and return it (see the module docstring for inputs and outputs).

    Args:
        img_size: input size, an int or (H, W); default the model's own. Fixed in the graph unless
            ``dynamic_size``, where it is only the size traced at (rounded up to a multiple of ``2**max_level``).
        batch_size: the batch of the input; with ``dynamic_batch`` any batch runs (the dimension is "batch").
        with_nms: include top-``topk``, decoding and per-class NMS (``iou_threshold``, scores >=
            ``score_threshold``, ``max_det`` kept) in the graph. A ``topk`` above :data:`EXPORT_TOPK` (TensorRT's
            limit) warns with :class:`TopKWarning`.
        opset: ONNX opset, >= 18 (the torch.export-based exporter's floor), at most the installed onnx's newest.
        dynamic_size: free height and width ("height", "width"): multiples of ``2**max_level`` (128), at least
            two of them (:mod:`efficientdet.export_graph`); other sizes give wrong outputs or an error.
        half: float16 weights and network arithmetic, for GPU runtimes; input and outputs stay float32.
        pool_pads_inside: the SAME max-pools' -inf ``Pad`` folded into the ``MaxPool`` (:mod:`.onnx_passes`; the
            same outputs). The OpenVINO int8 export turns it off: NNCF places its quantisers differently around a
            padded max-pool, which moved int8 AP.

    The file carries a JSON description under the ``efficientdet`` metadata key (mean/std, sizes, classes,
    config): :func:`read_metadata`.
    """
    _require_onnx_exporter()
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset}: the torch.export-based ONNX exporter writes opset {DEFAULT_OPSET} or newer")
    import onnx
    import onnx.defs

    if opset > onnx.defs.onnx_opset_version():  # the exporter would log a traceback and write opset 18 instead
        raise ValueError(f"opset {opset}: the installed onnx {onnx.__version__} writes at most opset "
                         f"{onnx.defs.onnx_opset_version()}")  # fmt: skip
    path = Path(path)
    nms = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, max_det=max_det, topk=topk)
    table = {torch.ops.efficientdet.nms_keep_mask.default: _onnx_nms_translation()} if with_nms else None
    with _eval_mode(model), _quiet_exporter(), torch.no_grad():
        module, names, example, dynamic_shapes, meta = _prepare(
            model, "onnx", img_size, batch_size, dynamic_batch, dynamic_size, half, with_nms, nms, opset=opset
        )
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(names),
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=table,
            verbose=False,
        )
    program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))  # weights inline; written as external data only past ONNX's 2 GB limit
    if pool_pads_inside:
        merge_max_pool_pads_in_file(path)  # SAME max-pools: the -inf Pad into the MaxPool (onnx_passes)
    return path


def _nms_meta(with_nms: bool, score_threshold: float, iou_threshold: float, max_det: int, topk: int) -> dict:
    if not with_nms:
        return {"with_nms": False}
    return {"with_nms": True, "score_threshold": score_threshold, "iou_threshold": iou_threshold,
            "max_det": max_det, "topk": topk}  # fmt: skip


def export_torch(
    model: EfficientDet,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    with_nms: bool = False,
    score_threshold: float = 0.05,
    iou_threshold: float = NMS_IOU,
    max_det: int = MAX_DETECTIONS,
    topk: int = EXPORT_TOPK,
    *,
    dynamic_size: bool = False,
    half: bool = False,
) -> Path:
    """Write ``model`` as a ``torch.export`` program (``torch.export.save``, a ``.pt2`` archive); return the path.

    Same inputs, outputs and arguments as :func:`export_onnx`. Load with :func:`load_torch` (or
    ``torch.export.load(path).module()`` after ``import efficientdet.export``, which registers the NMS op that
    ``with_nms`` files call). The program checks the input shape: the size (a multiple of 128, at least 256, with
    ``dynamic_size``), and the batch unless ``dynamic_batch``.
    The description of :func:`read_metadata` is stored in the archive as the extra file ``efficientdet.json``.
    """
    path = Path(path)
    nms = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, max_det=max_det, topk=topk)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _eval_mode(model), _quiet_exporter(), torch.no_grad():
        module, _, example, dynamic_shapes, meta = _prepare(
            model, "pt2", img_size, batch_size, dynamic_batch, dynamic_size, half, with_nms, nms
        )
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path), extra_files={METADATA_KEY + ".json": json.dumps(meta)})
    return path


def load_torch(path: str | os.PathLike) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Load a file of :func:`export_torch` as a callable ``images -> outputs`` (an ``nn.Module``)."""
    return torch.export.load(str(path)).module()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The description stored in an exported file: model, input shape, mean/std, outputs, classes, NMS settings."""
    path = str(path)
    if not zipfile.is_zipfile(path):  # .pt2 archives are zip files, ONNX files protobuf
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    extra = {METADATA_KEY + ".json": ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[METADATA_KEY + ".json"])


def read_any_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_metadata`, and for an OpenVINO IR (``.xml``) the same description from its ``rt_info``."""
    if Path(path).suffix.lower() == ".xml":
        from .runtimes import read_exported_metadata

        return read_exported_metadata(path)
    return read_metadata(path)


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> list[torch.Tensor]:
    """Run an exported ONNX file in onnxruntime (CPU) on ``images``; the outputs as tensors, in output order."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {INPUT_NAME: images.detach().cpu().numpy()})
    return [torch.from_numpy(o) for o in outputs]


def run_pt2(path: str | os.PathLike, images: torch.Tensor) -> list[torch.Tensor]:
    """Run a ``.pt2`` file of :func:`export_torch` on ``images``; the outputs as CPU tensors, in output order."""
    with torch.no_grad():
        return [t.cpu() for t in load_torch(path)(images)]


def run_openvino(path: str | os.PathLike, images: torch.Tensor) -> list[torch.Tensor]:
    """Run an OpenVINO IR (``.xml``) on ``images`` as predict, eval and bench compile it (fp32 float layers, the
    file's int8 layers in int8); the outputs as tensors, in output order."""
    from .openvino_core import openvino_core
    from .runtimes import compile_for_cpu

    compiled = compile_for_cpu(openvino_core().read_model(str(path)))
    result = compiled(images.detach().cpu().numpy())
    return [torch.from_numpy(result[output].copy()) for output in compiled.outputs]


RUNNERS: dict[str, Callable[[Path, torch.Tensor], list[torch.Tensor]]] = {
    "onnx": run_onnx,
    "pt2": run_pt2,
    "openvino": run_openvino,
}


def _verify_sizes(meta: dict[str, Any]) -> list[tuple[int, int]]:
    """The input sizes to check a file at: its fixed size, or for a free size the traced one and a wider one."""
    inp = meta["input"]
    if "traced_size" not in inp:
        return [(int(inp["shape"][2]), int(inp["shape"][3]))]
    h, w = inp["traced_size"]
    return [(h, w), (h, w + inp["size_multiple"])]


def _reference_detector(model: EfficientDet, meta: dict[str, Any], size: tuple[int, int]) -> Detector:
    """The :class:`Detector` an exported file is checked against: the eager model at the fixed input ``size``,
    with the file's post-processing settings (top-k, thresholds, ``max_det``; per-class hard NMS, the only NMS a
    graph holds). Eager prediction and the file then differ by the export alone."""
    settings = {k: meta[k] for k in ("score_threshold", "iou_threshold", "max_det", "topk")} if meta["with_nms"] else {}
    return Detector(model, device=next(model.parameters()).device, image_size=size, **settings)


def verify_export(model: EfficientDet, path: str | os.PathLike, batch_size: int = 1, seed: int = 0) -> dict[str, float]:
    """Run the exported file and the same computation eagerly on random images; max abs difference per output.

    The eager side is a :class:`Detector` with the file's settings (:func:`_reference_detector`). Integer
    outputs (labels, counts) report 0 or the largest difference. Settings are read from the file.
    :func:`verify_exported` is the check on pictures that ``efficientdet export`` runs.
    """
    meta = read_any_metadata(path)
    size = _verify_sizes(meta)[0]
    names = NMS_OUTPUTS if meta["with_nms"] else RAW_OUTPUTS
    fixed = meta["input"]["shape"][0]
    batch = fixed if isinstance(fixed, int) else batch_size
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=generator)
    with _eval_mode(model), torch.no_grad():
        reference = detector_reference(_reference_detector(model, meta, size), meta["with_nms"])
        expected = [t.cpu() for t in reference(images)]
        got = RUNNERS[meta["format"]](Path(path), images)
    return {name: float((g.double() - e.double()).abs().max()) if e.numel() else 0.0
            for name, g, e in zip(names, got, expected)}  # fmt: skip


def verify_exported(
    model: EfficientDet,
    path: str | os.PathLike,
    images: Sequence[np.ndarray] | None = None,
    runner: Callable[[Path, torch.Tensor], Sequence[torch.Tensor]] | None = None,
    tolerance: Tolerance | None = None,
    batch_size: int = 2,
) -> dict[str, float]:
    """Check an exported file against eager float32 PyTorch on pictures; the largest differences per output.

    The eager side is a :class:`Detector` with the file's settings (:func:`_reference_detector`): its network
    outputs for a raw-output file, its detections for a file with NMS, so the file must predict what prediction
    does. ``images``: RGB uint8 arrays, pre-processed by that Detector (default: synthetic pictures). ``runner``
    runs the file (default by its format: :data:`RUNNERS`; an int8 or OpenVINO exporter passes its own), and
    ``tolerance`` defaults by the file's precision. A free-size file is checked at two sizes; a dynamic batch at
    ``batch_size``. Raises :class:`~efficientdet.export_verify.VerificationError` past the tolerance.
    """
    meta = read_any_metadata(path)
    images = images if images is not None else load_verification_images(None)
    runner = runner or RUNNERS[meta["format"]]
    if tolerance is None:
        tolerance = {"fp16": FLOAT16, "int8": INT8}.get(meta.get("precision", "fp32"), FLOAT32)
    settings = {k: meta[k] for k in ("score_threshold", "iou_threshold", "max_det", "topk")} if meta["with_nms"] else {}
    fixed = meta["input"]["shape"][0]
    batch = fixed if isinstance(fixed, int) else batch_size
    names = NMS_OUTPUTS if meta["with_nms"] else RAW_OUTPUTS
    diffs: dict[str, float] = {}
    with _eval_mode(model):
        for size in _verify_sizes(meta):
            detector = _reference_detector(model, meta, size)  # float32, this fixed size
            batches = [image_batch(detector, images, batch)]
            step = verify_file(
                Path(path), runner, detector_reference(detector, meta["with_nms"]), names, batches, tolerance,
                settings or None,
            )  # fmt: skip
            diffs = {k: max(v, diffs.get(k, 0.0)) for k, v in step.items()}
    return diffs
