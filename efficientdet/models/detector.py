"""EfficientDet = EfficientNet backbone + feature network + shared class/box nets.

A plain ``nn.Module``: float images ``[B, 3, H, W]`` in, per-level raw outputs out. Pre-processing, anchors,
decoding and NMS live outside so the network stays exportable and the user can swap either end.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.blocks import SeparableConv2d, variance_scaling_
from ..layers.checkpoint import BackboneFpnCheckpointing
from .bifpn import FeatureNetwork
from .config import ModelConfig
from .efficientnet import EfficientNet
from .head import PredictionNet, class_prior_bias


class EfficientDet(BackboneFpnCheckpointing, nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.class_names: list[str] | None = None  # set by checkpoints that carry them
        # the dataset's id of each class (COCO JSON category ids; 1..90 for effdet's COCO weights), where known
        self.category_ids: list[int] | None = None
        self.backbone = EfficientNet(
            config.backbone, num_classes=None, padding=config.padding, drop_path_rate=config.drop_path_rate
        )
        self.fpn = FeatureNetwork(
            self.backbone.feature_channels,
            config.fpn_channels,
            config.fpn_repeats,
            min_level=config.min_level,
            max_level=config.max_level,
            fpn_type=config.fpn_type,
            fusion=config.fusion,
            act=config.activation,
            padding=config.padding,
            redundant_bias=config.redundant_bias,
        )
        head_args = dict(
            channels=config.fpn_channels,
            repeats=config.head_repeats,
            num_levels=config.num_levels,
            act=config.activation,
            padding=config.padding,
            redundant_bias=config.redundant_bias,
        )
        self.class_net = PredictionNet(
            num_outputs=config.num_anchors * config.num_classes, prior_bias=class_prior_bias(), **head_args
        )
        self.box_net = PredictionNet(num_outputs=config.num_anchors * 4, **head_args)
        variance_scaling_(self.fpn)  # the backbone and the heads initialise themselves

    def reset_head(self, num_classes: int) -> None:
        """Predict ``num_classes`` classes: a fresh last conv of the class net (variance-scaling weights, the
        focal-loss prior bias), everything else kept; class names and ids are forgotten.

        The start of fine-tuning on another label set when none of the old classes carries over (to keep the rows
        of shared classes, :mod:`efficientdet.finetune` maps them instead).
        """
        old = self.class_net.predict
        fresh = SeparableConv2d(
            self.config.fpn_channels, self.config.num_anchors * num_classes, 3, bias=True, padding=self.config.padding
        )
        variance_scaling_(fresh)
        nn.init.constant_(fresh.pointwise.bias, class_prior_bias())
        self.class_net.predict = fresh.to(old.pointwise.weight.device)
        self.config = self.config.replace(num_classes=num_classes)
        self.class_names, self.category_ids = None, None

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(class_outputs, box_outputs)``: lists over levels P3..P7 (P8), NCHW.

        Class channels: ``anchor * num_classes + class`` (logits). Box channels: ``anchor * 4 + (ty, tx, th, tw)``.
        """
        features = self.fpn(self.backbone(images))
        return self.class_net(features), self.box_net(features)
