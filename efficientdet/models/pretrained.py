"""ImageNet weights for the EfficientNet backbone of any model family (detection and segmentation alike).

It sits below both families (:mod:`efficientdet.factory`, :mod:`efficientdet.segmentation.model`), so neither
has to import the other to start from a pretrained backbone.
"""

from __future__ import annotations

import logging

from torch import nn

from .hub import backbone_weights_file, resolve_weights
from .weights import load_weights, read_backbone_weights

LOG = logging.getLogger(__name__)


def load_pretrained_backbone(model: nn.Module, path: str | None = None) -> None:
    """Load ImageNet weights into ``model.backbone`` (the classifier head of the file is dropped).

    ``path``: a file or URL; by default the published weights of the backbone (:func:`hub.backbone_weights_file`).
    """
    backbone = model.backbone
    path = resolve_weights(path) if path else backbone_weights_file(backbone.name)
    sd = read_backbone_weights(path, [len(stage) for stage in backbone.blocks])
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "classifier."))}
    load_weights(backbone, sd, source=path)
    LOG.info("loaded ImageNet backbone weights from %s", path)


__all__ = ["load_pretrained_backbone"]
