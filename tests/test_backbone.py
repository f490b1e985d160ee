import pytest
import torch

import efficientdet.models.efficientnet as efficientnet_module
from efficientdet.layers.blocks import Conv2d, DropPath, MaxPoolDown, same_padding, spatial_mean
from efficientdet.models.config import BACKBONES
from efficientdet.models.efficientnet import EfficientNet, MBConv, round_channels, stage_specs


def test_b0_stage_table():
    stages = stage_specs(BACKBONES["efficientnet-b0"])
    assert [len(s) for s in stages] == [1, 2, 2, 3, 3, 4, 1]
    assert [s[-1].out_channels for s in stages] == [16, 24, 40, 80, 112, 192, 320]
    assert stages[0][0].in_channels == 32 and all(b.se for s in stages for b in s)


def test_compound_scaling_of_b7_and_lite4():
    b7 = stage_specs(BACKBONES["efficientnet-b7"])
    assert [len(s) for s in b7] == [4, 7, 7, 10, 10, 13, 4]  # ceil(repeats * 3.1)
    assert b7[0][0].in_channels == 64 and [s[-1].out_channels for s in b7] == [32, 48, 80, 160, 224, 384, 640]
    lite4 = stage_specs(BACKBONES["efficientnet-lite4"])
    assert len(lite4[0]) == 1 and len(lite4[-1]) == 1  # Lite keeps the first and last stage depth
    assert [len(s) for s in lite4[1:-1]] == [4, 4, 6, 6, 8]
    assert lite4[0][0].in_channels == 32  # fixed stem
    assert not any(b.se for s in lite4 for b in s)


def test_round_channels_keeps_within_ten_percent():
    assert round_channels(32, 1.1) == 32
    assert round_channels(16, 1.1) == 16
    assert round_channels(40, 1.4) == 56
    assert round_channels(1280, 1.8) == 2304


@pytest.mark.parametrize("name,channels", [("efficientnet-b0", [40, 112, 320]), ("efficientnet-lite2", [48, 120, 352])])
def test_features_at_strides_8_16_32(name, channels):
    net = EfficientNet(name).eval()
    feats = net(torch.randn(1, 3, 96, 160))
    assert [f.shape[1] for f in feats] == channels == net.feature_channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 20), (6, 10), (3, 5)]


def test_odd_input_sizes_give_ceil_halving():
    feats = EfficientNet("efficientnet-b0").eval()(torch.randn(1, 3, 100, 75))
    assert [tuple(f.shape[-2:]) for f in feats] == [(13, 10), (7, 5), (4, 3)]


def test_activations_and_bn_settings():
    b0 = EfficientNet("efficientnet-b0")
    lite = EfficientNet("efficientnet-lite0")
    assert isinstance(b0.stem.act, torch.nn.SiLU) and isinstance(lite.stem.act, torch.nn.ReLU6)
    bns = [m for m in b0.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    assert all(blk.se is None for stage in lite.blocks for blk in stage)


def test_same_padding_matches_tensorflow_rule():
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(224, 5, 2) == (1, 2)
    assert same_padding(7, 1, 1) == (0, 0)


def test_same_and_symmetric_padding_differ_only_where_they_should():
    x = torch.randn(1, 4, 16, 16)
    same = Conv2d(4, 4, 3, stride=2, padding="same")
    sym = Conv2d(4, 4, 3, stride=2, padding="symmetric")
    sym.load_state_dict(same.state_dict())
    assert same(x).shape == sym(x).shape == (1, 4, 8, 8)
    assert not torch.allclose(same(x), sym(x))
    # stride 1: SAME is symmetric, so the two agree exactly
    s1, y1 = Conv2d(4, 4, 3, padding="same"), Conv2d(4, 4, 3, padding="symmetric")
    y1.load_state_dict(s1.state_dict())
    assert torch.equal(s1(x), y1(x))
    # max-pool SAME pads with -inf: all-negative inputs must not be lifted to 0
    neg = -torch.rand(1, 1, 4, 4) - 1
    assert (MaxPoolDown("same")(neg) < 0).all() and (MaxPoolDown("symmetric")(neg) < 0).all()


def test_stochastic_depth_drops_whole_samples_in_training_only():
    dp = DropPath(0.5).train()
    out = dp(torch.ones(1000, 3, 2, 2))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert torch.equal(dp.eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_drop_path_rate_grows_linearly_with_depth():
    net = EfficientNet("efficientnet-b0", drop_path_rate=0.2)
    rates = [blk.drop_path.p for stage in net.blocks for blk in stage if isinstance(blk, MBConv) and blk.has_skip]
    assert rates == sorted(rates) and 0 < rates[0] < rates[-1] < 0.2


def _plain_mean(x):
    return x.mean((2, 3), keepdim=True)


def test_spatial_mean_gives_the_means_gradient_as_an_expanded_view():
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    other = torch.randn(2, 8, 5, 7)
    grads = []
    for mean in (spatial_mean, _plain_mean):
        leaf = x.clone().requires_grad_()
        (leaf * torch.sigmoid(mean(leaf)) * other).sum().backward()  # x used twice, as in squeeze-excitation
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])
    leaf = x.clone().requires_grad_()
    only = torch.autograd.grad(spatial_mean(leaf).sum(), leaf)[0]
    assert only.stride()[2:] == (0, 0)  # not written out over H and W
    assert torch.equal(spatial_mean(leaf), _plain_mean(x))
    with torch.no_grad():
        assert spatial_mean(leaf).grad_fn is None  # inference and exports see the plain op


def test_a_b0_training_step_gets_the_same_gradients_through_spatial_mean(monkeypatch):
    torch.manual_seed(0)
    net = EfficientNet("efficientnet-b0").to(memory_format=torch.channels_last).train()
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    grads = []
    for mean in (spatial_mean, _plain_mean):
        monkeypatch.setattr(efficientnet_module, "spatial_mean", mean)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # drop-path draws alike
        sum(f.square().mean() for f in net(images)).backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert len(grads[0]) == len(grads[1]) > 100
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[1])  # the same sums, bit for bit
