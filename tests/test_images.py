"""Image loading: every PIL mode becomes upright HxWx3 uint8 RGB, and broken files fail naming the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.data.images import ImageReadError, decode_image, image_size, load_image


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _mode_and_info(path: Path) -> tuple[str, dict]:
    """What the file on disk really holds, so each test is known to exercise the mode it names."""
    with Image.open(path) as img:
        return img.mode, dict(img.info)


def _gradient(width: int = 6, height: int = 4) -> np.ndarray:
    return (np.arange(width * height, dtype=np.uint8).reshape(height, width) * 10).astype(np.uint8)


@pytest.mark.parametrize(
    "mode,suffix",
    [("L", ".png"), ("LA", ".png"), ("P", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("1", ".png"), ("RGB", ".png")],
)
def test_every_mode_loads_as_hxwx3_uint8(tmp_path, mode, suffix):
    source = Image.fromarray(np.stack([_gradient()] * 3, axis=2), "RGB")
    path = _save(source.convert(mode), tmp_path / f"img{suffix}")
    assert _mode_and_info(path)[0] == mode
    pixels = load_image(path)
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    assert image_size(path) == (6, 4)


def test_grayscale_values_are_replicated_into_three_channels(tmp_path):
    gray = _gradient()
    pixels = load_image(_save(Image.fromarray(gray, "L"), tmp_path / "gray.png"))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], gray)


def test_rgba_drops_alpha_keeping_colour(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    pixels = load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(pixels[..., 0], 200)
    np.testing.assert_array_equal(pixels[..., 1:], 0)


def test_palette_with_transparency_uses_its_palette_colours(tmp_path):
    img = Image.new("P", (3, 2), 0)
    img.putpalette([10, 20, 30, 250, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 1), 1)
    path = _save(img, tmp_path / "pal.png", transparency=0)
    mode, info = _mode_and_info(path)
    assert mode == "P" and "transparency" in info
    pixels = load_image(path)
    assert pixels.shape == (2, 3, 3)
    assert tuple(pixels[1, 1]) == (250, 0, 0)
    assert tuple(pixels[0, 0]) == (10, 20, 30)  # transparent pixels keep their colour (alpha is just dropped)


def test_sixteen_bit_grayscale_is_scaled_by_its_bit_depth(tmp_path):
    values = np.array([[65535, 257 * 100], [0, 257]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert _mode_and_info(path)[0].startswith("I")  # I;16 (or I on older Pillow): a 16-bit PNG
    pixels = load_image(path)
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], [[255, 100], [0, 1]])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_mode_i_above_255_is_treated_as_sixteen_bit_and_small_values_as_eight_bit(tmp_path):
    wide = _save(Image.fromarray(np.array([[65535, 25700]], np.int32), "I"), tmp_path / "wide.tif")
    narrow = _save(Image.fromarray(np.array([[200, 7]], np.int32), "I"), tmp_path / "narrow.tif")
    np.testing.assert_array_equal(load_image(wide)[..., 0], [[255, 100]])
    np.testing.assert_array_equal(load_image(narrow)[..., 0], [[200, 7]])


def test_exif_orientation_rotates_pixels_and_header_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored 40x20 picture is shown 20 wide, 40 tall
    path = _save(Image.new("RGB", (40, 20), (90, 90, 90)), tmp_path / "rotated.jpg", exif=exif)
    with Image.open(path) as img:
        assert img.size == (40, 20)
    assert load_image(path).shape == (40, 20, 3)
    assert image_size(path) == (20, 40)


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_header_size_agrees_with_loaded_pixels_for_rotated_files(tmp_path, suffix):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW: the stored 30x10 picture is 10 wide, 30 tall
    path = _save(Image.new("RGB", (30, 10)), tmp_path / f"rotated{suffix}", exif=exif)
    height, width, _ = load_image(path).shape
    assert (width, height) == (10, 30)
    assert image_size(path) == (width, height)


def test_truncated_jpeg_fails_naming_the_file(tmp_path):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        load_image(path)


def test_non_image_fails_naming_the_file_in_both_functions(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: cannot read image"):
        load_image(path)
    with pytest.raises(ImageReadError, match=r"notes\.jpg"):
        image_size(path)


def test_missing_file_is_an_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="absent.png"):
        load_image(tmp_path / "absent.png")


@pytest.mark.parametrize(
    "fit,reduction",
    [(None, 1), ((1100, 1100), 1), ((1000, 1000), 2), ((400, 400), 4), ((120, 120), 8), ((10, 10), 8)],
)
def test_a_large_jpeg_decodes_at_the_smallest_scale_that_still_covers_the_fit(tmp_path, fit, reduction):
    """2000x1000 shrunk to fit 400x400 becomes 400x200: libjpeg's 1/4 scale (500x250) is the smallest that still
    covers it (1/8 would be 250x125). A fit over half the picture's size leaves it at full resolution."""
    path = _save(Image.new("RGB", (2000, 1000), (30, 60, 90)), tmp_path / "big.jpg", quality=90)
    decoded = decode_image(path, fit)
    assert decoded.reduction == reduction
    assert decoded.full_size == (2000, 1000)
    assert decoded.pixels.shape == (1000 // reduction, 2000 // reduction, 3)
    if fit is not None:
        scale = min(fit[0] / 1000, fit[1] / 2000)
        assert decoded.pixels.shape[0] >= 1000 * scale and decoded.pixels.shape[1] >= 2000 * scale
    assert np.abs(decoded.pixels.astype(int) - [30, 60, 90]).max() <= 2


def test_reduced_decoding_keeps_partial_edge_blocks_and_skips_other_formats(tmp_path):
    """2001 px do not divide by 4: the last reduced pixel covers one full-resolution column (ceil(2001 / 4) =
    501). A PNG has no scaled decoding and comes back in full."""
    path = _save(Image.new("RGB", (2001, 1003)), tmp_path / "odd.jpg")
    decoded = decode_image(path, (250, 250))
    assert (decoded.reduction, decoded.pixels.shape[:2]) == (4, (251, 501))
    png = decode_image(_save(Image.new("RGB", (2000, 1000)), tmp_path / "big.png"), (250, 250))
    assert (png.reduction, png.pixels.shape[:2]) == (1, (1000, 2000))


def test_reduced_decoding_of_an_exif_turned_photo_covers_the_upright_fit(tmp_path):
    """Stored 2000x1000 with orientation 6, upright 1000x2000 (w x h). Fitted into 400x800 (H x W) it becomes
    200x400 upright, which the stored picture covers at 1/4 (500x250 stored, 250x500 upright). Taken as unturned
    (2000x1000 into 400x800: 800x400) it would allow only 1/2."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.new("RGB", (2000, 1000)), tmp_path / "turned.jpg", exif=exif.tobytes())
    decoded = decode_image(path, (400, 800))
    assert (decoded.orientation, decoded.reduction, decoded.full_size) == (6, 4, (1000, 2000))
    assert decoded.pixels.shape[:2] == (500, 250)
