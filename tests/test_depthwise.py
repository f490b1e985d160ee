"""Depthwise convs' gradients through oneDNN's fast kernels: the same gradients as the conv's own backward."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import efficientdet
from efficientdet.layers import blocks
from efficientdet.layers.blocks import Conv2d
from efficientdet.layers.depthwise import (
    DEDICATED_BLOCKS,
    column_blocks,
    depthwise_conv2d,
    same_padded_depthwise_conv2d,
    weight_grad_by_blocks,
)
from efficientdet.utils.device import cpu_has_native_bf16

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (torch's CPU builds)")


@contextlib.contextmanager
def _fast_path(fast: bool):
    """With ``fast`` False, every ``Conv2d`` runs the plain conv (after an explicit pad), as before this module."""
    originals = blocks.depthwise_conv2d, blocks.same_padded_depthwise_conv2d
    if not fast:
        blocks.depthwise_conv2d = blocks.same_padded_depthwise_conv2d = lambda *args: None
    try:
        yield
    finally:
        blocks.depthwise_conv2d, blocks.same_padded_depthwise_conv2d = originals


def _grads(conv: Conv2d, x: torch.Tensor, grad_out: torch.Tensor, fast: bool, dtype=None):
    """(output, input gradient, weight gradient) of ``conv`` in channels-last, with or without the fast path."""
    x = x.detach().clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    conv.weight.grad = None
    with _fast_path(fast):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = conv(x)
        y.backward(grad_out.to(y.dtype))
    return y.detach(), x.grad, conv.weight.grad


# the depthwise shapes of EfficientNet-B0 / Lite0 (3x3 and 5x5, stride 1 and 2, SAME padding computed per call for
# stride 2, so even and odd padded sizes), symmetric padding, and wider kernels
CASES = [
    (16, 20, 5, 1, "same"),
    (16, 11, 5, 1, "same"),
    (16, 20, 5, 2, "same"),
    (16, 21, 5, 2, "same"),
    (16, 20, 3, 2, "same"),
    (16, 21, 3, 2, "same"),
    (16, 2, 3, 2, "same"),
    (16, 4, 5, 2, "same"),
    (16, 9, 3, 1, "same"),
    (16, 12, 5, 2, "symmetric"),
    (8, 13, 7, 1, "same"),
    (8, 14, 7, 2, "same"),
    (8, 10, 9, 1, "symmetric"),
]


@pytest.mark.parametrize("channels,size,kernel,stride,padding", CASES)
def test_fast_gradients_equal_the_convs_own(channels, size, kernel, stride, padding):
    torch.manual_seed(0)
    conv = Conv2d(channels, channels, kernel, stride, groups=channels, bias=False, padding=padding)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, channels, size, size + 3)  # non-square: rows and columns differ
    out_shape = conv(x).shape
    grad_out = torch.randn(out_shape).contiguous(memory_format=torch.channels_last)
    y_fast, gx_fast, gw_fast = _grads(conv, x, grad_out, fast=True)
    y_ref, gx_ref, gw_ref = _grads(conv, x, grad_out, fast=False)
    assert torch.equal(y_fast, y_ref)
    torch.testing.assert_close(gx_fast, gx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw_fast, gw_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel,stride", [(5, 1), (5, 2), (3, 2)])
def test_bf16_autocast_gradients_equal_the_convs_own(kernel, stride):
    torch.manual_seed(1)
    conv = Conv2d(32, 32, kernel, stride, groups=32, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 24, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_shape = conv(x).shape
    grad_out = torch.randn(out_shape).contiguous(memory_format=torch.channels_last)
    y_fast, gx_fast, gw_fast = _grads(conv, x, grad_out, fast=True, dtype=torch.bfloat16)
    y_ref, gx_ref, gw_ref = _grads(conv, x, grad_out, fast=False, dtype=torch.bfloat16)
    assert y_fast.dtype == torch.bfloat16 and torch.equal(y_fast, y_ref)
    assert gx_fast.dtype == gx_ref.dtype == torch.float32 and gw_fast.dtype == torch.float32
    # both sum in fp32 and round to bf16 (equal on AVX-512 CPUs); allow one bf16 rounding step (2^-8) elsewhere.
    # Where bf16 is emulated (no AVX512-BF16 / AMX) the conv's own backward rounds its partial sums on the way:
    # measured on an AVX2-only EPYC, 0.0078 apart at magnitude ~1.7 (one bf16 step there) for strided convs.
    scale = 0.001 if cpu_has_native_bf16() else 2**-7
    torch.testing.assert_close(gx_fast, gx_ref, rtol=0.004, atol=scale * gx_ref.abs().max().item())
    torch.testing.assert_close(gw_fast, gw_ref, rtol=0.004, atol=scale * gw_ref.abs().max().item())


def test_fast_path_runs_only_where_the_plain_conv_is_slow():
    weight5 = torch.randn(8, 1, 5, 5, requires_grad=True)
    weight3 = torch.randn(8, 1, 3, 3, requires_grad=True)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert depthwise_conv2d(x, weight5, (1, 1), (2, 2)) is not None  # 5x5 weight gradient
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert depthwise_conv2d(x, weight3, (2, 2), (1, 1)) is not None  # bf16 strided input gradient
    assert depthwise_conv2d(x, weight3, (2, 2), (1, 1)) is None  # fp32 3x3: oneDNN's own kernels are fast
    assert depthwise_conv2d(x, weight3, (1, 1), (1, 1)) is None
    with torch.no_grad():  # inference
        assert depthwise_conv2d(x, weight5, (1, 1), (2, 2)) is None
    assert depthwise_conv2d(x.detach(), weight5.detach(), (1, 1), (2, 2)) is None  # frozen: nothing to compute
    assert depthwise_conv2d(x.contiguous(), weight5, (1, 1), (2, 2)) is None  # NCHW takes other kernels
    with torch.backends.mkldnn.flags(enabled=False):
        assert depthwise_conv2d(x, weight5, (1, 1), (2, 2)) is None
    assert depthwise_conv2d(x.half(), weight5.half(), (1, 1), (2, 2)) is None


def test_a_conv_given_a_bias_after_construction_keeps_it():
    """``models.fuse`` folds BN into a depthwise conv by giving it a bias; the fast path (no bias) must step aside."""
    conv = Conv2d(8, 8, 5, groups=8, bias=False).to(memory_format=torch.channels_last)
    conv.bias = torch.nn.Parameter(torch.randn(8))
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    expected = F.conv2d(x, conv.weight, conv.bias, 1, 2, 1, 8)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [2, 4, 5, 6, 7, 9])
def test_column_blocks_use_dedicated_blocks_and_give_the_exact_gradient(kernel, stride, first):
    for in_w in range(kernel, 14):
        for pad in {0, kernel // 2, kernel - 1}:
            out_w = (in_w + 2 * pad - kernel) // stride + 1
            blocks_ = column_blocks(kernel, pad, stride, in_w, out_w, first)
            if blocks_ is None:  # no cover of dedicated blocks: the plain conv runs
                assert stride > 1 or kernel % 2 == 0 or pad == kernel - 1, (kernel, stride, in_w, pad)
                continue
            assert [b.start for b in blocks_] == [first] + [b.start + b.width for b in blocks_[:-1]]
            assert kernel <= blocks_[-1].start + blocks_[-1].width < kernel + blocks_[-1].width
            assert all((b.width, b.padding) in DEDICATED_BLOCKS for b in blocks_)
            assert stride == 1 or all(b.width > 1 for b in blocks_)  # a strided 1-wide block is oneDNN's generic
            x = torch.randn(1, 4, 5, in_w).contiguous(memory_format=torch.channels_last)
            weight = torch.randn(4, 1, 3, kernel)
            grad_out = torch.randn(1, 4, 5, out_w).contiguous(memory_format=torch.channels_last)
            expected = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, stride], [1, pad], [1, 1], False, [0, 0], 4, [False, True, False]
            )[1]
            expected[..., :first] = 0  # columns known to be zero taps: their gradient is not computed
            got = weight_grad_by_blocks(grad_out, x, weight, (1, stride), (1, pad), blocks_)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [3, 5])
def test_the_grown_kernels_of_same_padding_have_plans_at_every_even_size(kernel):
    """SAME's ``(p, p + 1)`` pads on even sides: the kernel grown by a zero column, padded ``p + 1``."""
    pad = kernel // 2
    for in_w in range(2, 130, 2):
        blocks_ = column_blocks(kernel + 1, pad, 2, in_w, in_w // 2, 1)
        assert blocks_ is not None and len(blocks_) == 2, in_w


def _pads_its_input(y: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``y``'s autograd graph holds an explicit pad applied to the leaf ``x``."""
    seen, stack = set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if type(node).__name__ == "ConstantPadNdBackward0" and getattr(child, "variable", None) is x:
                return True
            stack.append(child)
    return False


@pytest.mark.parametrize("kernel,width", [(3, 15), (5, 14)])
def test_a_strided_same_conv_in_training_does_not_copy_its_input(kernel, width):
    """Even sides pad ``(p, p + 1)``, odd ones ``(p, p)`` (a 5x5 kernel on an odd side keeps the explicit pad: no plan
    of dedicated blocks fits it, and the models' sizes are even there)."""
    conv = Conv2d(8, 8, kernel, 2, groups=8, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 16, width).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert not _pads_its_input(conv(x), x)
    with _fast_path(False):
        assert _pads_its_input(conv(x), x)  # the check sees a pad where there is one
    x_nchw = x.detach().contiguous().requires_grad_()
    assert _pads_its_input(conv(x_nchw), x_nchw)  # NCHW takes other kernels: the explicit pad, as before
    pads = (kernel // 2 - 1, kernel // 2, kernel // 2 - 1, kernel // 2)
    assert same_padded_depthwise_conv2d(x, conv.weight, (2, 2), pads) is not None
    assert same_padded_depthwise_conv2d(x.detach(), conv.weight.detach(), (2, 2), pads) is None  # frozen
    with torch.no_grad():
        assert same_padded_depthwise_conv2d(x, conv.weight, (2, 2), pads) is None  # inference


def test_a_training_step_of_lite0_gets_the_same_gradients():
    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet-lite0", num_classes=3, image_size=128)
    model = model.to(memory_format=torch.channels_last).train()
    images = torch.randn(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    grads = []
    for fast in (True, False):
        with _fast_path(fast):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # drop-path draws alike
            cls_out, box_out = model(images)
            (sum(c.square().mean() for c in cls_out) + sum(b.square().mean() for b in box_out)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    five_wide = [n for n, p in model.named_parameters() if p.dim() == 4 and p.shape[1] == 1 and p.shape[-1] == 5]
    assert five_wide  # the backbone's 5x5 depthwise convs are in the comparison
    for name, expected in grads[1].items():  # equal up to the order of fp32 sums
        scale = expected.abs().max().item()
        torch.testing.assert_close(grads[0][name], expected, rtol=1e-4, atol=1e-5 * scale + 1e-12)
