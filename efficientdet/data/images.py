"""Image loading that turns any file PIL can read into the HxWx3 uint8 RGB array the model is trained on.

Datasets in the wild mix grayscale, palette, CMYK, 16-bit and rotated-by-EXIF photos; every one of them must come out
as upright 8-bit RGB, and a broken file must fail with a message that names it instead of a bare PIL traceback.
"""

from __future__ import annotations

import os

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
    try:
        with Image.open(path) as img:
            img.load()
            orientation = img.getexif().get(_ORIENTATION_TAG, 1)
            orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
            # exif_transpose copies the image even when there is nothing to turn: skip it for upright files
            # (a 10000x10000 photo would otherwise hold one more full copy)
            upright = ImageOps.exif_transpose(img) if orientation != 1 else img
            return _to_rgb_array(upright), orientation
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from exc


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
