"""Class and box prediction nets (paper, section 4.1): conv weights shared across levels, a separate BN per level
(official code: tf2/efficientdet_keras.py, ClassNet / BoxNet).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers.blocks import SeparableConv2d, activation, batch_norm, variance_scaling_
from .config import CLASS_PRIOR_PROB


class PredictionNet(nn.Module):
    """``repeats`` x (separable conv -> per-level BN -> act), then a separable conv to ``num_outputs`` channels.

    Output channel layout is anchor-major: ``anchor * outputs_per_anchor + k``.
    """

    def __init__(
        self,
        channels: int,
        num_outputs: int,
        repeats: int,
        num_levels: int,
        act: str,
        padding: str = "same",
        redundant_bias: bool = True,
        prior_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [SeparableConv2d(channels, channels, 3, bias=redundant_bias, padding=padding) for _ in range(repeats)]
        )
        self.norms = nn.ModuleList(
            [nn.ModuleList([batch_norm(channels) for _ in range(num_levels)]) for _ in range(repeats)]
        )
        self.act = activation(act)
        self.predict = SeparableConv2d(channels, num_outputs, 3, bias=True, padding=padding)
        self.reset_parameters(prior_bias)

    def reset_parameters(self, prior_bias: float) -> None:
        """Variance-scaling (fan-in, truncated normal) for conv kernels as in the official head; bias prior."""
        variance_scaling_(self)
        nn.init.constant_(self.predict.pointwise.bias, prior_bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for conv, norms in zip(self.convs, self.norms):
                x = self.act(norms[level](conv(x)))
            outputs.append(self.predict(x))
        return outputs


def class_prior_bias(prior: float = CLASS_PRIOR_PROB) -> float:
    """-log((1 - p) / p): starts every anchor at probability ``p`` so focal loss is stable early on."""
    return -math.log((1.0 - prior) / prior)
