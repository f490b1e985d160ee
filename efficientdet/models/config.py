"""The variant table: every EfficientDet model is one row of data, not a class.

Numbers come from the paper (Tan, Pang, Le, CVPR 2020: Table 1, sections 3-5.1) and the official TF code
(google/automl efficientdet: hparams_config.py, efficientdet_model_param_dict and efficientdet_lite_param_dict).
A new model size is a new row in ``MODEL_TABLE``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..layers.blocks import (  # noqa: F401  (BN_EPS, BN_MOMENTUM: part of the model settings' public names)
    ACTIVATION_MODULES,
    BN_EPS,
    BN_MOMENTUM,
)

# Fast-normalized fusion epsilon (paper, section 3.3).
FUSION_EPS = 1e-4
# Prior probability used to initialise the class-net bias: -log((1 - 0.01) / 0.01) (official code:
# efficientdet_arch.py, class_net; the RetinaNet prior).
CLASS_PRIOR_PROB = 0.01

# Anchor aspect ratios as (w, h) multipliers: the paper's w/h {1/2, 1, 2} (section 5.1) as the official code's
# anchors.py turns them into pairs, and effdet's default pairs (effdet/config/model_config.py).
OFFICIAL_ASPECT_RATIOS: tuple[tuple[float, float], ...] = (
    (1.0, 1.0),
    (math.sqrt(2.0), 1.0 / math.sqrt(2.0)),
    (1.0 / math.sqrt(2.0), math.sqrt(2.0)),
)
EFFDET_ASPECT_RATIOS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def aspect_pairs(ratios: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """Anchor width/height ratios ``r`` as the (w, h) multiplier pairs ``(sqrt(r), 1/sqrt(r))`` configs store.

    The official code turns each aspect ratio into that pair (anchors.py of google/automl efficientdet), so an
    anchor keeps the area of its octave scale whatever its shape: ratios 1, 2, 0.5 give OFFICIAL_ASPECT_RATIOS.
    Users think in w/h ratios (a box 60 px wide and 20 px high has ratio 3); this is the one place that converts.
    """
    values = [float(r) for r in ratios]
    if not values:
        raise ValueError("aspect ratios: give at least one width/height ratio")
    bad = [r for r in values if not (math.isfinite(r) and r > 0)]
    if bad:
        raise ValueError(f"aspect ratios must be finite and > 0 (width / height), got {bad}")
    return tuple(_pair(r) for r in values)


def _pair(ratio: float) -> tuple[float, float]:
    """r and 1/r give mirrored pairs bit for bit, so ratios 1, 2, 0.5 reproduce OFFICIAL_ASPECT_RATIOS exactly."""
    if ratio >= 1:
        return math.sqrt(ratio), 1.0 / math.sqrt(ratio)
    w, h = _pair(1.0 / ratio)
    return h, w


def aspect_ratio_values(pairs: Sequence[Sequence[float]]) -> list[float]:
    """The width/height ratio of each (w, h) multiplier pair: the inverse of :func:`aspect_pairs`."""
    return [float(w) / float(h) for w, h in pairs]


# Pixel-space normalisation (images in 0..255): ImageNet statistics, and (x - 127) / 128 for Lite.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)

FUSION_METHODS = ("fast", "softmax", "sum")
FPN_TYPES = ("bifpn", "fpn", "panet")
PADDING_MODES = ("same", "symmetric")
ACTIVATIONS = tuple(ACTIVATION_MODULES)  # ("silu", "relu6", "relu"): the names layers.blocks.activation builds


@dataclass(frozen=True)
class BackboneConfig:
    """One EfficientNet: compound-scaling multipliers and the Lite switches."""

    name: str
    width: float
    depth: float
    lite: bool = False  # Lite: ReLU6, no squeeze-excite, stem/head and first/last stage not scaled
    drop_path_rate: float = 0.2


BACKBONES: dict[str, BackboneConfig] = {
    "efficientnet-b0": BackboneConfig("efficientnet-b0", 1.0, 1.0),
    "efficientnet-b1": BackboneConfig("efficientnet-b1", 1.0, 1.1),
    "efficientnet-b2": BackboneConfig("efficientnet-b2", 1.1, 1.2),
    "efficientnet-b3": BackboneConfig("efficientnet-b3", 1.2, 1.4),
    "efficientnet-b4": BackboneConfig("efficientnet-b4", 1.4, 1.8),
    "efficientnet-b5": BackboneConfig("efficientnet-b5", 1.6, 2.2),
    "efficientnet-b6": BackboneConfig("efficientnet-b6", 1.8, 2.6),
    "efficientnet-b7": BackboneConfig("efficientnet-b7", 2.0, 3.1),
    "efficientnet-lite0": BackboneConfig("efficientnet-lite0", 1.0, 1.0, lite=True, drop_path_rate=0.1),
    "efficientnet-lite1": BackboneConfig("efficientnet-lite1", 1.0, 1.1, lite=True, drop_path_rate=0.1),
    "efficientnet-lite2": BackboneConfig("efficientnet-lite2", 1.1, 1.2, lite=True, drop_path_rate=0.1),
    "efficientnet-lite3": BackboneConfig("efficientnet-lite3", 1.2, 1.4, lite=True, drop_path_rate=0.1),
    "efficientnet-lite4": BackboneConfig("efficientnet-lite4", 1.4, 1.8, lite=True, drop_path_rate=0.1),
}


def _plain(value: Any) -> Any:
    """Tuples (of tuples) as lists: the JSON form a config takes in a checkpoint."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


