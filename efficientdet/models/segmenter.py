"""EfficientDet for semantic segmentation (paper, section 5.2): backbone -> BiFPN over P2-P7 -> per-pixel head.

The paper's model is EfficientDet-D4-sized: a B4 backbone, a BiFPN of 128 channels over P2-P7 (P2, stride 4, added
for spatial detail) and a classification head of 256 channels applied at P2, its output upsampled to the input;
BiFPN and head are each repeated 3 times. The other sizes here are scaled from the detection variant of the same
name by the ratios of the paper's D4 model (see ``SEG_FPN_RATIO`` / ``SEG_HEAD_RATIO``).

Like the detector, the network is a plain ``nn.Module``: normalised float images ``[B, 3, H, W]`` in, class logits
``[B, num_classes, H, W]`` out, for any ``H, W``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.blocks import SeparableConv2d, activation, batch_norm, variance_scaling_
from ..layers.checkpoint import BackboneFpnCheckpointing
from .bifpn import FeatureNetwork
from .config import MODEL_TABLE, NetworkConfig
from .efficientnet import SEGMENTATION_FEATURE_STAGES, EfficientNet
from .pretrained import load_pretrained_backbone
from .registry import ModelFamily, register_family
from .weights import CheckpointError, class_names_mismatch, load_weights, read_checkpoint

SEG_PREFIX = "efficientdet-seg-"
OUTPUT_LEVEL = 2  # paper, section 5.2: the head runs at P2 (stride 4)
OUTPUT_STRIDE = 2**OUTPUT_LEVEL
# Paper, section 5.2: the D4 segmentation model has a 128-channel BiFPN and a 256-channel head, where detection D4 has
# 224 channels for both. Every other size keeps these ratios to its detection variant's width (rounded to a
# multiple of 8), e.g. D0 / Lite0: 64 -> BiFPN 40, head 72.
SEG_FPN_RATIO = 128 / 224
SEG_HEAD_RATIO = 256 / 224
# Paper, section 5.2: BiFPN and head are each repeated 3 times (D4). Detection never goes below 3 either, so every
# size uses 3.
SEG_REPEATS = 3
DEFAULT_NUM_CLASSES = 21  # Pascal VOC 2012: 20 classes + background, the paper's benchmark
PAPER_SEG_D4_FLOPS = 17.9e9  # Pascal VOC, 512 px input; published as 18B (paper, Table 3)


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


@dataclass
class SegmentationConfig(NetworkConfig):
    """Everything that determines an EfficientDet segmentation network."""

    KIND: ClassVar[str] = "segmentation model"

    name: str
    backbone: str
    image_size: int  # longer image side at evaluation (and at scale factor 1 in training)
    fpn_channels: int
    fpn_repeats: int
    head_channels: int
    head_repeats: int
    fusion: str = "fast"
    fpn_type: str = "bifpn"
    min_level: int = OUTPUT_LEVEL
    max_level: int = 7
    num_classes: int = DEFAULT_NUM_CLASSES
    activation: str = "silu"
    # TF "SAME" padding, as the ImageNet backbone weights were trained with. There are no published segmentation
    # weights to match, so the convs before a BN carry no (redundant) bias.
    padding: str = "same"
    redundant_bias: bool = False
    drop_path_rate: float | None = None
    mean: tuple[float, float, float] = MODEL_TABLE["efficientdet-d0"].mean
    std: tuple[float, float, float] = MODEL_TABLE["efficientdet-d0"].std
    detection_variant: str = ""  # the detection model this one is scaled from
    paper_flops: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self._check_common()
        if self.min_level != OUTPUT_LEVEL:
            raise ValueError(f"the segmentation network starts at P{OUTPUT_LEVEL}, got min_level={self.min_level}")
        if self.max_level <= 5:
            raise ValueError(f"max_level must be > 5 (the backbone already gives P2-P5), got {self.max_level}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if min(self.fpn_repeats, self.head_repeats) < 1:
            raise ValueError("fpn_repeats and head_repeats must be >= 1")
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]

    @property
    def task(self) -> str:
        return "segmentation"


def _scaled(detection_name: str) -> SegmentationConfig:
    """The segmentation row made from a detection row by the paper's D4 ratios (module docstring)."""
    det = MODEL_TABLE[detection_name]
    paper = PAPER_SEG_D4_FLOPS if detection_name == "efficientdet-d4" else None
    return SegmentationConfig(
        name=detection_name.replace("efficientdet-", SEG_PREFIX), backbone=det.backbone, image_size=det.image_size,
        fpn_channels=_round8(det.fpn_channels * SEG_FPN_RATIO), fpn_repeats=SEG_REPEATS,
        head_channels=_round8(det.fpn_channels * SEG_HEAD_RATIO), head_repeats=SEG_REPEATS, fusion=det.fusion,
        activation=det.activation, mean=det.mean, std=det.std, detection_variant=detection_name, paper_flops=paper,
    )  # fmt: skip


