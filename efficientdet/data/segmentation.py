"""Segmentation data: image / label-mask pairs, their checks, the joint augmentation and the batching.

Two layouts are read. A pair of folders whose files are matched by stem (CamVid as prepared for SegNet:
``train/`` + ``trainannot/``), and Pascal VOC's ``JPEGImages/`` + ``SegmentationClass/`` palette PNGs listed by
``ImageSets/Segmentation/<split>.txt``. A mask holds one class id per pixel (PNG mode L or P, or 16-bit); the
dataset's ignore index (VOC: 255 on object borders, CamVid: 11 = void) becomes ``IGNORE`` (-1) inside the library,
and so does the padding that augmentation adds, so that loss and metrics need only one rule.

Everything that would silently corrupt training is an error that names the file: an image without a mask or a
mask without an image, a mask whose size differs from its image, a label >= num_classes that is not the ignore
index. ``check_masks`` reads every mask once before training starts, so these surface at once and not in a
data-loader worker halfway through an epoch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import ImageReadError, decode_image, image_size
from .readers import IMAGE_EXTENSIONS, DatasetError, _images_by_stem, _read_class_file, _read_voc_split
from .transforms import normalise, normalise_padded, rescale_image, resize_image, scaled_size, size_hw

LOG = logging.getLogger(__name__)

IGNORE = -1  # label of pixels that count for nothing: the dataset's ignore index and augmentation padding
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
DEFAULT_SCALE_RANGE = (0.5, 2.0)  # the usual segmentation jitter (DeepLab and most since), of the evaluation size
VOC_IGNORE_INDEX = 255  # Pascal VOC marks object borders and difficult regions with 255
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
_CLASS_FILES = ("classes.txt", "labels.txt")


@dataclass(frozen=True)
class SegPair:
    """One training example: an image file and its label mask."""

    image: str
    mask: str

    @property
    def stem(self) -> str:
        return Path(self.image).stem


@dataclass
class SegmentationData:
    """The pairs of one split plus what the folder says about the classes (``None`` when it says nothing)."""

    pairs: list[SegPair]
    source: str
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.pairs)


# --------------------------------------------------------------------------------------------------- reading splits


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: mask folder not found")
    found: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(MASK_EXTENSIONS)}
    for entry in sorted(folder.iterdir()):
        suffix = entry.suffix.lower()
        if suffix in rank and entry.is_file():
            current = found.get(entry.stem)
            if current is None or rank[suffix] < rank[current.suffix.lower()]:
                found[entry.stem] = entry
    return found


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" ... ({len(paths)} in all)" if len(paths) > limit else "")


def pair_by_stem(image_dir: str | os.PathLike, mask_dir: str | os.PathLike) -> SegmentationData:
    """Pair ``image_dir/<stem>.<image ext>`` with ``mask_dir/<stem>.png`` (or .bmp/.tif).

    Every image needs a mask and every mask an image: an unpaired file is far more often a copying mistake than
    intent, and training on the rest would hide it.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    images = _images_by_stem(image_dir)
    masks = _masks_by_stem(mask_dir)
    if image_dir.resolve() == mask_dir.resolve():
        raise DatasetError(f"{image_dir}: images and masks must be in different folders")
    no_mask = [images[s] for s in sorted(set(images) - set(masks))]
    no_image = [masks[s] for s in sorted(set(masks) - set(images))]
    if no_mask:
        lossy = [p for p in mask_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.stem in images]
        hint = (f" ({mask_dir.name} holds JPEG files of those names: masks must be lossless, PNG, BMP or TIFF, as "
                "JPEG's compression changes the ids along every edge)" if lossy else "")  # fmt: skip
        raise DatasetError(f"{mask_dir}: no mask for image(s) {_names(no_mask)} of {image_dir}{hint}")
    if no_image:
        raise DatasetError(f"{image_dir}: no image for mask(s) {_names(no_image)} of {mask_dir} (looked for "
                           f"{', '.join(IMAGE_EXTENSIONS)})")  # fmt: skip
    if not images:
        raise DatasetError(f"{image_dir}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    pairs = [SegPair(os.path.abspath(images[s]), os.path.abspath(masks[s])) for s in sorted(images)]
    class_file = next(
        (d / n for d in (image_dir.parent, mask_dir.parent, mask_dir) for n in _CLASS_FILES if (d / n).is_file()), None
    )
    names = _read_class_file(class_file) if class_file is not None else None
    return SegmentationData(pairs, f"{image_dir} + {mask_dir}", names)


def read_voc_segmentation(root: str | os.PathLike, split: str) -> SegmentationData:
    """Pascal VOC: ids from ``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/<id>.jpg``,
    ``SegmentationClass/<id>.png`` (palette PNG: the palette index is the class id, 255 = ignore)."""
    root = Path(root)
    ids = _read_voc_split(root / "ImageSets" / "Segmentation" / f"{split}.txt")
    images = _images_by_stem(root / "JPEGImages")
    masks = _masks_by_stem(root / "SegmentationClass")
    no_image = [i for i in ids if i not in images]
    no_mask = [i for i in ids if i not in masks]
    if no_image:
        raise DatasetError(f"{root / 'JPEGImages'}: no image for id(s) {', '.join(no_image[:5])} of split {split!r}")
    if no_mask:
        raise DatasetError(
            f"{root / 'SegmentationClass'}: no mask for id(s) {', '.join(no_mask[:5])} of split {split!r}"
        )
    if not ids:
        raise DatasetError(f"{root}: split {split!r} lists no images")
    pairs = [SegPair(os.path.abspath(images[i]), os.path.abspath(masks[i])) for i in ids]
    class_file = next((root / n for n in _CLASS_FILES if (root / n).is_file()), None)
    names = _read_class_file(class_file) if class_file is not None else list(VOC_CLASSES)
    return SegmentationData(pairs, f"{root} ({split})", names)


def is_voc_segmentation(root: str | os.PathLike) -> bool:
    root = Path(root)
    return (root / "SegmentationClass").is_dir() and (root / "ImageSets" / "Segmentation").is_dir()


# The mask folder beside each split's image folder in the SegNet layout (CamVid: train/ and trainannot/)
ANNOTATION_SUFFIX = "annot"


def read_segmentation_split(
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    voc_root: str | os.PathLike | None = None,
    split: str | None = None,
) -> SegmentationData:
    """Either a folder pair (``images`` + ``masks``), or a root and a split name: a VOC root, or a folder holding
    ``<split>/`` and ``<split>annot/`` (the SegNet layout)."""
    if images is not None or masks is not None:
        if masks is None:
            raise DatasetError(f"{images}: an image folder without its mask folder")
        if images is None:
            raise DatasetError(f"{masks}: a mask folder without its image folder")
        return pair_by_stem(images, masks)
    if voc_root is None or split is None:
        raise DatasetError("no segmentation data: give image + mask folders, or a VOC root and a split")
    if is_voc_segmentation(voc_root):
        return read_voc_segmentation(voc_root, split)
    images, masks = Path(voc_root) / split, Path(voc_root) / f"{split}{ANNOTATION_SUFFIX}"
    if images.is_dir() and masks.is_dir():  # CamVid as SegNet prepared it: train/ + trainannot/ ...
        return pair_by_stem(images, masks)
    raise DatasetError(f"{voc_root}: neither a VOC segmentation root (SegmentationClass/ and ImageSets/Segmentation/) "
                       f"nor a folder of {split}/ and {split}{ANNOTATION_SUFFIX}/ (images and masks)")  # fmt: skip


# --------------------------------------------------------------------------------------------------- masks


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Class ids ``[H, W]`` (int64) of a label image: mode L / P (the palette index is the id) / 16-bit / 1-bit.

    A colour-coded RGB mask (CamVid's original release, Cityscapes' colour PNGs) is refused: its colours must be
    mapped to ids first, and guessing the mapping would train on wrong labels. An RGB file whose three channels are
    equal is a grayscale mask saved as RGB and is read as such.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"):
                return np.asarray(img).astype(np.int64)
            if mode == "LA":
                return np.asarray(img)[..., 0].astype(np.int64)
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(img)[..., :3]
                if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                    return rgb[..., 0].astype(np.int64)
            raise DatasetError(
                f"{path}: mask is a {mode} image with colour-coded labels; expected one class id per pixel "
                f"(a PNG of mode L or P, e.g. VOC's SegmentationClass or CamVid's trainannot)"
            )
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read mask ({e})") from e


def mask_ids(data: SegmentationData) -> list[int]:
    """The distinct ids of all of ``data``'s masks, ascending (one read of each mask)."""
    found: set[int] = set()
    for pair in data.pairs:
        found.update(np.unique(load_mask(pair.mask)).tolist())
    return sorted(found)


def to_targets(mask: np.ndarray, num_classes: int, ignore_index: int | None, path: str = "mask") -> np.ndarray:
    """Raw ids -> training targets (ignore index -> IGNORE); any other id outside 0..num_classes-1 is an error."""
    out = mask.astype(np.int64, copy=True)
    ignored = out == ignore_index if ignore_index is not None else np.zeros(out.shape, bool)
    bad = (~ignored) & ((out < 0) | (out >= num_classes))
    if bad.any():
        values = np.unique(out[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        raise DatasetError(
            f"{path}: label value(s) {shown} outside 0..{num_classes - 1} (num_classes={num_classes}) and not the "
            f"ignore index ({ignore_index}); set --num-classes / --ignore-index to match the dataset"
        )
    out[ignored] = IGNORE
    return out


def check_masks(data: SegmentationData, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """Read every mask once: sizes must match the images, labels must be valid. Returns pixel counts per class."""
    return mask_statistics(data, num_classes, ignore_index)[0]


def mask_statistics(
    data: SegmentationData, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``check_masks``, also returning per class the valid pixels of the masks in which that class occurs.

    The second array is the denominator of SegNet's median frequency balancing (``class_weights``): a class's
    frequency is its pixels over the pixels of the images it appears in, not over the whole dataset.
    """
    counts = np.zeros(num_classes, np.int64)
    present_pixels = np.zeros(num_classes, np.int64)
    for pair in data.pairs:
        mask = load_mask(pair.mask)
        try:
            w, h = image_size(pair.image)
        except ImageReadError as e:
            raise DatasetError(str(e)) from e
        if mask.shape != (h, w):
            raise DatasetError(
                f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {pair.image} is {w}x{h}"
            )
        targets = to_targets(mask, num_classes, ignore_index, pair.mask)
        valid = targets[targets >= 0].ravel()
        per_class = np.bincount(valid, minlength=num_classes)[:num_classes]
        counts += per_class
        present_pixels[per_class > 0] += valid.size
    return counts, present_pixels


# --------------------------------------------------------------------------------------------------- transforms


def resize_nearest(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize by index arithmetic (pixel centres), exact for any integer label type.

    Labels must never be interpolated: a blend of class 3 and class 5 is not class 4.
    """
    h, w = mask.shape
    nh, nw = hw
    if (nh, nw) == (h, w):
        return mask
    rows = np.minimum(((np.arange(nh) + 0.5) * (h / nh)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * (w / nw)).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def train_transform(
    image: np.ndarray,
    targets: np.ndarray,
    img_size: int,
    crop_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    rng: np.random.Generator,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    hflip: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, scale-jitter and random-crop an image and its targets together.

    At factor 1 the longer side becomes ``img_size`` (the evaluation scale); the factor is drawn from
    ``scale_range``. The targets may cover the same picture at a higher resolution (the image decoded at a reduced
    scale): both are resized to the same output size. The crop is ``crop_size``; where the scaled image is smaller
    it is padded (image with the mean colour, targets with IGNORE, so padding is never learnt as a class).
    """
    ch, cw = size_hw(crop_size)
    if rng.random() < hflip:
        image, targets = image[:, ::-1], targets[:, ::-1]
    h, w = image.shape[:2]
    scale = img_size / max(h, w) * rng.uniform(*scale_range)
    hw = scaled_size((h, w), scale)
    image = resize_image(np.ascontiguousarray(image), hw)
    targets = resize_nearest(np.ascontiguousarray(targets), hw)
    off_y = int(rng.integers(0, hw[0] - ch + 1)) if hw[0] > ch else 0
    off_x = int(rng.integers(0, hw[1] - cw + 1)) if hw[1] > cw else 0
    image = image[off_y : off_y + ch, off_x : off_x + cw]
    targets = targets[off_y : off_y + ch, off_x : off_x + cw]
    out_image = normalise_padded(image, (ch, cw), tuple(mean), tuple(std))
    out_targets = torch.full((ch, cw), IGNORE, dtype=torch.int64)
    vh, vw = targets.shape
    out_targets[:vh, :vw] = torch.from_numpy(np.ascontiguousarray(targets))
    return out_image, out_targets


def eval_resize(image: np.ndarray, img_size: int | None) -> np.ndarray:
    """The longer side to ``img_size`` (aspect kept); ``None`` keeps the image as it is."""
    if img_size is None:
        return image
    return rescale_image(image, img_size / max(image.shape[:2]))


# --------------------------------------------------------------------------------------------------- dataset


@dataclass
class SegBatch:
    images: torch.Tensor  # [B, 3, H, W], padded bottom/right to the largest image of the batch
    targets: torch.Tensor  # [B, H', W'] int64 with IGNORE; training: the crop; evaluation: original resolution
    sizes: list[tuple[int, int]]  # per image: (h, w) of the network input before padding
    target_sizes: list[tuple[int, int]]  # per image: (h, w) of the original mask
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)


class SegmentationDataset(Dataset):
    """Augmented crops (``train=True``) or whole images resized to ``img_size`` with their original-size masks.

    Augmentation randomness comes from ``(seed, epoch, index)`` alone, as in detection, so a sample is the same in
    any worker and after ``--resume``.

    As in detection (:class:`efficientdet.data.dataset.DetectionDataset`), a JPEG more than twice as large as the
    longest side a sample is scaled to (``img_size``, in training times the top of ``scale_range``) is decoded at
    1/2, 1/4 or 1/8 of its resolution (``reduced_decoding``); the mask stays at full resolution and is resized with
    the picture (training) or scored at its own size (evaluation), as :class:`~efficientdet.inference.Segmenter`
    does with a file.
    """

    def __init__(
        self,
        pairs: list[SegPair],
        num_classes: int,
        ignore_index: int | None,
        img_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        crop_size: int | Sequence[int] | None = None,
        scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
        hflip: float = 0.5,
        seed: int = 0,
        reduced_decoding: bool = True,
    ) -> None:
        if train and img_size is None:
            raise ValueError("training needs an img_size")
        self.pairs = pairs
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.img_size = img_size
        self.crop_size = crop_size if crop_size is not None else img_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.train = train
        self.scale_range, self.hflip = tuple(scale_range), hflip
        self.seed, self.epoch = seed, 0
        # the longest side a sample is scaled to: what a reduced decoding must still cover (None: always in full)
        longest = None if img_size is None else math.ceil(int(img_size) * (self.scale_range[1] if train else 1.0))
        self.decode_fit = (longest, longest) if reduced_decoding and longest is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        try:
            decoded = decode_image(pair.image, self.decode_fit)
        except ImageReadError as e:
            raise DatasetError(str(e)) from e
        image = decoded.pixels  # the picture at 1/decoded.reduction of the mask's resolution
        mask = load_mask(pair.mask)
        width, height = decoded.full_size
        if mask.shape != (height, width):
            raise DatasetError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                               f"{pair.image} is {width}x{height}")  # fmt: skip
        targets = to_targets(mask, self.num_classes, self.ignore_index, pair.mask)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            img_size = int(self.img_size)  # type: ignore[arg-type]
            crop = self.crop_size if self.crop_size is not None else img_size
            x, t = train_transform(image, targets, img_size, crop, self.mean, self.std, rng, self.scale_range,
                                   self.hflip)  # fmt: skip
            return index, x, t
        resized = eval_resize(image, self.img_size)
        return index, normalise(resized, self.mean, self.std), torch.from_numpy(targets)


def collate(samples: list[tuple[int, torch.Tensor, torch.Tensor]]) -> SegBatch:
    """Stack, padding images (zeros = mean colour) and targets (IGNORE) bottom/right to the batch maximum."""
    h = max(s[1].shape[1] for s in samples)
    w = max(s[1].shape[2] for s in samples)
    th = max(s[2].shape[0] for s in samples)
    tw = max(s[2].shape[1] for s in samples)
    images = torch.zeros(len(samples), 3, h, w)
    targets = torch.full((len(samples), th, tw), IGNORE, dtype=torch.int64)
    for i, (_, x, t) in enumerate(samples):
        images[i, :, : x.shape[1], : x.shape[2]] = x
        targets[i, : t.shape[0], : t.shape[1]] = t
    return SegBatch(
        images,
        targets,
        [(s[1].shape[1], s[1].shape[2]) for s in samples],
        [(s[2].shape[0], s[2].shape[1]) for s in samples],
        [s[0] for s in samples],
    )


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def loader_kwargs(workers: int) -> dict:
    """One intra-op thread per worker process: the workers already run in parallel."""
    return {"num_workers": workers, "collate_fn": collate, "worker_init_fn": _worker_init if workers else None}
