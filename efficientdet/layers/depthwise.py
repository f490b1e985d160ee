"""Depthwise convolutions whose gradients take oneDNN's fast CPU kernels.

On the CPU PyTorch runs convolutions through oneDNN, which has a dedicated depthwise kernel for each pass. Two of
EfficientNet's cases miss it in training with channels-last activations (as `efficientdet train` runs them):

- The weight gradient of a depthwise kernel wider than 3 (the backbone's 5x5 convs): the dedicated kernel takes widths
  up to 3, so oneDNN falls back to its generic convolution, which pads each channel's one filter to a 16x16 block. A
  672-channel 20x20 layer at batch 8 on a 2-core AVX-512 CPU: 9 ms in fp32 (74 ms in bf16), against 3.3 ms for the
  same gradient assembled here from column blocks at most 3 wide.
- The bf16 input gradient of a strided depthwise conv: a generic strided kernel, 109 ms for the 96-channel 161x161
  layer against 39 ms for the same sums in fp32 through a transposed convolution.

Both replacements compute the same sums as the convolution's own backward (in another order; the tests compare them
on every shape the models use). Forward passes, inference and every other conv are untouched.

Why column blocks work: with stride ``s`` and padding ``p``, kernel column ``j`` pairs output column ``w`` with input
column ``s*w + j - p``. A block of columns ``c .. c+k'-1`` run as its own depthwise conv with padding ``p'`` pairs its
output column ``w'`` with input column ``s*w' + (j - c) - p'``: the same input column when ``w' = w + (c - p + p')/s``.
So the block's weight gradient is that conv's weight gradient given the output gradient shifted right by
``(c - p + p')/s`` columns (zeros shifted in; a column shifted out must meet only padding).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

# (kernel width, padding) pairs oneDNN's dedicated depthwise weight-gradient kernel takes: widths up to 3, padding at
# most 1 at width 3 and none below; a 1-wide block at stride 1 only (strided, it takes the generic kernel). Found
# with ONEDNN_VERBOSE=1, which names the kernel each call runs.
DEDICATED_BLOCKS = ((3, 1), (3, 0), (2, 0), (1, 0))


class ColumnBlock(NamedTuple):
    """Kernel columns ``start .. start+width-1`` as a depthwise conv with ``padding`` left and right; the output
    gradient shifted right by ``shift`` columns (negative: left) into ``grad_width`` columns."""

    start: int
    width: int
    padding: int
    shift: int
    grad_width: int


@functools.lru_cache(maxsize=512)
def column_blocks(
    kernel_w: int, pad_w: int, stride_w: int, in_w: int, out_w: int, first: int = 0
) -> tuple[ColumnBlock, ...] | None:
    """The blocks (fewest shifted gradient copies, then fewest calls, then fewest columns) covering kernel columns
    ``first .. kernel_w-1``, or None if none fits. The last block may reach past the kernel's end: its extra
    columns' gradients are computed and dropped."""
    best: dict[int, tuple[int, int, int, tuple[ColumnBlock, ...]]] = {first: (0, 0, 0, ())}
    for start in range(first, kernel_w):
        if start not in best:
            continue
        copies, calls, columns, blocks = best[start]
        for width, padding in DEDICATED_BLOCKS:
            offset = start - pad_w + padding
            if offset % stride_w or (width == 1 and stride_w > 1):
                continue
            shift = offset // stride_w
            grad_width = (in_w + 2 * padding - width) // stride_w + 1
            if grad_width < 1:
                continue
            in_kernel = min(width, kernel_w - start)  # the block's columns that are the kernel's
            dropped = [w for w in range(out_w) if not 0 <= w + shift < grad_width]
            if any(_meets_input(stride_w * w + start - pad_w, in_kernel, in_w) for w in dropped):
                continue  # a gradient column shifted out would take real input columns with it
            block = ColumnBlock(start, width, padding, shift, grad_width)
            cost = (copies + (shift != 0 or grad_width != out_w), calls + 1, columns + width, blocks + (block,))
            end = min(start + width, kernel_w)
            if end not in best or cost[:3] < best[end][:3]:
                best[end] = cost
    return best[kernel_w][3] if kernel_w in best else None


def _meets_input(first: int, width: int, in_w: int) -> bool:
    """Whether input columns ``first .. first+width-1`` include one inside the picture (not padding)."""
    return first + width > 0 and first < in_w


def weight_grad_by_blocks(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    blocks: tuple[ColumnBlock, ...],
) -> torch.Tensor:
    """The depthwise weight gradient ``[C, 1, kh, kw]``, one dedicated-kernel call per column block; zeros in the
    columns before the first block (known zero taps, see :func:`same_padded_depthwise_conv2d`)."""
    out_w = grad_out.shape[-1]
    channels, _, kernel_h, kernel_w = weight.shape
    first = blocks[0].start
    parts = [weight.new_zeros(channels, 1, kernel_h, first)] if first else []
    for block in blocks:
        right = block.grad_width - out_w - block.shift
        shifted = grad_out if block.shift == 0 and right == 0 else F.pad(grad_out, (block.shift, right))
        columns = weight.new_empty(channels, 1, kernel_h, block.width)  # only its shape matters here
        part = torch.ops.aten.convolution_backward(
            shifted, x, columns, None, list(stride), [padding[0], block.padding], [1, 1], False, [0, 0],
            x.shape[1], [False, True, False],
        )[1]  # fmt: skip
        parts.append(part[..., : kernel_w - block.start])
    return torch.cat(parts, dim=-1)


