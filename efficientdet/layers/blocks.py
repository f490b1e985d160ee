"""Small building blocks shared by backbone, feature network and heads.

Two padding flavours exist because the published weights come in two: TF-trained weights need TensorFlow's
"SAME" padding (asymmetric, computed from the input size at run time), PyTorch-trained ones use symmetric k//2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .depthwise import depthwise_conv2d, same_padded_depthwise_conv2d

# Batch norm settings of the official code: TF decay 0.99 -> PyTorch momentum 0.01, eps 1e-3 (paper, section 5.1).
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding that TF "SAME" adds along one axis of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """Batch norm with the official momentum/eps (paper, section 5.1: decay 0.99, epsilon 1e-3)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def in_place_is_free(x: torch.Tensor) -> bool:
    """Whether an activation may overwrite ``x``: not when autograd records it.

    Under autograd an in-place ReLU6 / SiLU / ReLU clones its input first (torch's profiler: ``aten::clone`` inside
    ``aten::hardtanh_``, 4% of a Lite0 training step), so a new output is cheaper there; where nothing is recorded
    (inference, a frozen backbone's input) overwriting saves a buffer.
    """
    return not (x.requires_grad and torch.is_grad_enabled())


class ReLU6(nn.ReLU6):
    """``nn.ReLU6``, its ``inplace`` honoured only where that is free (:func:`in_place_is_free`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, 0.0, 6.0, inplace=self.inplace and in_place_is_free(x))


class SiLU(nn.SiLU):
    """``nn.SiLU``, its ``inplace`` honoured only where that is free (:func:`in_place_is_free`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=self.inplace and in_place_is_free(x))


class ReLU(nn.ReLU):
    """``nn.ReLU``, its ``inplace`` honoured only where that is free (:func:`in_place_is_free`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=self.inplace and in_place_is_free(x))


class _SpatialMean(torch.autograd.Function):
    """``x.mean((2, 3), keepdim=True)`` whose gradient is the output gradient / (H * W), expanded, not written out.

    autograd's own mean backward writes that gradient into a new full-size tensor, which is then added to the
    gradient ``x`` gets from its other use (the squeeze-excitation's product); in channels-last the two disagree in
    layout and the addition runs strided. An expanded gradient is read in place: the same divisions and additions,
    D0's squeeze-excitation backward about 3x faster on the CPU.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shape = x.shape  # type: ignore[attr-defined]
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n, c, h, w = ctx.shape  # type: ignore[attr-defined]
        return (grad / (h * w)).expand(n, c, h, w)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W of ``[N, C, H, W]``, keeping the dims (``[N, C, 1, 1]``); see :class:`_SpatialMean`."""
    if x.requires_grad and torch.is_grad_enabled():
        return _SpatialMean.apply(x)
    return x.mean((2, 3), keepdim=True)  # inference and exports: the plain op


ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"silu": SiLU, "relu6": ReLU6, "relu": ReLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATION_MODULES:
        raise ValueError(f"unknown activation {name!r}")
    return ACTIVATION_MODULES[name](inplace=True)


def variance_scaling_(module: nn.Module) -> None:
    """TF's variance-scaling init (scale 1, fan-in, truncated normal) for every conv in ``module``; zero biases.

    The official head and BiFPN use it; PyTorch's default (kaiming-uniform with a=sqrt(5)) starts the
    deep stacks of separable convs with too small activations.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at 2 sigma
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Conv2d(nn.Conv2d):
    """A conv with either TF "SAME" or symmetric padding.

    SAME padding only differs from symmetric padding when the stride is > 1 (or the kernel even); only then is
    it computed per call, so stride-1 convs stay plain (and export as plain convs).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        padding: str = "same",
    ) -> None:
        dynamic = padding == "same" and (stride > 1 or kernel_size % 2 == 0)
        static_pad = 0 if dynamic else kernel_size // 2
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=static_pad, groups=groups, bias=bias
        )
        self.dynamic_same = dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # training on the CPU: depthwise gradients through oneDNN's fast kernels where its own choice is slow, and
        # SAME padding without a padded copy (a bias: BN fused into the conv for inference, which keeps the plain conv)
        depthwise = self.groups == self.in_channels == self.out_channels and self.dilation == (1, 1)
        fast_depthwise = depthwise and self.bias is None
        if self.dynamic_same:
            kh, kw = self.kernel_size
            sh, sw = self.stride
            top, bottom = same_padding(x.shape[-2], kh, sh)
            left, right = same_padding(x.shape[-1], kw, sw)
            if fast_depthwise:
                y = same_padded_depthwise_conv2d(x, self.weight, self.stride, (left, right, top, bottom))
                if y is not None:
                    return y
            x = F.pad(x, (left, right, top, bottom))
        if fast_depthwise:
            y = depthwise_conv2d(x, self.weight, self.stride, self.padding)
            if y is not None:
                return y
        return super().forward(x)


class MaxPoolDown(nn.Module):
    """3x3 stride-2 max-pool that halves a feature map (output ceil(size / 2)) with SAME or symmetric padding."""

    def __init__(self, padding: str = "same", kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.padding = padding
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride)
            left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            return F.max_pool2d(x, self.kernel_size, self.stride)
        return F.max_pool2d(x, self.kernel_size, self.stride, padding=self.kernel_size // 2)


class ConvBN(nn.Module):
    """conv -> BN -> optional activation. ``bias`` is only ever wanted for TF's redundant bias before BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = None,
        padding: str = "same",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, groups, bias=bias, padding=padding)
        self.bn = batch_norm(out_channels)
        self.act = activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConv2d(nn.Module):
    """Depthwise kxk (no bias) followed by pointwise 1x1: the conv of every BiFPN node and head layer."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True, padding: str = "same"
    ) -> None:
        super().__init__()
        self.depthwise = Conv2d(in_channels, in_channels, kernel_size, groups=in_channels, bias=False, padding=padding)
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=bias, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p`` while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
