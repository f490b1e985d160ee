"""The family is the paper's: parameter counts and FLOPs (multiply-adds) against the published figures and effdet."""

import pytest

from efficientdet.models.config import EFFDET_PARAMS, MODEL_TABLE
from efficientdet.models.flops import model_stats

# The official README (google/automl efficientdet) gives Lite1-Lite4 parameters rounded to 0.1M only; their exact
# reference is effdet's count.
ROUNDED_ONLY = {"efficientdet-lite1", "efficientdet-lite2", "efficientdet-lite3", "efficientdet-lite3x",
                "efficientdet-lite4"}  # fmt: skip


@pytest.fixture(scope="module")
def stats():
    return {name: model_stats(name) for name in MODEL_TABLE}


@pytest.mark.parametrize("name", list(MODEL_TABLE))
def test_parameter_count(stats, name):
    params = stats[name]["params"]
    assert params == EFFDET_PARAMS[name]
    spec = MODEL_TABLE[name].paper_params
    if name in ROUNDED_ONLY:
        assert round(params / 1e5) == round(spec / 1e5)  # same figure at the README's 0.1M precision
    else:
        assert abs(params - spec) / spec <= 0.005


@pytest.mark.parametrize("name", [n for n, c in MODEL_TABLE.items() if c.paper_flops])
def test_flops_within_five_percent_of_the_paper(stats, name):
    flops, paper = stats[name]["flops"], MODEL_TABLE[name].paper_flops
    assert abs(flops - paper) / paper <= 0.05, f"{name}: {flops / 1e9:.2f}B vs paper {paper / 1e9:.2f}B"


def test_flops_scale_with_input_area():
    small, large = model_stats("efficientdet-d0", 256)["flops"], model_stats("efficientdet-d0", 512)["flops"]
    assert 3.8 < large / small < 4.2


def test_feature_network_costs_order_fpn_panet_bifpn_at_equal_repeats():
    """At equal width and repeats, PANet adds a bottom-up path to FPN and BiFPN adds cross edges to PANet."""
    from efficientdet.models.config import get_config

    cost = {
        t: model_stats(get_config("efficientdet-d0", fpn_type=t, fusion="sum"), 256) for t in ("fpn", "panet", "bifpn")
    }
    assert cost["fpn"]["params"] < cost["panet"]["params"] < cost["bifpn"]["params"]
    assert cost["fpn"]["flops"] < cost["panet"]["flops"] < cost["bifpn"]["flops"]
