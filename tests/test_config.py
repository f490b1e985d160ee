import pytest

import efficientdet
from efficientdet.models.config import EFFDET_ASPECT_RATIOS, OFFICIAL_ASPECT_RATIOS, ModelConfig, get_config

EXPECTED_NAMES = (
    [f"efficientdet-d{i}" for i in range(8)]
    + ["efficientdet-d7x"]
    + [f"efficientdet-lite{i}" for i in ("0", "1", "2", "3", "3x", "4")]
)


def test_registry_lists_all_fifteen_variants():
    assert efficientdet.list_models() == EXPECTED_NAMES


@pytest.mark.parametrize(
    "name,size,channels,repeats,head,fusion,anchor_scale,max_level",
    [
        ("efficientdet-d0", 512, 64, 3, 3, "fast", 4.0, 7),
        ("efficientdet-d3", 896, 160, 6, 4, "fast", 4.0, 7),
        ("efficientdet-d6", 1280, 384, 8, 5, "sum", 4.0, 7),
        ("efficientdet-d7", 1536, 384, 8, 5, "sum", 5.0, 7),
        ("efficientdet-d7x", 1536, 384, 8, 5, "sum", 4.0, 8),
        ("efficientdet-lite0", 320, 64, 3, 3, "sum", 3.0, 7),
        ("efficientdet-lite3x", 640, 200, 6, 4, "sum", 3.0, 7),
        ("efficientdet-lite4", 640, 224, 7, 4, "sum", 4.0, 7),
    ],
)
def test_variant_rows_follow_the_spec(name, size, channels, repeats, head, fusion, anchor_scale, max_level):
    cfg = get_config(name)
    assert (cfg.image_size, cfg.fpn_channels, cfg.fpn_repeats, cfg.head_repeats) == (size, channels, repeats, head)
    assert (cfg.fusion, cfg.anchor_scale, cfg.max_level) == (fusion, anchor_scale, max_level)
    assert cfg.num_anchors == 9


def test_lite_uses_relu6_and_its_own_normalisation():
    cfg = get_config("efficientdet-lite2")
    assert cfg.activation == "relu6" and cfg.mean == (127.0,) * 3 and cfg.std == (128.0,) * 3
    assert get_config("efficientdet-d2").activation == "silu"


def test_official_aspect_ratios_are_default_and_effdet_ones_optional():
    assert get_config("efficientdet-d0").aspect_ratios == OFFICIAL_ASPECT_RATIOS
    assert OFFICIAL_ASPECT_RATIOS[1][0] == pytest.approx(2**0.5)
    cfg = get_config("efficientdet-d0", aspect_ratios=EFFDET_ASPECT_RATIOS)
    assert cfg.aspect_ratios[1] == (1.4, 0.7)


def test_bad_names_and_options_fail_clearly():
    with pytest.raises(KeyError, match="efficientdet-d9"):
        get_config("efficientdet-d9")
    with pytest.raises(TypeError, match="no_such_option"):
        get_config("efficientdet-d0", no_such_option=1)
    with pytest.raises(ValueError, match="fusion"):
        get_config("efficientdet-d0", fusion="max")
    with pytest.raises(ValueError, match="fpn_type"):
        get_config("efficientdet-d0", fpn_type="nasfpn")


def test_config_round_trips_through_a_plain_dict():
    cfg = get_config("efficientdet-d1", num_classes=3, fusion="softmax")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
