"""Feature networks: BiFPN and the paper's ablation alternatives, all from one node/graph mechanism.

A topology is data: a list of nodes, each ``(level, input ids)``. Ids 0..L-1 are the cell's input levels
(min_level..max_level), new nodes take the next ids in order (as the official code's tf2/fpn_configs.py,
bifpn_config, numbers them). Every node resamples its inputs to its own level, fuses them (fast-normalized,
softmax or plain sum: paper, section 3.3) and applies act -> separable conv -> BN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.blocks import ConvBN, MaxPoolDown, SeparableConv2d, activation, batch_norm
from ..layers.checkpoint import checkpointed, checkpointing_active
from .config import FUSION_EPS


@dataclass(frozen=True)
class NodeSpec:
    level: int
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """A feature-network cell: its nodes and, per level, the id of the node that is the cell's output."""

    min_level: int
    max_level: int
    nodes: tuple[NodeSpec, ...]

    def level_of(self, node_id: int) -> int:
        num_inputs = self.max_level - self.min_level + 1
        if node_id < num_inputs:
            return self.min_level + node_id
        return self.nodes[node_id - num_inputs].level

    @property
    def outputs(self) -> list[int]:
        """The last node written at each level (the input itself where no node touches a level)."""
        last = {lvl: lvl - self.min_level for lvl in range(self.min_level, self.max_level + 1)}
        first_id = self.max_level - self.min_level + 1
        for i, node in enumerate(self.nodes):
            last[node.level] = first_id + i
        return [last[lvl] for lvl in range(self.min_level, self.max_level + 1)]


class _GraphBuilder:
    """Tracks which ids exist at each level while a topology is being described."""

    def __init__(self, min_level: int, max_level: int) -> None:
        self.min_level, self.max_level = min_level, max_level
        self.ids = {lvl: [lvl - min_level] for lvl in range(min_level, max_level + 1)}
        self.next_id = max_level - min_level + 1
        self.nodes: list[NodeSpec] = []

    def add(self, level: int, inputs: list[int]) -> None:
        self.nodes.append(NodeSpec(level, tuple(inputs)))
        self.ids[level].append(self.next_id)
        self.next_id += 1

    def top_down(self) -> None:
        for lvl in range(self.max_level - 1, self.min_level - 1, -1):
            self.add(lvl, [self.ids[lvl][-1], self.ids[lvl + 1][-1]])

    def graph(self) -> Graph:
        return Graph(self.min_level, self.max_level, tuple(self.nodes))


def bifpn_graph(min_level: int = 3, max_level: int = 7) -> Graph:
    """Top-down, then bottom-up with a skip from the original input at each level (paper, section 3.2).

    The paper's Figure 2(d); node order and ids as in the official code's tf2/fpn_configs.py, bifpn_config.
    """
    b = _GraphBuilder(min_level, max_level)
    b.top_down()
    for lvl in range(min_level + 1, max_level + 1):
        b.add(lvl, list(b.ids[lvl]) + [b.ids[lvl - 1][-1]])
    return b.graph()


def fpn_graph(min_level: int = 3, max_level: int = 7) -> Graph:
    """The classic top-down FPN (Lin et al. 2017); repeating cells gives the paper's "repeated FPN"."""
    b = _GraphBuilder(min_level, max_level)
    b.top_down()
    return b.graph()


def panet_graph(min_level: int = 3, max_level: int = 7) -> Graph:
    """FPN followed by PANet's extra bottom-up path (Liu et al. 2018), two inputs per node."""
    b = _GraphBuilder(min_level, max_level)
    b.top_down()
    for lvl in range(min_level + 1, max_level + 1):
        b.add(lvl, [b.ids[lvl][-1], b.ids[lvl - 1][-1]])
    return b.graph()


GRAPHS = {"bifpn": bifpn_graph, "fpn": fpn_graph, "panet": panet_graph}


def prune_graph(graph: Graph, keep_levels: list[int] | tuple[int, ...]) -> Graph:
    """The sub-graph that computes the outputs at ``keep_levels`` only, with node ids renumbered.

    A model that reads one level of the last cell (segmentation reads P2) would otherwise carry nodes whose
    outputs nothing uses: parameters without gradients (which DDP rejects) and wasted FLOPs. In a BiFPN cell
    the P2 output is made by the top-down path, so the whole bottom-up path of the last cell drops out.
    """
    num_inputs = graph.max_level - graph.min_level + 1
    for lvl in keep_levels:
        if not graph.min_level <= lvl <= graph.max_level:
            raise ValueError(f"level P{lvl} is outside the graph's P{graph.min_level}-P{graph.max_level}")
    needed = {graph.outputs[lvl - graph.min_level] for lvl in keep_levels}
    for i in range(len(graph.nodes) - 1, -1, -1):
        if num_inputs + i in needed:
            needed.update(graph.nodes[i].inputs)
    new_id = {i: i for i in range(num_inputs)}
    nodes: list[NodeSpec] = []
    for i, node in enumerate(graph.nodes):
        if num_inputs + i in needed:
            new_id[num_inputs + i] = num_inputs + len(nodes)
            nodes.append(NodeSpec(node.level, tuple(new_id[j] for j in node.inputs)))
    return Graph(graph.min_level, graph.max_level, tuple(nodes))


