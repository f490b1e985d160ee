import math

import pytest
import torch

import efficientdet
from efficientdet.models.config import EFFDET_ASPECT_RATIOS
from efficientdet.models.head import class_prior_bias
from efficientdet.ops.anchors import anchors_for_config, decode_boxes, encode_boxes, feature_sizes, generate_anchors


@pytest.fixture(scope="module")
def d0():
    return efficientdet.create_model("efficientdet-d0", num_classes=5).eval()


def test_outputs_are_per_level_nchw_with_anchor_major_channels(d0):
    with torch.no_grad():
        cls, box = d0(torch.randn(2, 3, 128, 128))
    assert [tuple(c.shape) for c in cls] == [(2, 45, s, s) for s in (16, 8, 4, 2, 1)]
    assert [tuple(b.shape) for b in box] == [(2, 36, s, s) for s in (16, 8, 4, 2, 1)]


@pytest.mark.parametrize("size", [(300, 500), (128, 128), (97, 211)])
def test_any_input_size_with_one_model_and_matching_anchors(d0, size):
    with torch.no_grad():
        cls, box = d0(torch.randn(1, 3, *size))
    sizes = [tuple(c.shape[-2:]) for c in cls]
    assert sizes == feature_sizes(size, 3, 7)
    assert sizes[0] == (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    anchors = anchors_for_config(d0.config, size)
    assert anchors.shape[0] == sum(h * w for h, w in sizes) * 9


def test_lite_and_d7x_forward_small_inputs():
    lite = efficientdet.create_model("efficientdet-lite0", num_classes=3).eval()
    with torch.no_grad():
        cls, _ = lite(torch.randn(1, 3, 96, 64))
    assert len(cls) == 5 and cls[0].shape == (1, 27, 12, 8)
    cfg = efficientdet.get_config("efficientdet-d7x", fpn_channels=16, fpn_repeats=1, head_repeats=1)
    tiny_d7x_levels = efficientdet.EfficientDet(cfg.replace(backbone="efficientnet-b0")).eval()
    with torch.no_grad():
        cls, box = tiny_d7x_levels(torch.randn(1, 3, 256, 256))
    assert [c.shape[-1] for c in cls] == [32, 16, 8, 4, 2, 1]  # P3..P8


def test_class_bias_prior_and_box_bias_zero(d0):
    fresh = efficientdet.create_model("efficientdet-d0", num_classes=5)
    assert torch.allclose(fresh.class_net.predict.pointwise.bias, torch.full((45,), class_prior_bias()))
    assert class_prior_bias() == pytest.approx(-math.log(99))
    assert torch.equal(fresh.box_net.predict.pointwise.bias, torch.zeros(36))
    with torch.no_grad():
        cls, _ = fresh.eval()(torch.randn(1, 3, 64, 64))
    assert torch.sigmoid(cls[0]).mean().item() == pytest.approx(0.01, abs=0.01)


def test_head_shares_convs_across_levels_but_not_bn(d0):
    net = d0.class_net
    assert len(net.convs) == 3 and all(len(n) == 5 for n in net.norms)
    assert net.norms[0][0] is not net.norms[0][1]


def test_anchor_layout_follows_spec():
    anchors = generate_anchors((64, 64), 3, 3, anchor_scale=4.0, aspect_ratios=EFFDET_ASPECT_RATIOS)
    assert anchors.shape == (8 * 8 * 9, 4)
    first = anchors[:9]
    centre = (first[:, :2] + first[:, 2:]) / 2
    assert torch.allclose(centre, torch.full((9, 2), 4.0))  # stride/2
    size = first[:, 2:] - first[:, :2]  # (h, w)
    assert torch.allclose(size[0], torch.tensor([32.0, 32.0]))  # 4 * 8, square
    assert torch.allclose(size[1], torch.tensor([32 * 0.7, 32 * 1.4]))  # aspect (w, h) = (1.4, 0.7)
    assert torch.allclose(size[3], torch.tensor([32.0, 32.0]) * 2 ** (1 / 3))  # next octave
    # second location is one stride to the right (x), same row
    assert torch.allclose((anchors[9, 1] + anchors[9, 3]) / 2, torch.tensor(12.0))


def test_box_coder_round_trip():
    anchors = generate_anchors((128, 96), 3, 5)
    boxes = torch.stack([anchors[:, 0] + 3, anchors[:, 1] - 2, anchors[:, 2] + 7, anchors[:, 3] + 1], -1)
    codes = encode_boxes(boxes, anchors)
    xyxy = decode_boxes(codes, anchors)
    assert torch.allclose(xyxy[:, [1, 0, 3, 2]], boxes, atol=1e-3)


@pytest.mark.parametrize("size", [0, -3])
def test_a_model_without_an_input_size_is_refused(size):
    """create_model(..., image_size=0) built a model whose anchors and Detector then used a 0-pixel input."""
    with pytest.raises(ValueError, match=f"image_size must be >= 1, got {size}"):
        efficientdet.create_model("efficientdet-lite0", image_size=size)