class NetworkConfig:
    """What every network config shares (detection's :class:`ModelConfig`, segmentation's ``SegmentationConfig``):
    the checks of the common choices, the JSON round trip stored in checkpoints, and ``replace``.

    Subclasses are dataclasses with at least ``backbone``, ``fusion``, ``fpn_type``, ``padding``, ``activation``
    and ``num_classes``; ``KIND`` names them in error messages.
    """

    KIND = "model"

    def _check_common(self) -> None:
        for value, allowed, what in (
            (self.fusion, FUSION_METHODS, "fusion"),  # type: ignore[attr-defined]
            (self.fpn_type, FPN_TYPES, "fpn_type"),  # type: ignore[attr-defined]
            (self.padding, PADDING_MODES, "padding"),  # type: ignore[attr-defined]
            (self.activation, ACTIVATIONS, "activation"),  # type: ignore[attr-defined]
        ):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if self.backbone not in BACKBONES:  # type: ignore[attr-defined]
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {sorted(BACKBONES)}")  # type: ignore[attr-defined]
        if self.image_size < 1:  # type: ignore[attr-defined]
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")  # type: ignore[attr-defined]

    @property
    def backbone_config(self) -> BackboneConfig:
        return BACKBONES[self.backbone]  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable description (stored in our checkpoints)."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config fields: {sorted(unknown)}")
        return cls(**cls._from_plain(dict(data)))

    @classmethod
    def _from_plain(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Undo what JSON did to fields that want tuples (a subclass hook)."""
        return data

    def replace(self, **overrides: Any) -> Any:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if unknown:
            raise TypeError(f"unknown {self.KIND} option(s): {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]


@dataclass
class ModelConfig(NetworkConfig):
    """Everything that determines an EfficientDet network (and the anchors that go with its outputs)."""

    name: str
    backbone: str
    image_size: int
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    fusion: str = "fast"  # "fast" (fast-normalized), "softmax" or "sum" (paper, section 3.3)
    fpn_type: str = "bifpn"  # "bifpn", or the paper's ablation alternatives "fpn" / "panet"
    min_level: int = 3
    max_level: int = 7
    num_classes: int = 90
    anchor_scale: float = 4.0
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = OFFICIAL_ASPECT_RATIOS
    activation: str = "silu"
    # "same" + redundant_bias reproduces the TF-trained official weights; "symmetric" and no bias is the
    # flavour of PyTorch-trained weights (effdet's pad_type / redundant_bias, config/model_config.py).
    padding: str = "same"
    redundant_bias: bool = True
    drop_path_rate: float | None = None  # None: the backbone's default
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    paper_params: int | None = field(default=None, compare=False)  # published count, see MODEL_TABLE
    paper_flops: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self._check_common()
        if not 1 <= self.min_level < self.max_level:
            raise ValueError(f"need 1 <= min_level < max_level, got {self.min_level}, {self.max_level}")
        if self.min_level != 3:
            raise ValueError("the detection backbone feeds P3-P5, so min_level must be 3")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        self.aspect_ratios = tuple(tuple(float(v) for v in r) for r in self.aspect_ratios)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per location: octave scales x aspect ratios."""
        return self.num_scales * len(self.aspect_ratios)

    @classmethod
    def _from_plain(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "aspect_ratios" in data:
            data["aspect_ratios"] = tuple(tuple(r) for r in data["aspect_ratios"])
        return data


def _d(name, backbone, size, ch, reps, head, fusion, anchor, params, flops, max_level=7) -> ModelConfig:
    return ModelConfig(
        name=name, backbone=backbone, image_size=size, fpn_channels=ch, fpn_repeats=reps,
        head_repeats=head, fusion=fusion, anchor_scale=anchor, max_level=max_level,
        paper_params=params, paper_flops=flops,
    )  # fmt: skip


def _lite(name, backbone, size, ch, reps, head, anchor, params) -> ModelConfig:
    return ModelConfig(
        name=name, backbone=backbone, image_size=size, fpn_channels=ch, fpn_repeats=reps,
        head_repeats=head, fusion="sum", anchor_scale=anchor, activation="relu6",
        mean=LITE_MEAN, std=LITE_STD, paper_params=params,
    )  # fmt: skip


# Architecture: paper, Table 1 (D0-D7x) and official hparams_config.py (Lite). Parameter counts: effdet's exact
# counts for D0, D1, D7x and Lite0, effdet's counts to the nearest thousand for D2-D7 (EFFDET_PARAMS has them
# exact), and for Lite1-Lite4 the 0.1M figures of the official README's lite-model table (google/automl
# efficientdet/README.md). FLOPs: multiply-adds at the model's own input size, as the official README's
# checkpoint table gives them (paper, Table 2 has them rounded, and 135B for D5).
MODEL_TABLE: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        _d("efficientdet-d0", "efficientnet-b0", 512, 64, 3, 3, "fast", 4.0, 3_880_067, 2.54e9),
        _d("efficientdet-d1", "efficientnet-b1", 640, 88, 4, 3, "fast", 4.0, 6_625_898, 6.10e9),
        _d("efficientdet-d2", "efficientnet-b2", 768, 112, 5, 3, "fast", 4.0, 8_097_000, 11.0e9),
        _d("efficientdet-d3", "efficientnet-b3", 896, 160, 6, 4, "fast", 4.0, 12_032_000, 24.9e9),
        _d("efficientdet-d4", "efficientnet-b4", 1024, 224, 7, 4, "fast", 4.0, 20_724_000, 55.2e9),
        _d("efficientdet-d5", "efficientnet-b5", 1280, 288, 7, 4, "fast", 4.0, 33_653_000, 130e9),
        _d("efficientdet-d6", "efficientnet-b6", 1280, 384, 8, 5, "sum", 4.0, 51_872_000, 226e9),
        _d("efficientdet-d7", "efficientnet-b6", 1536, 384, 8, 5, "sum", 5.0, 51_872_000, 325e9),
        _d("efficientdet-d7x", "efficientnet-b7", 1536, 384, 8, 5, "sum", 4.0, 77_147_166, 410e9, max_level=8),
        _lite("efficientdet-lite0", "efficientnet-lite0", 320, 64, 3, 3, 3.0, 3_243_470),
        _lite("efficientdet-lite1", "efficientnet-lite1", 384, 88, 4, 3, 3.0, 4_200_000),
        _lite("efficientdet-lite2", "efficientnet-lite2", 448, 112, 5, 3, 3.0, 5_300_000),
        _lite("efficientdet-lite3", "efficientnet-lite3", 512, 160, 6, 4, 4.0, 8_400_000),
        _lite("efficientdet-lite3x", "efficientnet-lite3", 640, 200, 6, 4, 3.0, 9_300_000),
        _lite("efficientdet-lite4", "efficientnet-lite4", 640, 224, 7, 4, 4.0, 15_100_000),
    ]
}