class FusionNode(nn.Module):
    """One node: project (1x1 conv+BN where channels differ), resample, fuse, act -> sepconv -> BN."""

    def __init__(
        self,
        spec: NodeSpec,
        input_levels: list[int],
        input_channels: list[int],
        channels: int,
        fusion: str,
        act: str,
        padding: str,
        redundant_bias: bool,
    ) -> None:
        super().__init__()
        self.level = spec.level
        self.inputs = list(spec.inputs)
        # +1: downsample from the level below, -1: upsample from the level above, 0: same level.
        self.directions = [(spec.level > lvl) - (spec.level < lvl) for lvl in input_levels]
        for lvl in input_levels:
            if abs(lvl - spec.level) > 1:
                raise ValueError(f"node at P{spec.level} takes P{lvl}: only adjacent levels can be fused")
        # One projection per input that needs one, keyed by input id: one per use, as effdet's
        # fnode.{i}.combine.resample.{input_offset} (official code: a ResampleFeatureMap per FNode input).
        self.proj = nn.ModuleDict(
            {
                str(i): ConvBN(c, channels, 1, padding=padding, bias=redundant_bias)
                for i, c in zip(self.inputs, input_channels)
                if c != channels
            }
        )
        self.fusion = fusion
        if fusion in ("fast", "softmax"):
            self.edge_weights = nn.Parameter(torch.ones(len(self.inputs)))
        else:
            self.register_parameter("edge_weights", None)
        self.downsample = MaxPoolDown(padding)
        self.act = activation(act)
        self.conv = SeparableConv2d(channels, channels, 3, bias=redundant_bias, padding=padding)
        self.bn = batch_norm(channels)

    def fuse(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.fusion == "fast":
            w = F.relu(self.edge_weights)
            w = w / (w.sum() + FUSION_EPS)
        elif self.fusion == "softmax":
            w = torch.softmax(self.edge_weights, dim=0)
        else:
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            return out
        out = inputs[0] * w[0]
        for i in range(1, len(inputs)):
            out = out + inputs[i] * w[i]
        return out

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        resampled = []
        for node_id, direction in zip(self.inputs, self.directions):
            x = feats[node_id]
            key = str(node_id)
            if key in self.proj:
                x = self.proj[key](x)
            if direction > 0:
                x = self.downsample(x)
            elif direction < 0:
                x = F.interpolate(x, size=size, mode="nearest")
            resampled.append(x)
        return self.bn(self.conv(self.act(self.fuse(resampled))))


class FpnCell(nn.Module):
    """One repetition of the feature network."""

    def __init__(
        self,
        graph: Graph,
        in_channels: list[int],
        channels: int,
        fusion: str,
        act: str,
        padding: str,
        redundant_bias: bool,
    ) -> None:
        super().__init__()
        self.graph = graph
        node_channels = list(in_channels)
        self.nodes = nn.ModuleList()
        for spec in graph.nodes:
            levels = [graph.level_of(i) for i in spec.inputs]
            chans = [node_channels[i] for i in spec.inputs]
            self.nodes.append(FusionNode(spec, levels, chans, channels, fusion, act, padding, redundant_bias))
            node_channels.append(channels)
        self.output_ids = graph.outputs
        self.out_channels = [node_channels[i] for i in self.output_ids]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [(f.shape[-2], f.shape[-1]) for f in feats]
        nodes = list(feats)
        for node in self.nodes:
            nodes.append(node(nodes, sizes[node.level - self.graph.min_level]))
        return [nodes[i] for i in self.output_ids]


class ExtraLevel(nn.Module):
    """A coarser level made from the last one: optional 1x1 conv+BN projection, then 3x3/2 max-pool.

    As the official code's ResampleFeatureMap (tf2/efficientdet_keras.py) makes P6 from P5 and P7 from P6.
    """

    def __init__(self, in_channels: int, channels: int, padding: str, redundant_bias: bool) -> None:
        super().__init__()
        self.proj = (
            ConvBN(in_channels, channels, 1, padding=padding, bias=redundant_bias) if in_channels != channels else None
        )
        self.pool = MaxPoolDown(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x)
        return self.pool(x)


class FeatureNetwork(nn.Module):
    """Extra levels P6.. on top of the backbone's P3-P5, then ``repeats`` cells of the chosen topology.

    The backbone's levels start at ``min_level`` (P3 for detection, P2 for segmentation). With
    ``output_levels`` only those levels are returned, and the last cell keeps only the nodes they need.
    """

    def __init__(
        self,
        in_channels: list[int],
        channels: int,
        repeats: int,
        min_level: int = 3,
        max_level: int = 7,
        fpn_type: str = "bifpn",
        fusion: str = "fast",
        act: str = "silu",
        padding: str = "same",
        redundant_bias: bool = True,
        output_levels: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.grad_checkpoint = False  # recompute each cell's activations in backward (saves memory)
        self.min_level = min_level
        self.output_levels = None if output_levels is None else tuple(output_levels)
        self.extra_levels = nn.ModuleDict()
        channels_per_level = list(in_channels)
        last = in_channels[-1]
        for lvl in range(min_level + len(in_channels), max_level + 1):
            self.extra_levels[f"p{lvl}"] = ExtraLevel(last, channels, padding, redundant_bias)
            last = channels
            channels_per_level.append(channels)
        graph = GRAPHS[fpn_type](min_level, max_level)
        self.cells = nn.ModuleList()
        for r in range(repeats):
            if r == repeats - 1 and self.output_levels is not None:
                graph = prune_graph(graph, self.output_levels)
            cell = FpnCell(graph, channels_per_level, channels, fusion, act, padding, redundant_bias)
            self.cells.append(cell)
            channels_per_level = cell.out_channels
        self.out_channels = channels_per_level
        if self.output_levels is not None:
            self.out_channels = [channels_per_level[lvl - min_level] for lvl in self.output_levels]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(features)
        for extra in self.extra_levels.values():
            feats.append(extra(feats[-1]))
        checkpoint = checkpointing_active(self)
        for cell in self.cells:
            feats = checkpointed(cell, cell, feats) if checkpoint else cell(feats)
        if self.output_levels is not None:
            return [feats[lvl - self.min_level] for lvl in self.output_levels]
        return feats