_SCALED_FROM = ("d0", "d1", "d2", "d3", "d4", "lite0", "lite1", "lite2")  # the sizes; D5+ would need 1280 px
SEGMENTATION_TABLE: dict[str, SegmentationConfig] = {
    c.name: c for c in (_scaled(f"efficientdet-{n}") for n in _SCALED_FROM)
}


def list_segmentation_models() -> list[str]:
    """Names accepted by :func:`create_segmentation_model` (and by ``efficientdet.create_model``)."""
    return list(SEGMENTATION_TABLE)


def is_segmentation_model(name: str) -> bool:
    return name.lower().startswith(SEG_PREFIX)


def get_segmentation_config(name: str, **overrides: Any) -> SegmentationConfig:
    """The config of a named segmentation variant with keyword overrides (``num_classes=12`` ...)."""
    key = name.lower()
    if key not in SEGMENTATION_TABLE:
        raise KeyError(f"unknown segmentation model {name!r}; available: {', '.join(SEGMENTATION_TABLE)}")
    return SEGMENTATION_TABLE[key].replace(**overrides)


class SegmentationHead(nn.Module):
    """``repeats`` x (separable 3x3 conv -> BN -> act) at the head width, then a separable conv to class logits.

    The detector's class net with one level and one "anchor": the first conv widens the BiFPN output to the head
    width (paper, section 5.2: 128 -> 256 for D4).
    """

    def __init__(
        self, in_channels: int, channels: int, repeats: int, num_classes: int, act: str, padding: str = "same"
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [SeparableConv2d(in_channels if i == 0 else channels, channels, 3, bias=False, padding=padding)
             for i in range(repeats)]
        )  # fmt: skip
        self.norms = nn.ModuleList([batch_norm(channels) for _ in range(repeats)])
        self.act = activation(act)
        self.predict = SeparableConv2d(channels, num_classes, 3, bias=True, padding=padding)
        variance_scaling_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = self.act(norm(conv(x)))
        return self.predict(x)


class EfficientDetSegmentation(BackboneFpnCheckpointing, nn.Module):
    """Backbone (P2-P5) -> extra levels P6, P7 -> BiFPN cells -> head at P2 -> upsampled logits."""

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__()
        self.config = config
        self.class_names: list[str] | None = None
        self.backbone = EfficientNet(
            config.backbone, num_classes=None, padding=config.padding, drop_path_rate=config.drop_path_rate,
            feature_stages=SEGMENTATION_FEATURE_STAGES,
        )  # fmt: skip
        self.fpn = FeatureNetwork(
            self.backbone.feature_channels, config.fpn_channels, config.fpn_repeats, min_level=config.min_level,
            max_level=config.max_level, fpn_type=config.fpn_type, fusion=config.fusion, act=config.activation,
            padding=config.padding, redundant_bias=config.redundant_bias, output_levels=(OUTPUT_LEVEL,),
        )  # fmt: skip
        self.head = SegmentationHead(
            config.fpn_channels, config.head_channels, config.head_repeats, config.num_classes, config.activation,
            config.padding,
        )  # fmt: skip
        variance_scaling_(self.fpn)

    def reset_head(self, num_classes: int) -> None:
        """Predict ``num_classes`` classes: a freshly initialised last conv of the head, everything else kept.

        The start of fine-tuning on another label set; the head's conv tower is class-agnostic and stays.
        """
        old = self.head.predict
        fresh = SeparableConv2d(self.config.head_channels, num_classes, 3, bias=True, padding=self.config.padding)
        variance_scaling_(fresh)
        self.head.predict = fresh.to(old.pointwise.weight.device)
        self.config = self.config.replace(num_classes=num_classes)
        self.class_names = None

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits at stride 4: ``[B, K, ceil(H / 4), ceil(W / 4)]`` (what a loss at low resolution wants)."""
        (p2,) = self.fpn(self.backbone(images))
        return self.head(p2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes, H, W]`` for normalised images ``[B, 3, H, W]`` of any size."""
        return upsample_logits(self.forward_features(images), images.shape[-2:])


