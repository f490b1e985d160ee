import pytest
import torch

from efficientdet.models.bifpn import FeatureNetwork, FusionNode, NodeSpec, bifpn_graph, fpn_graph, panet_graph
from efficientdet.models.config import FUSION_EPS

# P3-P7: (level, inputs) of nodes 5..12, as in the official code's tf2/fpn_configs.py, bifpn_config.
BIFPN_P3_P7 = [
    (6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
    (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11)),
]  # fmt: skip


def test_bifpn_graph_is_the_official_table():
    g = bifpn_graph(3, 7)
    assert [(n.level, n.inputs) for n in g.nodes] == BIFPN_P3_P7
    assert g.outputs == [8, 9, 10, 11, 12]


def test_bifpn_graph_for_d7x_levels_p3_p8():
    g = bifpn_graph(3, 8)
    assert len(g.nodes) == 10
    assert (g.nodes[0].level, g.nodes[0].inputs) == (7, (4, 5))  # P7td = f(P7, P8)
    assert (g.nodes[-1].level, g.nodes[-1].inputs) == (8, (5, 14))  # P8out = f(P8, P7out = node 14)
    assert (g.nodes[-2].level, g.nodes[-2].inputs) == (7, (4, 6, 13))  # P7out = f(P7, P7td, P6out)
    assert g.outputs == [10, 11, 12, 13, 14, 15]


def test_fpn_and_panet_graphs():
    fpn = fpn_graph(3, 7)
    assert [(n.level, n.inputs) for n in fpn.nodes] == BIFPN_P3_P7[:4]
    assert fpn.outputs == [8, 7, 6, 5, 4]  # P7 passes through untouched
    pan = panet_graph(3, 7)
    assert [(n.level, n.inputs) for n in pan.nodes][4:] == [(4, (7, 8)), (5, (6, 9)), (6, (5, 10)), (7, (4, 11))]
    assert pan.outputs == [8, 9, 10, 11, 12]


def _node(fusion, n_inputs=3):
    spec = NodeSpec(4, tuple(range(n_inputs)))
    return FusionNode(spec, [4] * n_inputs, [8] * n_inputs, 8, fusion, "silu", "same", True)


def test_fast_normalized_fusion_formula():
    node = _node("fast")
    with torch.no_grad():
        node.edge_weights.copy_(torch.tensor([2.0, -1.0, 1.0]))
    xs = [torch.full((1, 8, 2, 2), v) for v in (1.0, 10.0, 3.0)]
    # relu(w) = (2, 0, 1); sum 3
    expected = (2 * 1.0 + 0 * 10.0 + 1 * 3.0) / (3 + FUSION_EPS)
    assert torch.allclose(node.fuse(xs), torch.full((1, 8, 2, 2), expected))


def test_softmax_and_sum_fusion():
    node = _node("softmax", 2)
    with torch.no_grad():
        node.edge_weights.copy_(torch.tensor([0.0, 1.0]))
    xs = [torch.zeros(1, 8, 2, 2), torch.ones(1, 8, 2, 2)]
    e = torch.exp(torch.tensor(1.0))
    assert torch.allclose(node.fuse(xs), torch.full((1, 8, 2, 2), e / (1 + e)))
    plain = _node("sum", 2)
    assert plain.edge_weights is None
    assert torch.equal(plain.fuse(xs), torch.ones(1, 8, 2, 2))


def test_weights_start_at_one_and_are_learnable():
    node = _node("fast")
    assert torch.equal(node.edge_weights.detach(), torch.ones(3)) and node.edge_weights.requires_grad


@pytest.mark.parametrize("fpn_type", ["bifpn", "fpn", "panet"])
@pytest.mark.parametrize("fusion", ["fast", "softmax", "sum"])
def test_every_topology_and_fusion_runs_on_odd_sizes(fpn_type, fusion):
    net = FeatureNetwork([40, 112, 320], 32, 2, fpn_type=fpn_type, fusion=fusion).eval()
    feats = [torch.randn(1, 40, 13, 10), torch.randn(1, 112, 7, 5), torch.randn(1, 320, 4, 3)]
    out = net(feats)
    assert [tuple(o.shape) for o in out] == [
        (1, 32, 13, 10),
        (1, 32, 7, 5),
        (1, 32, 4, 3),
        (1, 32, 2, 2),
        (1, 32, 1, 1),
    ]


def test_backbone_levels_are_projected_once_per_use_and_only_in_the_first_cell():
    net = FeatureNetwork([40, 112, 320], 64, 3)
    first, second = net.cells[0], net.cells[1]
    projected = {(i, k) for i, node in enumerate(first.nodes) for k in node.proj}
    # P5 (id 2) feeds node 1 (P5td) and node 5 (P5out); P4 (id 1) feeds nodes 2 and 4; P3 (id 0) feeds node 3
    assert projected == {(1, "2"), (5, "2"), (2, "1"), (4, "1"), (3, "0")}
    assert not any(len(node.proj) for node in second.nodes)
    assert set(net.extra_levels) == {"p6", "p7"} and net.extra_levels["p7"].proj is None


def test_p8_level_for_d7x():
    net = FeatureNetwork([40, 112, 320], 16, 1, max_level=8).eval()
    out = net([torch.randn(1, 40, 32, 32), torch.randn(1, 112, 16, 16), torch.randn(1, 320, 8, 8)])
    assert [o.shape[-1] for o in out] == [32, 16, 8, 4, 2, 1]