def strided_input_grad_in_fp32(
    grad_out: torch.Tensor,
    weight: torch.Tensor,
    in_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """The input gradient of a strided bf16 depthwise conv, computed in fp32 by the transposed conv (oneDNN's
    dedicated kernel) and returned in bf16."""
    kh, kw = weight.shape[-2:]
    extra = [
        size - ((o - 1) * s - 2 * p + k)
        for size, o, s, p, k in zip(in_size, grad_out.shape[-2:], stride, padding, (kh, kw))
    ]  # the rows / columns the forward conv's stride left unread
    grad = F.conv_transpose2d(grad_out.float(), weight.float(), None, stride, padding, extra, weight.shape[0])
    return grad.to(grad_out.dtype)


class _DepthwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` with the backward described above."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
        blocks: tuple[ColumnBlock, ...] | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.blocks = stride, padding, blocks  # type: ignore[attr-defined]
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding, blocks = ctx.stride, ctx.padding, ctx.blocks  # type: ignore[attr-defined]
        want_x, want_w = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        strided_bf16 = want_x and x.dtype == torch.bfloat16 and stride != (1, 1)
        by_blocks = want_w and blocks is not None
        grad_x = grad_w = None
        if (want_x and not strided_bf16) or (want_w and not by_blocks):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], x.shape[1],
                [want_x and not strided_bf16, want_w and not by_blocks, False],
            )  # fmt: skip
        if strided_bf16:
            grad_x = strided_input_grad_in_fp32(grad_out, weight, tuple(x.shape[-2:]), stride, padding)
        if by_blocks:
            grad_w = weight_grad_by_blocks(grad_out, x, weight, stride, padding, blocks)
        return grad_x, grad_w, None, None, None


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast would run a conv in, or None when it is off (torch >= 2.4 names it per device)."""
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None  # pragma: no cover


def _training_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype a depthwise conv trains in where this module's gradients apply (the CPU with oneDNN, channels-last
    fp32 or bf16 activations, a gradient to compute), else None."""
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return None
    if x.device.type != "cpu" or x.dim() != 4 or not torch.backends.mkldnn.is_available():
        return None
    if not torch.backends.mkldnn.enabled or not x.is_contiguous(memory_format=torch.channels_last):
        return None
    dtype = _cpu_autocast_dtype() or x.dtype
    if dtype not in (torch.float32, torch.bfloat16) or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    return dtype


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    zero_columns: int = 0,
) -> torch.Tensor | None:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` (no bias, no dilation) with the faster
    gradients where they apply; None where they do not (the caller runs its plain conv).

    They apply in training on the CPU with oneDNN and channels-last fp32 or bf16 activations, when a gradient would
    otherwise take one of oneDNN's slow paths (module docstring). ``zero_columns``: the kernel's first columns are
    known zeros whose gradient nobody needs (their gradient is returned as zeros).
    """
    dtype = _training_dtype(x, weight)
    if dtype is None:
        return None
    blocks = None
    if weight.requires_grad and weight.shape[-1] > 3:
        out_w = (x.shape[-1] + 2 * padding[1] - weight.shape[-1]) // stride[1] + 1
        blocks = column_blocks(weight.shape[-1], padding[1], stride[1], x.shape[-1], out_w, zero_columns)
    strided_bf16 = x.requires_grad and dtype == torch.bfloat16 and stride != (1, 1)
    if blocks is None and not strided_bf16:
        return None
    if dtype != x.dtype or dtype != weight.dtype:  # what autocast does to a conv's inputs; autograd undoes it
        x, weight = x.to(dtype), weight.to(dtype)
    return _DepthwiseConv.apply(x, weight, stride, padding, blocks)


def same_padded_depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], pads: tuple[int, int, int, int]
) -> torch.Tensor | None:
    """A depthwise conv with TF "SAME" padding ``pads`` (left, right, top, bottom) in training, without the padded
    copy of its input; None where this module's gradients do not apply (the caller pads and runs its plain conv).

    SAME pads ``(p, p)`` or ``(p, p + 1)``. The asymmetric case equals a symmetric pad of ``p + 1`` with the kernel
    grown by one zero tap in front (the tap multiplies the extra pad's zeros, exactly): the padded copy (a full write
    of the input forward, and a full copy of its gradient backward) is gone, and oneDNN's dedicated kernels take the
    grown kernel, its zero column left out of the weight gradient. ``models.fuse`` does the same for inference.
    """
    if _training_dtype(x, weight) is None:
        return None
    left, right, top, bottom = pads
    grow_w, grow_h = right - left, bottom - top
    if grow_w not in (0, 1) or grow_h not in (0, 1):
        return None
    grown = F.pad(weight, (grow_w, 0, grow_h, 0)) if grow_w or grow_h else weight
    padding = (bottom, right)
    y = depthwise_conv2d(x, grown, stride, padding, zero_columns=grow_w)
    if y is not None:
        return y
    if grown.shape[-1] > 3 and grown.requires_grad:
        return None  # no plan of dedicated blocks: oneDNN's own weight gradient would be its generic kernel
    return F.conv2d(x, grown, None, stride, padding, 1, x.shape[1])