def upsample_logits(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Stride-4 logits to the input size: bilinear x4, then crop the ceil() overhang.

    Scaling by exactly 4 keeps every P2 cell over the 4x4 input pixels it came from; resizing straight to an
    input size that is not a multiple of 4 would stretch the map by up to 3 pixels.
    """
    h, w = int(size[0]), int(size[1])
    up = F.interpolate(logits, scale_factor=OUTPUT_STRIDE, mode="bilinear", align_corners=False)
    return up[..., :h, :w]


def create_segmentation_model(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained_backbone: bool | str = False,
    **overrides: Any,
) -> EfficientDetSegmentation:
    """Build a segmentation model by name (see :func:`list_segmentation_models`); ``efficientdet.create_model``
    forwards ``efficientdet-seg-*`` names here.

    Args:
        name: e.g. ``"efficientdet-seg-lite0"`` or ``"efficientdet-seg-d4"``.
        num_classes: classes predicted per pixel (default 21, Pascal VOC; taken from the checkpoint when not given).
        checkpoint: a file written by ``efficientdet train --task segmentation`` (or :func:`save_model`).
        pretrained_backbone: ``True`` loads the packaged ImageNet weights (Lite0/1/2); a path loads an
            EfficientNet file in timm's or EfficientNet-PyTorch's layout.
        **overrides: any :class:`SegmentationConfig` field (``fusion``, ``fpn_type``, ``image_size`` ...).
    """
    if checkpoint is not None and pretrained_backbone:
        raise ValueError("give either checkpoint= or pretrained_backbone=, not both")
    base = get_segmentation_config(name)
    settings: dict[str, Any] = {}
    ckpt = None
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        if ckpt.config is None:
            raise CheckpointError(f"{checkpoint}: not an efficientdet segmentation checkpoint (no stored config)")
        stored = SegmentationConfig.from_dict(ckpt.config)
        if stored.name != base.name:
            raise CheckpointError(f"{checkpoint}: holds an {stored.name} model, not {base.name}")
        settings = stored.to_dict()
        settings.pop("paper_flops", None)
        if num_classes is not None and stored.num_classes != num_classes:
            raise CheckpointError(
                f"{checkpoint}: has {stored.num_classes} classes but num_classes={num_classes} was asked for "
                f"(to fine-tune on other classes use `efficientdet train --task segmentation --checkpoint`)"
            )
    if num_classes is not None:
        settings["num_classes"] = num_classes
    settings.update(overrides)
    model = EfficientDetSegmentation(base.replace(**settings))
    if ckpt is not None:
        load_weights(model, ckpt.state_dict, source=str(checkpoint))
        problem = class_names_mismatch(ckpt.class_names, model.config.num_classes)
        if problem:
            raise CheckpointError(f"{checkpoint}: {problem}")
        model.class_names = ckpt.class_names
    elif pretrained_backbone:
        load_pretrained_backbone(model, None if pretrained_backbone is True else str(pretrained_backbone))
    return model


def segmentation_stats(config: SegmentationConfig | str, image_size: int | tuple[int, int] | None = None) -> dict:
    """Parameters and multiply-adds (the paper's FLOPs) of a variant, counted on the meta device."""
    from .flops import count_on_meta

    cfg = get_segmentation_config(config) if isinstance(config, str) else config
    counts = count_on_meta(
        lambda: EfficientDetSegmentation(cfg), image_size if image_size is not None else cfg.image_size
    )
    return {
        "name": cfg.name,
        **counts,
        "backbone": cfg.backbone,
        "fpn_channels": cfg.fpn_channels,
        "head_channels": cfg.head_channels,
        "paper_flops": cfg.paper_flops,
    }


def task_mismatch(model: nn.Module, task: str, detection_hint: str = "add --task segmentation") -> str | None:
    """What a model of the other task than ``task`` ("detection" or "segmentation") is told, or None: a
    segmentation model where detections are wanted (``detection_hint`` says what to do), or the reverse. Said at
    once, since either would otherwise fail deep inside the command that got it."""
    segmentation = isinstance(model, EfficientDetSegmentation)
    if task == "detection" and segmentation:
        return f"holds a segmentation model; {detection_hint}"
    if task == "segmentation" and not segmentation:
        return "holds a detection model; drop --task segmentation"
    return None


# the segmentation family: the rows of SEGMENTATION_TABLE, scaled from the detection variants

register_family(
    ModelFamily("efficientdet-seg", "segmentation", list_segmentation_models, create_segmentation_model,
                SegmentationConfig)
)  # fmt: skip
