"""``create_model``: a named variant, optionally loaded from a checkpoint or an ImageNet backbone."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..data.labels import COCO_NUM_SLOTS, coco_slot_ids, coco_slot_names
from .config import EFFDET_ASPECT_RATIOS, ModelConfig, get_config, list_models
from .detector import EfficientDet
from .hub import detection_weights_file, resolve_weights
from .pretrained import load_pretrained_backbone
from .registry import ModelFamily, family_for, register_family
from .weights import (
    FORMAT_NAME,
    Checkpoint,
    CheckpointError,
    checkpoint_dict,
    class_names_mismatch,
    load_weights,
    read_checkpoint,
    save_file_atomic,
)

LOG = logging.getLogger(__name__)


def _effdet_flavour(ckpt: Checkpoint, num_anchors: int) -> dict[str, Any]:
    """What an effdet file says about the model it came from.

    TF-ported weights (``tf_efficientdet_*``) carry a bias on the convs that precede a BN; they need TF "SAME"
    padding. PyTorch-trained ones (``efficientdet_*``) have no such bias and use symmetric padding.
    """
    sd = ckpt.state_dict
    redundant = any(k.endswith("conv.pointwise.bias") and ".nodes." in k for k in sd)
    flavour: dict[str, Any] = {
        "padding": "same" if redundant else "symmetric",
        "redundant_bias": redundant,
        "aspect_ratios": EFFDET_ASPECT_RATIOS,  # effdet's zoo was evaluated with these anchors
    }
    predict = sd.get("class_net.predict.pointwise.weight")
    if predict is not None and predict.shape[0] % num_anchors == 0:
        flavour["num_classes"] = predict.shape[0] // num_anchors
    return flavour


def config_for_checkpoint(base: ModelConfig, ckpt: Checkpoint, source: str) -> dict[str, Any]:
    """Config fields that a checkpoint fixes for the variant ``base`` (our stored config, or effdet's flavour)."""
    if ckpt.layout == FORMAT_NAME and ckpt.config is not None:
        from .segmenter import is_segmentation_model  # here: importing it first would register its family first

        stored_name = str(ckpt.config.get("name", ""))
        if is_segmentation_model(stored_name):
            raise CheckpointError(f"{source}: holds a segmentation model ({stored_name}), not a detection one; "
                                  "train it with --task segmentation")  # fmt: skip
        stored = ModelConfig.from_dict(ckpt.config)
        if stored.name != base.name:
            raise CheckpointError(f"{source}: holds an {stored.name} model, not {base.name}")
        settings = stored.to_dict()
        for key in ("paper_params", "paper_flops"):
            settings.pop(key, None)
        return settings
    if ckpt.layout == "effdet":
        return _effdet_flavour(ckpt, base.num_anchors)
    return {}


def checkpoint_labels(ckpt: Checkpoint, num_classes: int) -> tuple[list[str] | None, list[int] | None]:
    """The class names and dataset category ids a checkpoint's outputs stand for.

    Our files store them; effdet's 90-class files are COCO detectors whose slot ``i`` is category ``i + 1``
    (:mod:`efficientdet.labels`), so they get COCO's names and ids.
    """
    if ckpt.class_names is not None:
        return list(ckpt.class_names), ckpt.category_ids
    if ckpt.layout == "effdet" and num_classes == COCO_NUM_SLOTS:
        return coco_slot_names(), coco_slot_ids()
    return None, None


def create_model(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained_backbone: bool | str = False,
    pretrained: bool | str | os.PathLike = False,
    **overrides: Any,
) -> EfficientDet:
    """Build a model by name: the registry (:mod:`efficientdet.registry`) finds the family that builds it.

    Args:
        name: e.g. ``"efficientdet-d0"`` or ``"efficientdet-lite0"``; ``"efficientdet-seg-*"`` names build the
            segmentation variant (:mod:`efficientdet.segmentation`). An unknown name is a ``KeyError`` that lists
            the known ones (:func:`efficientdet.registry.model_names`).
        num_classes: number of object classes (default 90, COCO; taken from the checkpoint when not given).
        checkpoint: a file in our format or one of effdet's release files (raw state_dict or a dict holding it
            under ``state_dict`` / ``model`` / ``state_dict_ema``), or a URL of one (downloaded into the cache of
            :mod:`efficientdet.hub`). Padding flavour and class count are inferred.
        pretrained_backbone: ``True`` loads ImageNet weights: the packaged ones for Lite0/1/2, else timm's file,
            downloaded once into the cache; a path or URL loads an EfficientNet file in timm's or
            EfficientNet-PyTorch's layout (e.g. timm's ``tf_efficientnet_b3``).
        pretrained: ``True`` loads the published COCO weights of ``name`` (effdet's release, downloaded once
            into the cache; :data:`efficientdet.hub.DETECTION_WEIGHTS`); a path or URL is the same as
            ``checkpoint=``. The model then knows COCO's class names and category ids.
        **overrides: any :class:`ModelConfig` field (``fusion``, ``fpn_type``, ``padding``, ``image_size`` ...).
    """
    if pretrained and checkpoint is not None:
        raise ValueError("give either checkpoint= or pretrained=, not both")
    if pretrained and pretrained_backbone:
        raise ValueError("give either pretrained= or pretrained_backbone=, not both")
    if pretrained:
        checkpoint = detection_weights_file(name) if pretrained is True else str(pretrained)
    if checkpoint is not None:
        checkpoint = resolve_weights(checkpoint)
    return family_for(name).create(name, num_classes, checkpoint, pretrained_backbone, **overrides)


def create_detector(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained_backbone: bool | str = False,
    **overrides: Any,
) -> EfficientDet:
    """The detection family's builder (what :func:`create_model` calls for a detection name); ``checkpoint`` is
    a local file."""
    if checkpoint is not None and pretrained_backbone:
        raise ValueError("give either checkpoint= or pretrained_backbone=, not both")
    base = get_config(name)
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else None
    settings = config_for_checkpoint(base, ckpt, str(checkpoint)) if ckpt is not None else {}
    if num_classes is not None:
        if ckpt is not None and settings.get("num_classes", num_classes) != num_classes:
            raise CheckpointError(
                f"{checkpoint}: has {settings['num_classes']} classes but num_classes={num_classes} was asked for "
                f"(to fine-tune on other classes use `efficientdet train --checkpoint`: it keeps the shared classes)"
            )
        settings["num_classes"] = num_classes
    settings.update(overrides)
    config = base.replace(**settings)
    model = EfficientDet(config)
    if ckpt is not None:
        load_weights(model, ckpt.state_dict, source=str(checkpoint))
        model.class_names, model.category_ids = checkpoint_labels(ckpt, config.num_classes)
        problem = class_names_mismatch(model.class_names, config.num_classes)
        if problem:
            raise CheckpointError(f"{checkpoint}: {problem}")
    elif pretrained_backbone:
        load_pretrained_backbone(model, None if pretrained_backbone is True else str(pretrained_backbone))
    return model


def load_checkpoint(path: str | os.PathLike, name: str | None = None, **overrides: Any) -> EfficientDet:
    """Load a model file (or URL); the variant name comes from our own files, and must be given for effdet's."""
    path = resolve_weights(path)
    if name is None:
        ckpt = read_checkpoint(path)
        if ckpt.config is None:
            raise CheckpointError(f"{path}: does not say which model it holds; pass the model name (--model)")
        name = ckpt.config["name"]
    return create_model(name, checkpoint=path, **overrides)


def save_model(
    model: EfficientDet,
    path: str | os.PathLike,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    **extra: Any,
) -> None:
    """Write ``model`` in our format (atomically); it loads again with ``create_model(name, checkpoint=path)``.

    Class names and category ids default to the model's own (``model.class_names``, ``model.category_ids``).
    """
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    problem = class_names_mismatch(names, getattr(model.config, "num_classes", None))
    if problem:
        raise ValueError(f"save_model: {problem}")
    ids = category_ids if category_ids is not None else getattr(model, "category_ids", None)
    if names is not None and ids is not None and len(ids) != len(names):
        ids = None  # the ids of another class list (a caller that renamed the classes): not this model's
    save_file_atomic(checkpoint_dict(model.state_dict(), model.config.to_dict(), names, ids, **extra), path)


# the detection family: every row of the variant table (efficientdet.config.MODEL_TABLE)
register_family(ModelFamily("efficientdet", "detection", list_models, create_detector, ModelConfig))
