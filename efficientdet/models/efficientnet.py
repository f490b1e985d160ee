"""EfficientNet B0-B7 (Tan & Le, ICML 2019) and EfficientNet-Lite0-4 in plain torch.

EfficientNet-Lite (ReLU6, no squeeze-excite, fixed stem and head) is described in the README of
tensorflow/tpu models/official/efficientnet/lite/.

One base architecture (the B0 stage table) is scaled by width/depth multipliers. In detection mode the
network returns the features at strides 8, 16 and 32 (ends of stages 2, 4 and 6); with ``num_classes`` it is
the ImageNet classifier, which is how the pretrained weights are checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..layers.blocks import ConvBN, DropPath, activation, spatial_mean
from ..layers.checkpoint import checkpointed, checkpointing_active
from .config import BACKBONES, BackboneConfig

if TYPE_CHECKING:
    from .fuse import FoldedCopy

# (block kind, repeats, kernel, stride, expand ratio, output channels): EfficientNet-B0 (Tan & Le, 2019, table 1).
BASE_STAGES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25  # of the block's input channels
FEATURE_STAGES = (2, 4, 6)  # stage ends at strides 8, 16, 32 -> P3, P4, P5
SEGMENTATION_FEATURE_STAGES = (1, 2, 4, 6)  # plus stride 4 (P2): the segmentation variant's finest level


def round_channels(channels: float, multiplier: float, divisor: int = 8) -> int:
    """Scale a channel count and round to a multiple of 8 without losing more than 10% (official rule)."""
    channels *= multiplier
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return int(rounded)


@dataclass(frozen=True)
class BlockSpec:
    kind: str  # "ds" (depthwise-separable, no expansion) or "ir" (inverted residual / MBConv)
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand: int
    se: bool


def stage_specs(cfg: BackboneConfig) -> list[list[BlockSpec]]:
    """Decode the scaled architecture into one list of block specs per stage."""
    stem = STEM_CHANNELS if cfg.lite else round_channels(STEM_CHANNELS, cfg.width)
    stages: list[list[BlockSpec]] = []
    in_ch = stem
    last = len(BASE_STAGES) - 1
    for idx, (kind, repeats, kernel, stride, expand, out) in enumerate(BASE_STAGES):
        out_ch = round_channels(out, cfg.width)
        fixed = cfg.lite and idx in (0, last)  # Lite keeps the first and last stage depth
        n = repeats if fixed else int(math.ceil(repeats * cfg.depth))
        blocks = []
        for i in range(n):
            blocks.append(BlockSpec(kind, in_ch, out_ch, kernel, stride if i == 0 else 1, expand, not cfg.lite))
            in_ch = out_ch
        stages.append(blocks)
    return stages


class SqueezeExcite(nn.Module):
    """Channel gating: global average -> reduce -> act -> expand -> sigmoid."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = spatial_mean(x)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted residual block; without ``expand`` it is the depthwise-separable block of stage 0."""

    def __init__(self, spec: BlockSpec, act: str, padding: str, drop_path: float) -> None:
        super().__init__()
        mid = spec.in_channels * spec.expand
        self.expand = ConvBN(spec.in_channels, mid, 1, act=act, padding=padding) if spec.kind == "ir" else None
        self.dw = ConvBN(mid, mid, spec.kernel, spec.stride, groups=mid, act=act, padding=padding)
        reduced = max(1, int(spec.in_channels * SE_RATIO))
        self.se = SqueezeExcite(mid, reduced, act) if spec.se else None
        self.project = ConvBN(mid, spec.out_channels, 1, act=None, padding=padding)
        self.has_skip = spec.stride == 1 and spec.in_channels == spec.out_channels
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.dw(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        if self.has_skip:
            out = self.drop_path(out) + x
        return out


class EfficientNet(nn.Module):
    """EfficientNet feature extractor (``num_classes=None``) or classifier."""

    def __init__(
        self,
        name: str = "efficientnet-b0",
        num_classes: int | None = None,
        padding: str = "same",
        drop_path_rate: float | None = None,
        dropout: float = 0.2,
        feature_stages: tuple[int, ...] = FEATURE_STAGES,
    ) -> None:
        super().__init__()
        cfg = BACKBONES[name]
        self.name = name
        act = "relu6" if cfg.lite else "silu"
        rate = cfg.drop_path_rate if drop_path_rate is None else drop_path_rate
        stages = stage_specs(cfg)
        total = sum(len(s) for s in stages)
        self.stem = ConvBN(3, stages[0][0].in_channels, 3, 2, act=act, padding=padding)
        self.blocks = nn.ModuleList()
        index = 0
        for stage in stages:
            blocks = []
            for spec in stage:
                blocks.append(MBConv(spec, act, padding, rate * index / total))
                index += 1
            self.blocks.append(nn.Sequential(*blocks))
        # Which stage ends are returned as features (P3-P5 for detection; segmentation adds P2). The weights do
        # not depend on it, so ImageNet files load the same either way.
        self.feature_stages = tuple(feature_stages)
        self.feature_channels = [stages[i][-1].out_channels for i in self.feature_stages]
        self.num_classes = num_classes
        self.grad_checkpoint = False  # recompute each block's activations in backward (saves memory)
        # set by training while the whole backbone is frozen: run a BN-folded copy (models.fuse.FoldedCopy)
        self.folded_copy: FoldedCopy | None = None
        if num_classes is not None:
            head = HEAD_CHANNELS if cfg.lite else round_channels(HEAD_CHANNELS, cfg.width)
            self.head = ConvBN(stages[-1][-1].out_channels, head, 1, act=act, padding=padding)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(head, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (fan-out) init for convs, uniform for the classifier, as the official code."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at the ends of ``feature_stages`` (strides 8, 16, 32 by default)."""
        if self.folded_copy is not None and not self.training:
            features = self.folded_copy(self, x)
            if features is not None:
                return features  # type: ignore[return-value]
        x = self.stem(x)
        features = []
        checkpoint = checkpointing_active(self)
        for i, stage in enumerate(self.blocks):
            if checkpoint:
                for block in stage:
                    x = checkpointed(block, block, x)
            else:
                x = stage(x)
            if i in self.feature_stages:
                features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.num_classes is None:
            return self.forward_features(x)
        x = self.stem(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.head(x).mean((2, 3))
        return self.classifier(self.dropout(x))
