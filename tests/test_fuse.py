"""Inference rewrites (efficientdet.models.fuse): same outputs up to float rounding, BNs and SAME pads gone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import efficientdet
from efficientdet.inference import Detector
from efficientdet.layers.blocks import MaxPoolDown
from efficientdet.models.efficientnet import EfficientNet
from efficientdet.models.fuse import (
    FoldedCopy,
    FoldedPredictionNet,
    SamePadDepthwiseConv2d,
    SamePadMaxPool,
    count_batchnorms,
    fold_batchnorm,
    fold_same_padding,
    optimize_for_inference,
)


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, different per head level, so that folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        cls, box = model(x)
    return list(cls) + list(box)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max((p - q).abs().max().item() for p, q in zip(a, b))


@pytest.fixture(scope="module", params=["efficientdet-d0", "efficientdet-lite0"])
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorms(efficientdet.create_model(request.param))


def test_fold_batchnorm_keeps_outputs_and_removes_every_bn(model: nn.Module) -> None:
    x = torch.randn(1, 3, 128, 128)
    ref = outputs(model, x)
    folded = fold_batchnorm(model)
    assert count_batchnorms(model) > 0 and count_batchnorms(folded) == 0
    assert isinstance(folded.class_net, FoldedPredictionNet) and isinstance(folded.box_net, FoldedPredictionNet)
    assert max_diff(ref, outputs(folded, x)) <= 1e-4
    assert max_diff(ref, outputs(model, x)) == 0  # the original is untouched (a copy was folded)


def test_head_folding_uses_each_levels_own_bn(model: nn.Module) -> None:
    """The heads share conv weights across levels but not BNs: each level needs its own folded pointwise conv."""
    folded = fold_batchnorm(model)
    head = folded.class_net
    levels = model.config.num_levels
    assert len(head.pointwise) == model.config.head_repeats and all(len(p) == levels for p in head.pointwise)
    w = [pw.weight for pw in head.pointwise[0]]
    assert not torch.equal(w[0], w[1])  # different BN statistics per level -> different folded weights
    assert torch.equal(head.depthwise[0].weight, model.class_net.convs[0].depthwise.weight)  # still shared


@pytest.mark.parametrize("size", [(128, 128), (97, 211), (66, 130)])
def test_fold_same_padding_is_exact(model: nn.Module, size: tuple[int, int]) -> None:
    """Odd, even and mixed sizes: both SAME cases (p, p) and (p, p + 1) on each axis."""
    x = torch.randn(1, 3, *size)
    rewritten = fold_same_padding(model)
    assert any(isinstance(m, SamePadDepthwiseConv2d) for m in rewritten.modules())
    assert any(isinstance(m, SamePadMaxPool) for m in rewritten.modules())
    assert not any(isinstance(m, MaxPoolDown) for m in rewritten.modules())
    assert max_diff(outputs(model, x), outputs(rewritten, x)) <= 1e-6


def test_folding_order_does_not_matter(model: nn.Module) -> None:
    """BN folding rescales weights; the grown SAME kernels derived from them must follow."""
    x = torch.randn(1, 3, 97, 128)
    ref = outputs(model, x)
    assert max_diff(ref, outputs(fold_batchnorm(fold_same_padding(model)), x)) <= 1e-4


def test_channels_last_gives_equal_contiguous_outputs(model: nn.Module) -> None:
    x = torch.randn(1, 3, 128, 96)
    ref = outputs(model, x)
    fast = optimize_for_inference(model)
    assert fast.backbone.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    out = outputs(fast, x)
    assert max_diff(ref, out) <= 1e-4
    assert all(t.is_contiguous() for t in out)  # plain NCHW for post-processing and users


def test_symmetric_padding_flavour_without_conv_biases() -> None:
    """PyTorch-flavoured models: no bias before BN (folding adds one), symmetric padding (nothing to rewrite)."""
    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet-d0", padding="symmetric", redundant_bias=False)
    model = randomise_batchnorms(model)
    x = torch.randn(1, 3, 96, 96)
    fast = optimize_for_inference(model)
    assert count_batchnorms(fast) == 0
    assert not any(isinstance(m, (SamePadDepthwiseConv2d, SamePadMaxPool)) for m in fast.modules())
    assert max_diff(outputs(model, x), outputs(fast, x)) <= 1e-4


def test_detector_optimize_gives_the_same_detections() -> None:
    torch.manual_seed(0)
    model = randomise_batchnorms(efficientdet.create_model("efficientdet-lite0", num_classes=3))
    image = (torch.rand(100, 140, 3) * 255).byte().numpy()
    ref = Detector(model, image_size=128, score_threshold=0.0, max_det=20)(image)[0]
    fast = Detector(model, image_size=128, score_threshold=0.0, max_det=20, optimize=True)
    assert count_batchnorms(fast.model) == 0 and count_batchnorms(model) > 0
    out = fast(image)[0]
    assert torch.equal(out["labels"], ref["labels"])
    assert torch.allclose(out["scores"], ref["scores"], atol=1e-5)
    # folded BN rounds differently in float32: box codes differ by ~1e-6 and exp() of a random model's codes
    # scales that up to ~1e-3 px on AVX2 kernels; a hundredth of a pixel is far below anything that matters
    assert torch.allclose(out["boxes"], ref["boxes"], atol=1e-2)


def test_folded_copy_runs_a_frozen_backbone_and_steps_aside_while_it_trains():
    net = randomise_batchnorms(EfficientNet("efficientnet-lite0")).to(memory_format=torch.channels_last)
    net.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    plain = net(x)
    net.folded_copy = FoldedCopy()
    folded = net(x)  # under grad mode, as in a training step
    assert net.folded_copy.copy is not None and count_batchnorms(net.folded_copy.copy) == 0
    assert not any(f.requires_grad for f in folded)  # no graph through the copy (its folded biases are frozen too)
    for a, b in zip(plain, folded):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    # new weights (load_state_dict writes in place): a new copy, not stale outputs
    state = {k: v * 1.5 if k.endswith("running_var") else v for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    expected = EfficientNet("efficientnet-lite0").to(memory_format=torch.channels_last).eval()
    expected.load_state_dict(state)
    for a, b in zip(expected(x), net(x)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    copy_now = net.folded_copy.copy
    net(x)
    assert net.folded_copy.copy is copy_now  # unchanged weights: the same copy
    # a trainable conv, or training mode: the backbone itself runs
    net.blocks[6][0].project.conv.weight.requires_grad_(True)
    assert all(f.requires_grad for f in net(x)[-1:])
    net.requires_grad_(False)
    net.train()  # batch statistics: nothing to fold
    twin = copy.deepcopy(net)
    assert twin.folded_copy is None  # deep copies (an EMA, the folded copy itself) run their own weights
    torch.manual_seed(0)
    ours = net(x)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(ours, twin(x)))
