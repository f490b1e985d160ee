"""Variants of the network for export: a free input size (``--dynamic-size``) and fp16 weights (``--half``).

Free size. TF "SAME" padding (:func:`efficientdet.nn.layers.same_padding`) depends on the input size, and traced
with a symbolic size its ``max``/``ceil`` expressions nest through ~100 layers until ``torch.export`` spends
minutes in sympy. For a size divisible by every stride on the way down, though, SAME pads a fixed amount
(``kernel - stride``, the extra one at the bottom/right): when every input side is a multiple of ``2**max_level``
(128 for levels 3-7), every stride-2 layer sees an even size. :func:`size_free_copy` swaps the size-dependent pads
for those fixed ones (same arithmetic as the original at such sizes), and :func:`feature_map_anchors` builds the
anchors from the feature maps' sizes inside the graph instead of embedding them for one size.

Half. :class:`HalfNetwork` holds a float16 copy of the network and takes float32 images (cast in the graph), and
returns float32 outputs, so a file with ``--half`` takes the same input as any other; top-k, decoding and NMS after
it stay float32 (score ties and box arithmetic, cheap next to the network).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.blocks import Conv2d, MaxPoolDown, same_padding
from ..models.config import ModelConfig
from ..ops.anchors import level_anchors

MIN_BLOCKS = 2  # torch.export fixes a map of size 1 (it guards on it), so the coarsest level needs >= 2 cells


def size_multiple(config: ModelConfig) -> int:
    """The stride of the coarsest level: a free-size graph's input sides must be multiples of it."""
    return 2**config.max_level


def dynamic_example_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The size to trace a free-size graph at: ``size`` rounded up to a multiple, at least ``MIN_BLOCKS`` of them."""
    return tuple(max(MIN_BLOCKS, -(-side // multiple)) * multiple for side in size)  # type: ignore[return-value]


class FixedPad(nn.Module):
    """``inner(F.pad(x, pad))``: a SAME-padded layer with the pads of a size divisible by its stride."""

    def __init__(self, inner: nn.Module, pad: tuple[int, int, int, int], value: float = 0.0) -> None:
        super().__init__()
        self.inner = inner
        self.pad = pad
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.pad(x, self.pad, value=self.value))


def _divisible_pad(kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) that SAME adds to a side divisible by the stride (any such side: 4 strides)."""
    top, bottom = same_padding(4 * stride[0], kernel[0], stride[0])
    left, right = same_padding(4 * stride[1], kernel[1], stride[1])
    return left, right, top, bottom


def size_free_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose SAME pads do not depend on the input size (exact for multiples of
    :func:`size_multiple`); the weights are copied, the original is untouched."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2d) and child.dynamic_same:
                child.dynamic_same = False  # plain conv with padding 0 after the fixed pad
                setattr(parent, name, FixedPad(child, _divisible_pad(child.kernel_size, child.stride)))
            elif isinstance(child, MaxPoolDown) and child.padding == "same":
                k, s = (child.kernel_size,) * 2, (child.stride,) * 2
                pool = nn.MaxPool2d(child.kernel_size, child.stride)
                setattr(parent, name, FixedPad(pool, _divisible_pad(k, s), float("-inf")))
    return model


def feature_map_anchors(config: ModelConfig, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The anchors of the per-level outputs ``maps`` (levels min..max), ``[A, 4]`` float32, built from their
    (possibly symbolic) sizes: the anchors of :func:`efficientdet.anchors.anchors_for_config`, computed in float32
    from float64 anchor sizes (a coordinate may differ from those by one float32 rounding)."""
    return torch.cat([
        level_anchors(m.shape[-2], m.shape[-1], level, config.anchor_scale, config.num_scales,
                      config.aspect_ratios, dtype=torch.float32, device=m.device)
        for level, m in zip(range(config.min_level, config.max_level + 1), maps)
    ])  # fmt: skip


class HalfNetwork(nn.Module):
    """A float16 copy of ``model``: float32 images in (cast in the graph), float32 per-level outputs out.

    Has the ``config`` of the model, so the export wrappers take it in the model's place.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()
        self.config = model.config

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        class_outputs, box_outputs = self.model(images.half())
        return [c.float() for c in class_outputs], [b.float() for b in box_outputs]
