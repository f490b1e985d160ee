"""``Detector``: images in (paths, PIL images, arrays or tensors), detections in original pixels out.

Pre-processing (resize the longer side, pad bottom/right, normalise) and post-processing (top-k, decode, NMS,
mapping back to the original image) live here, around the plain network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import DecodedImage, decode_image, load_image
from ..data.transforms import eval_transform, size_hw, stack_images
from ..models.detector import EfficientDet
from ..models.factory import load_checkpoint
from ..models.fuse import optimize_for_inference, to_model_layout, uses_channels_last
from ..models.weights import class_names_mismatch
from ..ops.anchors import anchors_for_config
from ..ops.postprocess import MAX_DETECTIONS, NMS_IOU, NMS_METHODS, TOPK_CANDIDATES, postprocess, to_original_pixels
from ..utils.device import as_device
from ..utils.threads import torch_threads
from .class_filter import resolve_classes
from .image_urls import is_image_url, read_url_image
from .tiling import DEFAULT_TILE_OVERLAP, check_tile, detect_tiled, merge_detections

ImageInput = str | os.PathLike | Image.Image | np.ndarray


IMAGE_KINDS = "an image (a path, URL, PIL image or HxWx3 uint8 array)"


def _as_rgb_array(image: ImageInput) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        array = read_url_image(str(image), load_image) if is_image_url(image) else load_image(image)
    elif isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 (or HxWx4) array, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got {image.dtype}")
        array = image[:, :, :3]
    else:
        raise TypeError(f"expected {IMAGE_KINDS}, got {type(image).__name__}")
    if array.shape[0] == 0 or array.shape[1] == 0:  # would reach the resize as a division by zero
        raise ValueError(f"an image without pixels ({array.shape[0]}x{array.shape[1]})")
    return array


def network_pixels(image: ImageInput | DecodedImage) -> tuple[np.ndarray, int, tuple[int, int]]:
    """The pixels a network is fed from ``image``, their reduction (1: the picture's own resolution) and the
    picture's full (H, W).

    A :class:`~efficientdet.data.images.DecodedImage` (a file as the predictor's ``decode`` read it: a large JPEG
    at 1/2, 1/4 or 1/8 of its resolution, as the data sets of both tasks decode it for training and evaluation, so
    that prediction gives what evaluation scores) carries its reduction; anything else is used as it is.
    """
    if isinstance(image, DecodedImage):
        return image.pixels, image.reduction, image.full_size[::-1]
    array = _as_rgb_array(image)
    return array, 1, array.shape[:2]


def check_detection_options(
    score_threshold: float, iou_threshold: float, max_det: int, image_size: int | tuple[int, int] | None = None
) -> None:
    """ValueError naming the first option of a :class:`Detector` (and of ``predict``) out of its range."""
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score threshold must be in [0, 1], got {score_threshold}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in [0, 1], got {iou_threshold}")
    if max_det < 1:
        raise ValueError(f"max_det must be at least 1, got {max_det}")
    sides = image_size if isinstance(image_size, (tuple, list)) else (image_size,)
    if image_size is not None and (len(sides) not in (1, 2) or any(side < 1 for side in sides)):
        raise ValueError(f"image_size must be a side >= 1 or (H, W), got {image_size}")


# How far past [0, 1] a float picture may reach and still be clamped: the ringing of bicubic or antialiased
# resampling (a few hundredths), not 0-255 pixels nor mean/std-normalised ones (about -2.1 to 2.6)
UNIT_RANGE_SLACK = 0.5


def unit_range_problem(pixels: torch.Tensor) -> str | None:
    """Why a float picture is not in [0, 1] (give or take :data:`UNIT_RANGE_SLACK`), as a sentence; else None."""
    low, high = (float(v) for v in torch.aminmax(pixels.detach().float()))
    if not (math.isfinite(low) and math.isfinite(high)):
        return "some values are not finite (NaN or infinity)"
    if low >= -UNIT_RANGE_SLACK and high <= 1 + UNIT_RANGE_SLACK:
        return None
    span = f"values from {low:.3g} to {high:.3g}"
    if low >= -UNIT_RANGE_SLACK:
        return f"{span}: 0-255 pixels? Divide by 255"
    return f"{span}: normalised by a mean and std? Give the [0, 1] picture, which is normalised inside"


def as_image_list(
    images: ImageInput | DecodedImage | Sequence[ImageInput | DecodedImage] | torch.Tensor,
) -> list[ImageInput | DecodedImage]:
    """What the predictors' ``__call__`` accept, as a list of single images.

    A float RGB tensor ``[B, 3, H, W]`` (or ``[3, H, W]``) with values in [0, 1], as torchvision's models take,
    becomes uint8 HxWx3 arrays, so that it goes through the same resize and normalisation as a file would.
    """
    if isinstance(images, torch.Tensor):
        batch = images if images.ndim == 4 else images[None]
        if batch.ndim != 4 or batch.shape[1] != 3 or not batch.is_floating_point():
            got = f"{str(images.dtype).removeprefix('torch.')} {tuple(images.shape)}"
            raise ValueError(f"expected a float tensor [B, 3, H, W] in [0, 1], got {got}")
        range_problem = unit_range_problem(batch)
        if range_problem:
            raise ValueError(f"expected a float tensor [B, 3, H, W] in [0, 1]; {range_problem}")
        return [(t.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy() for t in batch]
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, DecodedImage)):
        return [images]
    if not isinstance(images, Iterable):
        raise TypeError(f"expected {IMAGE_KINDS}, a list of them or a float tensor [B, 3, H, W]; "
                        f"got {type(images).__name__}")  # fmt: skip
    return list(images)


# Images (video frames, tiles) per forward pass unless told: batches fill a GPU; on a CPU one image at a time ran
# as fast or faster per image (2-core AVX-512 EPYC: D0 17 img/s at 1 against 11 at 8, Lite0 at 448 px 32 against
# 23, Lite0 at 320 px 36 either way), the activations of one image staying in the caches.
GPU_BATCH_SIZE = 8
CPU_BATCH_SIZE = 1


WHOLE_PIXEL_TOLERANCE = 1e-3  # an extent within this of a whole input pixel is that pixel (float rounding)


def picture_regions(
    input_size: tuple[int, int],
    scales: Sequence[float | tuple[float, float]] | None,
    sizes: Sequence[tuple[int, int]] | None,
) -> list[tuple[float, float, float, float]] | None:
    """Where each pre-processed picture lies in an input of ``input_size`` (H, W): (0, 0, its width, its height)
    in input pixels, the rest being padding (pre-processing resizes and pads at the bottom and right); None
    where ``scales`` or ``sizes`` is unknown.

    The resize makes whole input pixels, so the extent is rounded up to one: a JPEG decoded at a reduced scale
    whose sides do not divide by the reduction has a partial last block, and its full size times the scale falls
    short of the resized picture by a fraction of a pixel. Rounded, a photo gives the same region here as in
    evaluation, which passes the decoded picture's own size and scale.
    """
    if scales is None or sizes is None:
        return None
    regions = []
    for scale, (height, width) in zip(scales, sizes):
        sx, sy = (scale, scale) if isinstance(scale, (int, float)) else scale
        right = min(math.ceil(width * sx - WHOLE_PIXEL_TOLERANCE), input_size[1])
        bottom = min(math.ceil(height * sy - WHOLE_PIXEL_TOLERANCE), input_size[0])
        regions.append((0.0, 0.0, float(right), float(bottom)))
    return regions


def default_batch_size(device: str | torch.device) -> int:
    """Images per forward pass when none is given: ``GPU_BATCH_SIZE`` on CUDA, else ``CPU_BATCH_SIZE``."""
    return GPU_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_BATCH_SIZE


# Video frames run side by side on a CPU, each in its own thread with its share of torch's threads (see
# efficientdet.inference.parallel): on a 2-core EPYC, 1.05-1.6x the frames/s of one at a time on both threads
# (Lite0 at 320 and 448 px, D0); the drawn video 1.16-1.38x. Two only: more was not measured, and each frame in
# flight adds latency for a live camera. Exported runtimes (onnxruntime, OpenVINO) keep their own thread pools.
CPU_PARALLEL_FRAMES = 2


def default_parallel_frames(model: torch.nn.Module, device: str | torch.device) -> int:
    """Frames run at once by :meth:`Detector.stream` and video ``predict`` when not told: ``CPU_PARALLEL_FRAMES``
    for our torch network on a CPU with at least that many torch threads, else 1."""
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and isinstance(model, EfficientDet) and torch.get_num_threads() >= CPU_PARALLEL_FRAMES:
        return CPU_PARALLEL_FRAMES
    return 1


class Detector:
    """A model plus its pre- and post-processing.

    >>> det = Detector.from_checkpoint("runs/train/best.pt")
    >>> det("photo.jpg")[0]["boxes"]     # [K, 4] x1, y1, x2, y2 in the photo's pixels
    """

    def __init__(
        self,
        model: EfficientDet | str | os.PathLike,
        device: str | torch.device = "cpu",
        image_size: int | tuple[int, int] | None = None,
        score_threshold: float = 0.05,
        iou_threshold: float = NMS_IOU,
        max_det: int = MAX_DETECTIONS,
        topk: int = TOPK_CANDIDATES,
        class_names: Sequence[str] | None = None,
        nms: str = "hard",
        class_agnostic: bool = False,
        optimize: bool = False,
        classes: str | Sequence[int | str] | None = None,
        tile: int = 0,
        tile_overlap: float = DEFAULT_TILE_OVERLAP,
        batch_size: int | None = None,
        flip_tta: bool = False,
        vote_iou: float | None = None,
        parallel_frames: int | None = None,
    ) -> None:
        """``model``: an :class:`EfficientDet`, an exported network (``efficientdet.export.runtimes.load_exported``)
        or the path of a checkpoint (loaded as :meth:`from_checkpoint` loads it).

        ``image_size``: the square input side (default: the model's), or an (H, W) input, as an exported file
        of that fixed size takes (export verification builds such a detector).

        ``classes`` keeps only those classes (names, case-insensitive, or 0-based indices; a list or ``"a,b"``).

        ``tile`` > 0: sliced inference for large images (small objects), see :mod:`efficientdet.tiling`: tiles of
        ``tile`` original pixels overlapping by ``tile_overlap`` plus one full-image pass, ``batch_size`` of them
        per forward pass (default :func:`default_batch_size` of ``device``; also what :meth:`stream` runs), merged
        into one result per image.

        The filter runs after NMS and ``max_det``, so the boxes kept are exactly the ones an unfiltered run returns
        for those classes (fewer than ``max_det`` may remain). An unknown class raises ``UnknownClassError`` here,
        before any image is processed.

        ``flip_tta``: test-time augmentation; each image also runs mirrored left-right, and the two passes'
        detections are merged as tiles are (:func:`~efficientdet.inference.tiling.merge_detections`: NMS over the
        union, or with soft-NMS a box dropped when it duplicates one of the other pass). Twice the network time.

        ``vote_iou``: box voting after NMS (:func:`~efficientdet.ops.postprocess.vote_boxes`): each kept box moves
        to the score-weighted mean of the candidates of its class overlapping it by at least this IoU (off by
        default: no consistent gain on held-out images, see :mod:`efficientdet.evaluation.validate`).

        ``parallel_frames``: video frames (batches of ``batch_size``) that :meth:`stream` and video ``predict`` run
        at once, each in a thread of its own (:mod:`efficientdet.inference.parallel`); default
        :func:`default_parallel_frames`: 2 for the torch network on a CPU, else 1. Single images and ``__call__``
        are not affected.
        """
        if isinstance(model, (str, os.PathLike)):  # Detector("best.pt"), as other detectors' classes are typed
            model = load_checkpoint(model)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Detector takes a model, an exported network or the path of a model file, not "
                            f"{type(model).__name__}")  # fmt: skip
        if nms not in NMS_METHODS:
            raise ValueError(f"unknown NMS method {nms!r}; choose from {', '.join(NMS_METHODS)}")
        check_detection_options(score_threshold, iou_threshold, max_det, image_size)
        check_tile(tile, tile_overlap)
        if vote_iou is not None and not 0 < vote_iou <= 1:
            raise ValueError(f"vote_iou (--box-voting) must be in (0, 1] or None, got {vote_iou}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if parallel_frames is not None and parallel_frames < 1:
            raise ValueError(f"parallel_frames must be at least 1, got {parallel_frames}")
        self.device = as_device(device)
        self.tile, self.tile_overlap = tile, tile_overlap
        self.batch_size = batch_size or default_batch_size(self.device)
        self.flip_tta = flip_tta
        self.parallel_frames = parallel_frames or default_parallel_frames(model, self.device)
        self.model = model.to(self.device).eval()
        if optimize:  # a copy with BN and SAME pads folded, channels-last on CPU: faster, same results up to rounding
            self.model = optimize_for_inference(self.model, channels_last=self.device.type == "cpu")
        # inputs are handed over in the model's own memory layout (no conversion inside the first conv)
        self.channels_last = uses_channels_last(self.model)
        # torch's threads for the pre- and post-processing around a network that runs in another runtime's thread
        # pool on the CPU (an exported file says how many: ExportedNetwork.host_threads); None: torch's own count
        self.host_threads = getattr(self.model, "host_threads", None) if self.device.type == "cpu" else None
        self.config = model.config
        self.image_size = image_size or self.config.image_size
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_det = max_det
        self.topk = topk
        self.nms = nms  # "hard" (greedy at iou_threshold) or "soft" (Gaussian, sigma 0.5)
        self.vote_iou = vote_iou
        self.class_agnostic = class_agnostic
        names = class_names if class_names is not None else getattr(model, "class_names", None)
        names = list(names) if names else None
        problem = class_names_mismatch(names, self.config.num_classes)
        if problem:
            raise ValueError(f"class_names: {problem}")
        self.class_names = names or [str(i) for i in range(self.config.num_classes)]
        ids = getattr(model, "category_ids", None)  # the training data's category ids (COCO JSON), where known
        self.category_ids: list[int] | None = list(ids) if ids else None
        self.classes: list[int] | None = None if classes is None else resolve_classes(classes, self.class_names)
        self._anchors: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> Detector:
        """Load our checkpoint format (effdet files need ``model=NAME``, passed on to ``load_checkpoint``)."""
        model = load_checkpoint(path, kwargs.pop("model", None))
        return cls(model, device=device, **kwargs)

    def anchors(self, size: tuple[int, int]) -> torch.Tensor:
        if size not in self._anchors:
            self._anchors[size] = anchors_for_config(self.config, size).to(self.device)
        return self._anchors[size]

    def preprocess(
        self, images: Sequence[ImageInput | DecodedImage]
    ) -> tuple[torch.Tensor, list[tuple[float, float]], list[tuple[int, int]]]:
        """Batch tensor (on the device, in the model's memory layout), per-image (x, y) scale (input px per
        original px, exact) and original (H, W): what :meth:`predict_tensor` takes.

        A file is decoded by :meth:`decode`: a camera photo at the reduced scale that
        still covers the input, as evaluation decodes it, so that ``predict`` gives what ``eval`` scores; the
        scales and sizes are the full picture's all the same. ``images`` may also hold what :meth:`decode`
        returned.
        """
        tensors, scales, sizes = [], [], []
        with torch_threads(self.host_threads):
            for image in images:
                decoded = self.decode(image) if isinstance(image, (str, os.PathLike)) else image
                array, reduction, full_hw = network_pixels(decoded)
                out = eval_transform(array, self.image_size, self.config.mean, self.config.std)
                tensors.append(out.image)
                # a reduced pixel covers `reduction` full ones (a partial block at the right and bottom edges
                # excepted, where boxes are clipped to the picture)
                sx, sy = out.scale_xy
                scales.append((sx / reduction, sy / reduction) if reduction > 1 else out.scale_xy)
                sizes.append(full_hw)
            return self.model_input(stack_images(tensors)), scales, sizes

    def decode(self, path: str | os.PathLike) -> DecodedImage:
        """The image file ``path`` decoded for this detector's input: a JPEG more than twice the input size at 1/2,
        1/4 or 1/8 of its resolution (:func:`~efficientdet.data.images.decode_image`; a 12 MP photo ~8x faster
        than in full), anything else in full; an http(s) URL of an image file is downloaded first
        (:mod:`~efficientdet.inference.image_urls`). Raises ``ImageReadError`` for a file that cannot be read."""
        if is_image_url(path):
            return read_url_image(str(path), self.decode)
        return decode_image(path, size_hw(self.image_size))

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on the device and in the model's memory layout (channels-last for a channels-last model, NCHW
        otherwise).

        Every batch the model sees goes through here, whoever pre-processed it (this class, evaluation's data
        loader, a benchmark), so that all of them run the network on the same input layout and get the same
        numbers. A no-op for a batch already there.
        """
        return to_model_layout(batch, self.device, self.channels_last)

    @torch.no_grad()
    def network(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The network's raw per-level outputs (class logits, box codes) for a pre-processed batch, run as
        :meth:`predict_tensor` runs it (:meth:`model_input` first); what export verification compares raw-output
        files with."""
        return self.model(self.model_input(batch))

    def detections(
        self,
        class_outputs: list[torch.Tensor],
        box_outputs: list[torch.Tensor],
        input_size: tuple[int, int],
        regions: Sequence[tuple[float, float, float, float]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The network's raw outputs for inputs of ``input_size`` (H, W) -> per image ``boxes`` (input pixels),
        ``scores``, ``labels``, on the device: top-k, decoding and NMS with this detector's settings; with
        ``regions`` (:func:`picture_regions`) only boxes of the picture, clipped to it, not of the padding.

        The only call of the post-processing on the prediction side, so that prediction, evaluation, benchmarks
        and export checks cannot drift apart; :mod:`efficientdet.tools.bench` times it alone.
        """
        return postprocess(
            class_outputs, box_outputs, self.anchors(input_size), self.config.num_classes, self.topk,
            self.iou_threshold, self.max_det, self.score_threshold, nms=self.nms, class_agnostic=self.class_agnostic,
            vote_iou=self.vote_iou, regions=regions,
        )  # fmt: skip

    @torch.no_grad()
    def predict_tensor(
        self,
        batch: torch.Tensor,
        scales: Sequence[float | tuple[float, float]] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
        filter_classes: bool = True,
    ) -> list[dict[str, Any]]:
        """Detections for an already pre-processed batch: the one path from network input to detections.

        ``batch`` is ``[B, 3, H, W]``, resized, padded and normalised (:meth:`preprocess`, or a data loader's
        :func:`~efficientdet.data.transforms.eval_transform`); per image, ``scales`` is its resize (input px per
        original px: one factor or the exact (x, y) ratios) and ``sizes`` its original (H, W). Boxes come back in
        original pixels, clipped to the image (input pixels without ``scales``; clipped at 0 only without
        ``sizes``). :meth:`__call__`, tiling, video, evaluation and ``bench`` all end here.

        ``filter_classes=False`` skips the ``classes`` filter (tiling applies it once, after merging the tiles).
        """
        input_size = tuple(batch.shape[-2:])
        regions = picture_regions(input_size, scales, sizes)
        with torch_threads(self.host_threads):
            if self.flip_tta:
                dets = self._flip_merged(batch, regions)
            else:
                cls, box = self.network(batch)
                dets = self.detections(cls, box, input_size, regions)
            results = []
            for i, det in enumerate(dets):
                boxes = det["boxes"]
                if scales is not None:
                    boxes = to_original_pixels(boxes, scales[i], None if sizes is None else sizes[i])
                results.append(self.result(boxes, det["scores"], det["labels"], filter_classes))
            return results

    def _flip_merged(
        self, batch: torch.Tensor, regions: list[tuple[float, float, float, float]] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Detections (input pixels) of ``batch`` and of its mirror image, mapped back and merged per image; in the
        mirror image a picture of ``regions`` lies at the other side of the input."""
        n, width = len(batch), batch.shape[-1]
        cls, box = self.network(torch.cat([batch, batch.flip(-1)]))
        if regions is not None:
            regions = regions + [(width - x2, y1, width - x1, y2) for x1, y1, x2, y2 in regions]
        dets = self.detections(cls, box, tuple(batch.shape[-2:]), regions)
        merged = []
        for plain, mirrored in zip(dets[:n], dets[n:]):
            unflipped = mirrored["boxes"].clone()
            unflipped[:, [0, 2]] = width - mirrored["boxes"][:, [2, 0]]  # x1, x2 = W - x2', W - x1'
            boxes = torch.cat([plain["boxes"], unflipped]).cpu()
            scores = torch.cat([plain["scores"], mirrored["scores"]]).cpu()
            labels = torch.cat([plain["labels"], mirrored["labels"]]).cpu()
            sources = torch.cat([torch.zeros(len(plain["boxes"])), torch.ones(len(mirrored["boxes"]))]).long()
            boxes, scores, labels = merge_detections(
                boxes, scores, labels, sources, torch.zeros(len(boxes), dtype=torch.bool), nms=self.nms,
                iou_threshold=self.iou_threshold, max_det=self.max_det, class_agnostic=self.class_agnostic,
            )  # fmt: skip
            merged.append({"boxes": boxes.to(batch.device), "scores": scores.to(batch.device),
                           "labels": labels.to(batch.device)})  # fmt: skip
        return merged

    def result(
        self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, filter_classes: bool = True
    ) -> dict[str, Any]:
        """One image's result dict (tensors on the CPU, class names added), after the ``classes`` filter."""
        if filter_classes and self.classes is not None:
            keep = torch.isin(labels, torch.tensor(self.classes, device=labels.device))
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return {
            "boxes": boxes.cpu(), "scores": scores.cpu(), "labels": labels.cpu(),
            "label_names": [self.class_names[int(k)] for k in labels],
        }  # fmt: skip

    def __call__(self, images: ImageInput | Sequence[ImageInput] | torch.Tensor) -> list[dict[str, Any]]:
        """One dict per image: ``boxes`` (x1, y1, x2, y2, original pixels), ``scores``, ``labels``, ``label_names``.

        Accepts a file path, PIL image or HxWx3 uint8 array, a list of those, or a float RGB tensor ``[B, 3, H, W]``
        (or ``[3, H, W]``) with values in [0, 1] as torchvision's detectors take; each image is resized and
        normalised here, and boxes come back in the pixels of the image as given (a file's full-resolution pixels,
        although a large JPEG is decoded at a reduced scale: :meth:`decode`).
        """
        images = as_image_list(images)
        if not images:
            return []
        if self.tile:  # one image at a time, its tiles batched
            return [detect_tiled(self, _as_rgb_array(image)) for image in images]
        batch, scales, sizes = self.preprocess(images)
        return self.predict_tensor(batch, scales, sizes)

    def stream(
        self,
        source: str | int | os.PathLike,
        batch_size: int | None = None,
        vid_stride: int = 1,
        max_frames: int | None = None,
        parallel_frames: int | None = None,
    ) -> Iterator[Any]:
        """Detections frame by frame for a video file, camera (``0``, ``/dev/video0``) or stream URL (needs PyAV).

        Yields ``efficientdet.video.FrameResult`` items (``index``, ``time`` in seconds, ``image`` HxWx3 uint8,
        ``detections`` as :meth:`__call__` gives for that frame); frames are decoded ahead in a thread and run
        ``batch_size`` at a time and ``parallel_frames`` batches at once (defaults: the detector's), in order,
        never the whole video in memory. A damaged file raises ``VideoError`` after its last good frame. See
        :mod:`efficientdet.video`.
        """
        from .video import VideoSource, stream

        if isinstance(source, bool) or not isinstance(source, (str, int, os.PathLike, VideoSource)):
            raise TypeError("stream takes one source (a video file, a camera index or device, a stream URL), not "
                            f"{type(source).__name__}; call it once per source")  # fmt: skip
        return stream(self, source, batch_size=batch_size, vid_stride=vid_stride, max_frames=max_frames,
                      parallel_frames=parallel_frames)  # fmt: skip
