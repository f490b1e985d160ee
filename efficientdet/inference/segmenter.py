"""``Segmenter``: images in (paths, PIL images, arrays or tensors), class-id masks at each image's own size out.

The segmentation counterpart of :class:`~efficientdet.inference.Detector`, and like it the only code that runs a
segmentation model on pictures: ``efficientdet predict`` (:func:`~efficientdet.inference.segmentation.segment_image`)
and evaluation (:func:`~efficientdet.evaluation.segmentation.evaluate_segmentation`) call it, so that the masks a
user gets are the masks that were scored. Pre-processing: the longer side resized to ``image_size`` (aspect kept,
no padding for a single image), normalised; post-processing: the logits cut to the image (a batch is padded
bottom/right), upsampled bilinearly to the wanted size, arg-max over the classes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data.images import DecodedImage, decode_image
from ..data.segmentation import eval_resize
from ..data.transforms import normalise
from ..models.factory import load_checkpoint
from ..models.fuse import to_model_layout, uses_channels_last
from ..models.segmenter import EfficientDetSegmentation
from ..utils.device import as_device
from .detector import ImageInput, as_image_list, network_pixels


def _load_segmentation_model(path: str | os.PathLike, model_name: str | None = None) -> EfficientDetSegmentation:
    """The model in ``path``; a TypeError naming the file when it holds another kind."""
    model = load_checkpoint(path, model_name)
    if not isinstance(model, EfficientDetSegmentation):
        raise TypeError(f"{path}: expected a segmentation model, got {type(model).__name__}")
    return model


class Segmenter:
    """A segmentation model plus its pre- and post-processing.

    >>> seg = Segmenter.from_checkpoint("runs/seg/best.pt")
    >>> seg("street.jpg")[0]["mask"]     # int64 [H, W] class ids in the photo's pixels
    """

    def __init__(
        self,
        model: EfficientDetSegmentation | str | os.PathLike,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        """``model``: a segmentation model, or the path of its file (loaded as :meth:`from_checkpoint` loads it).
        ``image_size``: the longer side the network sees (default: the model's). ``amp_dtype`` (e.g.
        ``torch.bfloat16``) runs the network under autocast; the upsampling and arg-max stay float32."""
        if isinstance(model, (str, os.PathLike)):  # Segmenter("best.pt"), as Detector("best.pt")
            model = _load_segmentation_model(model)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Segmenter takes a segmentation model or the path of its file, not {type(model).__name__}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.device = as_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.image_size = image_size or self.config.image_size
        self.amp_dtype = amp_dtype
        # inputs are handed over in the model's own memory layout (no conversion inside the first conv)
        self.channels_last = uses_channels_last(self.model)
        names = getattr(model, "class_names", None)
        self.class_names = list(names) if names else [str(i) for i in range(self.config.num_classes)]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> Segmenter:
        """Load a segmentation checkpoint of this package (``efficientdet train --task segmentation``)."""
        return cls(_load_segmentation_model(path, kwargs.pop("model", None)), device=device, **kwargs)

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on the device and in the model's memory layout (see ``Detector.model_input``)."""
        return to_model_layout(batch, self.device, self.channels_last)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, K, H, W]`` of a normalised batch ``[B, 3, H, W]`` (under autocast if asked for)."""
        batch = self.model_input(batch)
        amp = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with amp:
            return self.model(batch)

    def decode(self, path: str | os.PathLike) -> DecodedImage:
        """The image file ``path`` decoded for this segmenter's input: a JPEG more than twice the input size at 1/2,
        1/4 or 1/8 of its resolution, anything else in full (``Detector.decode``'s rule)."""
        return decode_image(path, (self.image_size, self.image_size))

    @torch.no_grad()
    def predict_tensor(
        self,
        batch: torch.Tensor,
        sizes: Sequence[tuple[int, int]] | None = None,
        out_sizes: Sequence[tuple[int, int]] | None = None,
        return_logits: bool = False,
    ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """Masks for an already pre-processed batch: the one path from network input to class ids.

        ``batch`` is ``[B, 3, H, W]``, resized and normalised (padded bottom/right to a common size); per image,
        ``sizes`` is the (h, w) of its content in the batch (default: all of it) and ``out_sizes`` the (H, W) to
        return it at (default: ``sizes``), e.g. its original mask's. Each mask is an int64 ``[H, W]`` tensor on
        the device; with ``return_logits`` each item is ``(mask, logits)``, the float32 logits ``[K, H, W]``.
        """
        logits = self.logits(batch)
        full = tuple(batch.shape[-2:])
        results: list[Any] = []
        for i in range(len(batch)):
            h, w = sizes[i] if sizes is not None else full
            out = tuple(out_sizes[i]) if out_sizes is not None else (h, w)
            one = logits[i : i + 1, :, :h, :w].float()
            if (h, w) != out:
                one = F.interpolate(one, size=out, mode="bilinear", align_corners=False)
            mask = one[0].argmax(0)
            results.append((mask, one[0]) if return_logits else mask)
        return results

    def __call__(
        self,
        images: ImageInput | DecodedImage | Sequence[ImageInput | DecodedImage] | torch.Tensor,
        return_logits: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """One dict per image: ``mask``, int64 class ids ``[H, W]`` in the pixels of the image as given (and
        ``logits``, float32 ``[K, H, W]`` at that size, with ``return_logits``); tensors on the CPU.

        Accepts what :class:`~efficientdet.inference.Detector` does: a file path, PIL image or HxWx3 uint8 array,
        a list of those, or a float RGB tensor ``[B, 3, H, W]`` in [0, 1]; a file is decoded as :meth:`decode`
        says (a large JPEG at a reduced scale, as evaluation decodes it), its mask still at full resolution. Images
        run one at a time, each at its own aspect ratio without padding (they rarely share a size, and padding
        would change the logits near the bottom/right border).
        """
        results = []
        for image in as_image_list(images):
            decoded = self.decode(image) if isinstance(image, (str, os.PathLike)) else image
            array, _, full_hw = network_pixels(decoded)
            resized = eval_resize(array, self.image_size)
            x = normalise(resized, self.config.mean, self.config.std)[None]
            (item,) = self.predict_tensor(x, [resized.shape[:2]], [full_hw], return_logits=return_logits)
            if return_logits:
                mask, logits = item
                results.append({"mask": mask.cpu(), "logits": logits.cpu()})
            else:
                results.append({"mask": item.cpu()})
        return results
