"""The start of fine-tuning: a checkpoint's weights placed into a model that predicts another list of classes.

Everything whose shape a new class list leaves alone is kept: backbone, feature network, the box net and the class
net's conv tower. The class net's last conv (``class_net.predict``, a separable conv) has one output channel per
(anchor, class), anchor-major: channel ``anchor * num_classes + class``, the layout of the official code and of
effdet. Its depthwise part does not depend on the classes and is kept; of its pointwise part (weight and bias),
each class the checkpoint knows by name (:func:`efficientdet.labels.match_class_names`: case-insensitive, Pascal
VOC's spellings of COCO's names) keeps its rows at every anchor, and the other classes keep the model's fresh
initialisation (variance-scaling weights, and RetinaNet's prior-probability bias: Lin et al. 2017, section 4.1).
If the anchor count changed, both pointwise prediction convs start afresh (their channels mean other anchors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..data.labels import match_class_names

CLASS_PREDICT_KEYS = ("class_net.predict.pointwise.weight", "class_net.predict.pointwise.bias")
BOX_PREDICT_KEYS = ("box_net.predict.pointwise.weight", "box_net.predict.pointwise.bias")


def shared_classes(source_names: Sequence[str] | None, target_names: Sequence[str]) -> dict[int, int]:
    """Target class index -> source class index for the classes both lists name (empty when the source has none)."""
    return match_class_names(source_names, target_names) if source_names else {}


def _class_rows(
    theirs: torch.Tensor, own: torch.Tensor, rows: Mapping[int, int], source_classes: int, num_anchors: int
) -> torch.Tensor:
    """``own`` (fresh) with, at every anchor, the rows of the classes in ``rows`` copied from ``theirs``."""
    target_classes = own.shape[0] // num_anchors
    out = own.clone()
    for a in range(num_anchors):
        for target, source in rows.items():
            out[a * target_classes + target] = theirs[a * source_classes + source]
    return out


def transfer_state(
    source: Mapping[str, torch.Tensor],
    model: nn.Module,
    rows: Mapping[int, int],
    source_classes: int,
) -> tuple[dict[str, torch.Tensor], dict[int, int]]:
    """The state dict to load into ``model`` (built for the new classes) to start from ``source``, and the rows kept.

    ``rows`` maps the model's class indices to the source's (:func:`shared_classes`); ``source_classes`` is the
    source's class count. Keys other than the two pointwise prediction convs are the source's as they are, so
    loading the result with :func:`efficientdet.weights.load_weights` still refuses a source that lacks keys or
    differs in shape. The rows kept are ``rows``, or none when the anchor count changed.
    """
    own = model.state_dict()
    num_anchors = model.config.num_anchors
    state = dict(source)
    if any(k in source and source[k].shape != own[k].shape for k in BOX_PREDICT_KEYS):  # other anchors
        state.update({k: own[k] for k in (*CLASS_PREDICT_KEYS, *BOX_PREDICT_KEYS)})
        return state, {}
    for key in CLASS_PREDICT_KEYS:
        if key in source:
            state[key] = _class_rows(source[key], own[key], rows, source_classes, num_anchors)
    return state, dict(rows)


def describe_mapping(rows: Mapping[int, int], source_names: Sequence[str] | None, target_names: Sequence[str]) -> str:
    """``"3 of 5 classes keep their rows (airplane <- aeroplane, tv, person); new: raccoon, widget"``."""
    kept = []
    for target, source in sorted(rows.items()):
        theirs = source_names[source] if source_names else str(source)
        mine = target_names[target]
        kept.append(mine if theirs == mine else f"{mine} <- {theirs}")
    new = [n for i, n in enumerate(target_names) if i not in rows]
    text = f"{len(rows)} of {len(target_names)} classes keep their rows"
    text += f" ({', '.join(kept)})" if kept else ""
    return text + (f"; new: {', '.join(new)}" if new else "")