# Exact parameter counts of the same models in the effdet package (tf_efficientdet_*, 90 classes), measured with
# effdet 0.4.1 / timm 1.0.31. The published figures above are rounded (Lite to 0.1M); these are exact.
EFFDET_PARAMS: dict[str, int] = {
    "efficientdet-d0": 3_880_067,
    "efficientdet-d1": 6_625_898,
    "efficientdet-d2": 8_097_039,
    "efficientdet-d3": 12_032_296,
    "efficientdet-d4": 20_723_675,
    "efficientdet-d5": 33_653_315,
    "efficientdet-d6": 51_871_782,
    "efficientdet-d7": 51_871_782,
    "efficientdet-d7x": 77_147_166,
    "efficientdet-lite0": 3_243_470,
    "efficientdet-lite1": 4_248_318,
    "efficientdet-lite2": 5_252_334,
    "efficientdet-lite3": 8_350_862,
    "efficientdet-lite3x": 9_280_862,
    "efficientdet-lite4": 15_130_894,
}


def list_models() -> list[str]:
    """Names accepted by :func:`efficientdet.create_model`."""
    return list(MODEL_TABLE)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named variant with keyword overrides (e.g. ``num_classes=20, fusion="softmax"``)."""
    key = name.lower()
    if key not in MODEL_TABLE:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(MODEL_TABLE)}")
    return MODEL_TABLE[key].replace(**overrides)
