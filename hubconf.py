"""torch.hub entry points: ``torch.hub.load("<owner>/efficientdet", "efficientdet_d0", pretrained=True)``.

One entry per model of the family (``efficientdet_d0`` ... ``efficientdet_d7x``, ``efficientdet_lite0`` ...
``efficientdet_lite4``, and the segmentation variants ``efficientdet_seg_d0`` ... ``efficientdet_seg_lite2``),
each returning the ``nn.Module`` that :func:`efficientdet.create_model` builds, with the same keyword arguments
(``pretrained``, ``num_classes``, ``pretrained_backbone``, ``checkpoint``, any ``ModelConfig`` field), and
``detector``, which wraps such a model in the pre- and post-processing of
:class:`efficientdet.inference.Detector` (pictures in, boxes in their pixels out). Published weights come through
the package's own downloader (torch's, with the file's SHA-256 checked, read with ``weights_only=True``).

Every name here that does not start with ``_`` is listed by ``torch.hub.list``, so imports are kept private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

import efficientdet as _efficientdet
from efficientdet.models.registry import model_names as _model_names

if _TYPE_CHECKING:
    from efficientdet.inference import Detector as _Detector

# what torch.hub checks before running an entry: the packages ``import efficientdet`` needs
dependencies = ["torch", "numpy", "PIL", "yaml", "tqdm"]


def _model_entry(name: str):
    def entry(pretrained: bool | str = False, **kwargs: _Any) -> _efficientdet.EfficientDet:
        return _efficientdet.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name.replace("-", "_")
    entry.__doc__ = (
        f"{name}: ``pretrained=True`` loads its published COCO weights where effdet released them (downloaded once "
        "into the cache); other keyword arguments as efficientdet.create_model (num_classes, pretrained_backbone, "
        "checkpoint, ...)."
    )
    return entry


for _name in _model_names():
    globals()[_name.replace("-", "_")] = _model_entry(_name)


def detector(
    name: str = "efficientdet-d0", pretrained: bool | str = True, device: str = "cpu", **kwargs: _Any
) -> _Detector:
    """A ready :class:`efficientdet.inference.Detector`: ``detector(pictures)`` takes file paths, URLs, PIL images,
    RGB uint8 arrays or float tensors and returns one dict per picture (``boxes`` as x1, y1, x2, y2 in its pixels,
    ``scores``, ``labels``, ``label_names``).

    ``name`` and ``pretrained`` (default: the published COCO weights) as the model entries; keyword arguments that
    ``Detector`` takes (``score_threshold``, ``nms``, ``image_size``, ``classes``, ``tile``, ...) go to it, the
    others to ``create_model``.
    """
    from inspect import signature

    from efficientdet.inference import Detector

    accepted = set(signature(Detector.__init__).parameters) - {"self", "model", "device"}
    detector_options = {k: kwargs.pop(k) for k in list(kwargs) if k in accepted}
    model = _efficientdet.create_model(name, pretrained=pretrained, **kwargs)
    return Detector(model, device=device, **detector_options)
