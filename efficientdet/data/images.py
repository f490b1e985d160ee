"""Image loading that turns any file PIL can read into the HxWx3 uint8 RGB array the model is trained on.

Datasets in the wild mix grayscale, palette, CMYK, 16-bit and rotated-by-EXIF photos; every one of them must come out
as upright 8-bit RGB, and a broken file must fail with a message that names it instead of a bare PIL traceback.

Datasets in the wild also hold camera photos of 12 megapixels and more, which training shrinks to a few hundred
pixels every epoch. Decoding such a JPEG in full costs ~110 ms on a 2-core CPU, more than the training step spends
on the image (frozen Lite0 at 448 px, bf16: ~80 ms). :func:`decode_image` with ``fit`` asks libjpeg for its scaled
decoding instead (PIL's ``draft``: a smaller inverse DCT per 8x8 block gives the picture at 1/2, 1/4 or 1/8 of its
resolution), at the smallest scale still at least as large as what the caller shrinks the picture to: the same
photo for a 672 px training crop in ~15 ms.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# the EXIF tag that says how the camera was held; values 5..8 rotate the picture by 90 degrees, swapping w and h
_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# modes whose pixels are wider than 8 bits and need scaling, not clipping, to reach 0..255
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_WIDE_MODES = frozenset({"I", "F"})
# everything PIL can raise for a missing, foreign, truncated or corrupt file
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


class ImageReadError(Exception):
    """An image file that cannot be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class DecodedImage:
    """What :func:`decode_image` returns: the upright pixels and how they relate to the file's full picture."""

    pixels: np.ndarray  # [H, W, 3] uint8 RGB, upright
    orientation: int  # the EXIF orientation (1..8) applied to make the picture upright
    full_size: tuple[int, int]  # (width, height) of the upright picture at full resolution
    # the pixels are the picture at 1/reduction of its resolution (1: full): pixel i of a row covers full-resolution
    # pixels reduction*i .. reduction*(i+1), the last one of a row or column possibly only part of such a block
    reduction: int = 1


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` into an upright ``[H, W, 3]`` uint8 RGB array.

    The pixels are fully decoded here (``load()``), so a truncated or corrupt file fails now, as an
    ``ImageReadError`` naming it, rather than later inside a data-loader worker.
    """
    return load_image_oriented(path)[0]


def load_image_oriented(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """:func:`load_image`, plus the EXIF orientation (1..8) that was applied to make the picture upright.

    Datasets need the orientation to place annotations drawn on the stored (unturned) pixels
    (:mod:`efficientdet.data.frames`).
    """
    decoded = decode_image(path)
    return decoded.pixels, decoded.orientation


def decode_image(path: str | os.PathLike, fit: tuple[int, int] | None = None) -> DecodedImage:
    """Decode ``path`` upright (see :func:`load_image`); with ``fit`` (H, W), a JPEG larger than twice that is
    decoded at a reduced scale.

    ``fit``: the caller will shrink the upright picture, aspect kept, to fit in ``fit``; the decoded pixels stay at
    least that large on both sides (so that shrinking them is still a shrink), at 1/2, 1/4 or 1/8 of the full
    resolution (see the module docstring). Other formats, and JPEGs already within twice the fit, decode in full.
    """
    try:
        with Image.open(path) as img:
            stored_w, stored_h = img.size
            reduction = _reduce_jpeg_decoding(img, fit) if fit is not None and img.format == "JPEG" else 1
            img.load()
            orientation = img.getexif().get(_ORIENTATION_TAG, 1)
            orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
            # exif_transpose copies the image even when there is nothing to turn: skip it for upright files
            # (a 10000x10000 photo would otherwise hold one more full copy)
            upright = ImageOps.exif_transpose(img) if orientation != 1 else img
            full = (stored_h, stored_w) if orientation in _TRANSPOSING_ORIENTATIONS else (stored_w, stored_h)
            return DecodedImage(_to_rgb_array(upright), orientation, full, reduction)
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from exc


def full_picture(decoded: DecodedImage, path: str | os.PathLike) -> np.ndarray:
    """The picture of ``path`` at full resolution: ``decoded``'s own pixels (what :func:`decode_image` returned for
    it) where they are, else the file decoded again in full (to draw or crop on after a reduced decoding)."""
    return decoded.pixels if decoded.reduction == 1 else decode_image(path).pixels


def _reduce_jpeg_decoding(img: Image.Image, fit: tuple[int, int]) -> int:
    """Set up ``img`` (an opened, not yet loaded JPEG) to decode at the smallest of libjpeg's scales whose result
    still covers ``fit`` (H, W, upright) once shrunk to fit in it; the reduction factor (1: full resolution)."""
    stored_w, stored_h = img.size
    turned = _header_orientation(img) in _TRANSPOSING_ORIENTATIONS
    upright_w, upright_h = (stored_h, stored_w) if turned else (stored_w, stored_h)
    scale = min(fit[0] / upright_h, fit[1] / upright_w)
    if scale * 2 > 1:  # no scale below full resolution is large enough
        return 1
    need_w, need_h = max(1, math.ceil(upright_w * scale)), max(1, math.ceil(upright_h * scale))
    # PIL's JPEG draft picks the largest of 8, 4, 2, 1 that keeps both sides at least this large
    drafted = img.draft(img.mode, (need_h, need_w) if turned else (need_w, need_h))
    if drafted is None:  # a file PIL cannot decode at a reduced scale
        return 1
    return max(1, round(stored_w / drafted[1][2]))  # the draft's box: the full picture in reduced pixels


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of the upright image, read from the header only (no pixel decoding).

    Readers that need the size of thousands of images (YOLO labels are normalised) stay fast this way; the size
    agrees with the array ``load_image`` returns because the same EXIF orientation is honoured.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            if _header_orientation(img) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return width, height
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from exc


def _header_orientation(img: Image.Image) -> int:
    """The EXIF orientation still to be applied to ``img.size``, without decoding pixels.

    ``PngImageFile.getexif()`` decodes the whole image to look for an eXIf chunk stored after the pixel data; for
    PNG only the chunks before the pixels (the usual place) are consulted, everything else uses ``getexif()``.
    Recent Pillow orients TIFFs itself (``size`` is already swapped at open and the pixels are rotated on load),
    so a TIFF whose size differs from its stored ImageWidth/ImageLength needs nothing more.
    """
    if img.format == "TIFF" and img.size != (img.tag_v2.get(256), img.tag_v2.get(257)):
        return 1
    if img.format == "PNG":
        exif = Image.Exif()
        raw = img.info.get("exif")
        if raw:
            exif.load(raw)
    else:
        exif = img.getexif()
    orientation = exif.get(_ORIENTATION_TAG, 1)
    return orientation if isinstance(orientation, int) else 1


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to 8-bit RGB, scaling wide (16-bit / int / float) grayscale by its bit depth."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in _WIDE_MODES:
        gray = _wide_gray_to_uint8(np.asarray(img), img.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        # PIL wants palette transparency resolved through RGBA; the alpha is then dropped like any other
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def _wide_gray_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Map wide grayscale to 0..255: 16-bit modes divide by 257 (65535 -> 255, 257*k -> k).

    Modes ``I`` (int32) and ``F`` (float) do not record a bit depth: values above 255 can only come from a 16-bit
    source (PNG/TIFF scanners, depth maps), so they are scaled like 16-bit; otherwise the values already are 8-bit.
    """
    values = pixels.astype(np.float64)
    if mode in _SIXTEEN_BIT_MODES or (values.size and np.nanmax(values) > 255):
        values = values / 257.0
    values = np.nan_to_num(values, nan=0.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
