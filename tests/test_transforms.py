from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import SHARED, require_shared
from PIL import Image

from efficientdet.data.images import load_image
from efficientdet.data.transforms import (
    Resized,
    color_jitter,
    erase_in_boxes,
    eval_transform,
    mix,
    mosaic,
    normalise,
    normalise_padded,
    resize_image,
    stack_images,
    train_transform,
)

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def marked_image(h=100, w=200, box=(20, 10, 60, 50)):
    """Black image with a white rectangle exactly where ``box`` (x1, y1, x2, y2) is."""
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img, np.array([box], np.float32)


def white_extent(t: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(t[0] > 127, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("scale", [0.37, 0.8, 1.0, 1.6])
def test_resize_image_is_pils_bilinear_filter_to_within_two_levels(scale):
    """torch's antialiased uint8 kernel stands in for PIL's BILINEAR (the filter the models were first trained
    with): on a real photo, shrunk (the support widens with the scale) and enlarged, every value is within 2 of
    PIL's and nearly all are equal."""
    image = load_image(require_shared(SHARED / "datasets" / "raccoon" / "JPEGImages" / "raccoon-1.jpg"))
    h, w = image.shape[:2]
    hw = (round(h * scale), round(w * scale))
    ours = resize_image(image, hw)
    pil = np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))
    assert ours.dtype == np.uint8 and ours.shape == (*hw, 3) and ours.flags.c_contiguous
    diff = np.abs(ours.astype(np.int16) - pil)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.15
    if scale == 1.0:
        assert ours is image  # nothing to do: the caller's array itself


def test_resize_image_takes_read_only_and_strided_arrays_and_leaves_them_alone():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    flipped = image[:, ::-1]  # a view with a negative stride, as a horizontal flip gives
    frozen = image.copy()
    frozen.flags.writeable = False  # as np.asarray(PIL image) gives
    before = image.copy()
    assert np.array_equal(resize_image(flipped, (20, 30)), resize_image(np.ascontiguousarray(flipped), (20, 30)))
    assert np.array_equal(resize_image(frozen, (20, 30)), resize_image(image, (20, 30)))
    assert np.array_equal(image, before)


def test_eval_transform_resizes_longer_side_and_pads_bottom_right():
    img, boxes = marked_image()
    out = eval_transform(img, 64, MEAN, STD, boxes, np.array([0]))
    assert out.image.shape == (3, 64, 64) and out.scale == pytest.approx(64 / 200)
    assert torch.all(out.image[:, 32:, :] == 0)  # padding below the 200x100 -> 64x32 image
    assert torch.allclose(out.boxes, torch.tensor([[20, 10, 60, 50]]) * 0.32)
    x1, y1, x2, y2 = white_extent(out.image)
    assert abs(x1 - 6.4) <= 1 and abs(x2 - 19.2) <= 1 and abs(y1 - 3.2) <= 1 and abs(y2 - 16) <= 1


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_boxes_follow_the_pixels(seed):
    img, boxes = marked_image()
    rng = np.random.default_rng(seed)
    out = train_transform(img, boxes, np.array([3]), np.array([False]), 96, MEAN, STD, rng, (0.5, 2.0), 0.5)
    assert out.image.shape == (3, 96, 96)
    if len(out.boxes) == 0:  # the crop missed the rectangle entirely
        assert not (out.image > 127).any()
        return
    assert out.labels.tolist() == [3]
    bx = out.boxes[0].tolist()
    assert 0 <= bx[0] < bx[2] <= 96 and 0 <= bx[1] < bx[3] <= 96
    x1, y1, x2, y2 = white_extent(out.image)
    assert max(abs(x1 - bx[0]), abs(y1 - bx[1]), abs(x2 - bx[2]), abs(y2 - bx[3])) <= 1.5


def test_horizontal_flip_mirrors_boxes():
    img, boxes = marked_image()
    always = np.random.default_rng(0)
    out = train_transform(img, boxes, np.array([0]), np.array([False]), 200, MEAN, STD, always, (1.0, 1.0), hflip=1.0)
    assert out.boxes[0].tolist() == pytest.approx([140, 10, 180, 50])
    assert white_extent(out.image) == (140, 10, 180, 50)


def test_jitter_range_is_respected_and_deterministic_per_seed():
    img, boxes = marked_image(400, 400, (0, 0, 400, 400))
    scales = []
    for seed in range(50):
        out = train_transform(img, boxes, np.array([0]), np.array([False]), 100, MEAN, STD,
                              np.random.default_rng(seed), (0.1, 2.0))  # fmt: skip
        scales.append(out.scale * 400 / 100)  # factor relative to the target size
    assert min(scales) >= 0.1 - 1e-6 and max(scales) <= 2.0 + 1e-6 and max(scales) - min(scales) > 1.0
    a = train_transform(img, boxes, np.array([0]), np.array([False]), 100, MEAN, STD, np.random.default_rng(7))
    b = train_transform(img, boxes, np.array([0]), np.array([False]), 100, MEAN, STD, np.random.default_rng(7))
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)


def test_boxes_cropped_to_slivers_are_dropped():
    img, boxes = marked_image(100, 100, (0, 0, 100, 100))
    boxes = np.array([[0, 0, 100, 100], [99.5, 0, 100, 100]], np.float32)  # second is half a pixel wide
    out = train_transform(img, boxes, np.array([0, 1]), np.array([False, False]), 100, MEAN, STD,
                          np.random.default_rng(0), (1.0, 1.0), hflip=0.0)  # fmt: skip
    assert out.labels.tolist() == [0]


def test_normalisation_uses_pixel_space_statistics():
    img = np.full((4, 4, 3), 127, np.uint8)
    out = eval_transform(img, 4, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
    assert torch.all(out.image == 0)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (80, 30), (1, 64)])
def test_normalise_padded_is_normalise_then_pad_bit_for_bit(shape):
    """The row-wise, in-place normalisation gives exactly what broadcasting then padding gives (ImageNet
    statistics, odd sizes, an image larger than the output along one side, a read-only array as Pillow returns)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image.flags.writeable = False
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    out = normalise_padded(image, (64, 48), mean, std)
    expected = torch.zeros(3, 64, 48)
    h, w = min(shape[0], 64), min(shape[1], 48)
    expected[:, :h, :w] = normalise(image, mean, std)[:, :h, :w]
    assert out.shape == (3, 64, 48) and torch.equal(out, expected)
    assert out.permute(1, 2, 0).is_contiguous()  # HWC memory


def test_stacked_batch_is_channels_last_with_the_same_values():
    rng = np.random.default_rng(1)
    images = [eval_transform(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), 64, MEAN, STD).image for _ in "ab"]
    batch = stack_images(images)
    assert batch.shape == (2, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack(images))


def test_a_batch_of_one_is_the_image_itself_channels_last():
    """One image: no copy (a view of its memory), still channels-last, and a C-contiguous NHWC array for the
    runtimes that read the memory in place."""
    rng = np.random.default_rng(2)
    image = eval_transform(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), 64, MEAN, STD).image
    batch = stack_images([image])
    assert batch.shape == (1, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    assert batch.data_ptr() == image.data_ptr() and torch.equal(batch[0], image)
    nhwc = batch.permute(0, 2, 3, 1).contiguous().numpy()
    assert nhwc.flags.c_contiguous and np.shares_memory(nhwc, image.numpy())


class _Fixed:
    """An rng whose uniform draws are given: (brightness, contrast, saturation) factors chosen by hand."""

    def __init__(self, factors):
        self.factors = np.array(factors, np.float64)

    def uniform(self, low, high, size):
        assert size == 3 and all(low <= f <= high for f in self.factors)
        return self.factors


def test_color_jitter_by_hand():
    gray = np.full((4, 4, 3), 100, np.uint8)
    assert (color_jitter(gray, 0.5, _Fixed([1.2, 1.0, 1.0])) == 120).all()  # brightness scales every channel
    assert (color_jitter(gray, 0.5, _Fixed([1.0, 0.5, 1.5])) == 100).all()  # flat gray: no contrast, no colour
    two = np.zeros((1, 2, 3), np.uint8)
    two[0, 1] = 200  # black and white pixels, mean luma 100: contrast 0.5 pulls both halfway to it
    assert color_jitter(two, 0.5, _Fixed([1.0, 0.5, 1.0])).tolist() == [[[50] * 3, [150] * 3]]
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 200  # luma 0.299 * 200 = 59.8; saturation 0 leaves the gray of that luma
    assert color_jitter(red, 1.0, _Fixed([1.0, 1.0, 0.0])).tolist() == [[[60, 60, 60]]]
    bright = np.full((2, 2, 3), 250, np.uint8)
    assert (color_jitter(bright, 0.5, _Fixed([1.5, 1.0, 1.0])) == 255).all()  # clipped, still uint8
    photo = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(color_jitter(photo, 0.0, np.random.default_rng(1)), photo)  # strength 0: identity


@pytest.mark.parametrize("seed", range(4))
def test_color_jitter_leaves_boxes_and_geometry_alone(seed):
    """Its draws come after the geometric ones: the same seed gives the same boxes, scale and crop with or without
    it, and every pixel of the jittered image is one increasing function of the same pixel without it (a gray
    picture: brightness and contrast are global, saturation leaves gray alone), so nothing moved."""
    img, boxes = marked_image(200, 200, (40, 30, 130, 120))
    args = (img, boxes, np.array([1]), np.array([False]), 96, MEAN, STD)
    scales = (1.5, 2.0)  # the scaled picture covers the whole 96 x 96 input: no padding, which is not jittered
    plain = train_transform(*args, np.random.default_rng(seed), scales, 0.5)
    jittered = train_transform(*args, np.random.default_rng(seed), scales, 0.5, color_strength=0.4)
    assert torch.equal(plain.boxes, jittered.boxes) and plain.offset == jittered.offset
    assert plain.scale == jittered.scale and not torch.equal(plain.image, jittered.image)
    before, after = plain.image[0].flatten(), jittered.image[0].flatten()
    values = torch.unique(before)
    images_of = [torch.unique(after[before == v]) for v in values]
    assert all(len(v) == 1 for v in images_of)  # a function of the pixel's own value
    assert torch.all(torch.diff(torch.cat(images_of)) >= 0)  # increasing: bright stays bright


class CentreAt:
    """A stand-in generator for :func:`mosaic` whose centre draw lands at ``where`` of its range (0: low, 1: high)."""

    def __init__(self, where):
        self.where = where

    def uniform(self, low, high):
        return low + self.where * (high - low)


def test_mosaic_places_each_image_in_its_quadrant_by_hand():
    parts = []
    for label, (h, w) in enumerate([(100, 100), (100, 100), (100, 100), (50, 200)]):
        img, boxes = marked_image(h, w, (20, 10, 60, 50))
        parts.append((img, boxes, np.array([label]), np.array([False])))
    out = mosaic(parts, 100, (0, 0, 0), CentreAt(0.5), min_visible=0.0)  # centre (100, 100) of a 200x200 canvas
    assert out.image.shape == (200, 200, 3) and out.labels.tolist() == [0, 1, 2, 3]
    # top-left, top-right, bottom-left as they are; the 50x200 image is halved to 25x100 at (100, 100)
    expected = [[20, 10, 60, 50], [120, 10, 160, 50], [20, 110, 60, 150], [110, 105, 130, 125]]
    assert np.allclose(out.boxes, expected)
    outside = np.ones((200, 200), bool)
    for x1, y1, x2, y2 in expected:
        assert (out.image[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] > 127).all()  # inside: white (edges resampled)
        outside[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = False
    assert (out.image[outside] <= 127).all()  # no white outside the boxes
    assert (out.image[125:, 100:] == 0).all()  # below the flat image: fill


def test_mosaic_cuts_boxes_at_the_canvas_edge_and_drops_those_mostly_gone():
    img, _ = marked_image(100, 100, (0, 0, 1, 1))
    boxes = np.array([[20, 10, 60, 50], [40, 40, 90, 90]], np.float32)
    parts = [(img, boxes, np.array([0, 1]), np.array([False, False]))]
    parts += [(np.zeros((0, 0, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, int), np.zeros(0, bool))] * 3
    # centre (50, 50): the top-left image starts at (-50, -50); its first box is wholly off the canvas
    kept = mosaic(parts, 100, (127, 127, 127), CentreAt(0.0), min_visible=0.5)
    assert kept.labels.tolist() == [1] and kept.boxes.tolist() == [[0, 0, 40, 40]]  # 64% of (-10, -10, 40, 40)
    assert mosaic(parts, 100, (127, 127, 127), CentreAt(0.0), min_visible=0.7).labels.tolist() == []
    assert (kept.image[60:, :] == 127).all() and (kept.image[:, 60:] == 127).all()  # empty quadrants: fill


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_then_crop_boxes_follow_the_pixels(seed):
    rng = np.random.default_rng(seed)
    parts = []
    for label in range(4):
        h, w = (int(v) for v in rng.integers(60, 200, size=2))
        x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        img, boxes = marked_image(h, w, (x1, y1, x1 + w // 3, y1 + h // 3))
        parts.append((img, boxes, np.array([label]), np.array([False])))
    tiled = mosaic(parts, 96, (0, 0, 0), rng)
    out = train_transform(tiled.image, tiled.boxes, tiled.labels, tiled.iscrowd, 96, MEAN, STD, rng, (1.0, 3.0))
    white = out.image[0] > 127
    covered = torch.zeros_like(white)
    for x1, y1, x2, y2 in out.boxes.tolist():
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
        inner = white[round(y1) + 1 : round(y2) - 1, round(x1) + 1 : round(x2) - 1]
        assert inner.numel() == 0 or inner.float().mean() > 0.9  # the box holds its white rectangle
        covered[max(0, int(y1) - 1) : int(y2) + 2, max(0, int(x1) - 1) : int(x2) + 2] = True
    assert not (white & ~covered).any()  # every white pixel lies in a box: none was lost


def test_train_transform_drops_boxes_mostly_cropped_away_when_asked():
    img, _ = marked_image(100, 100, (0, 0, 1, 1))
    boxes = np.array([[80, 0, 120, 40]], np.float32)  # half outside the image already: 50% visible
    args = (img, boxes, np.array([0]), np.array([False]), 100, MEAN, STD)
    assert len(train_transform(*args, np.random.default_rng(0), (1.0, 1.0), 0.0, min_visible=0.4).boxes) == 1
    assert len(train_transform(*args, np.random.default_rng(0), (1.0, 1.0), 0.0, min_visible=0.6).boxes) == 0


class MidRange:
    """A stand-in generator for :func:`erase_in_boxes`: every box is erased, every range drawn at its middle,
    every erased pixel 255."""

    def random(self):
        return 0.0

    def uniform(self, low, high):
        return low + 0.5 * (high - low)

    def integers(self, low, high, size, dtype):
        return np.full(size, 255, dtype)


def test_erase_in_boxes_by_hand():
    image = np.zeros((100, 100, 3), np.uint8)
    out = erase_in_boxes(image, np.array([[20, 10, 60, 50]], np.float32), 1.0, MidRange())
    # 21% of the 40 x 40 box (the middle of 2%-40%), square (the middle of log 0.3 .. log 1/0.3): 18.33 px a side,
    # centred in the box at (30.83, 20.83): whole pixels 31..48 across, 21..38 down
    assert (out[21:39, 31:49] == 255).all()
    assert out.sum() == 18 * 18 * 3 * 255
    assert not image.any()  # the input is not written to


@pytest.mark.parametrize("seed", range(4))
def test_erase_in_boxes_stays_inside_each_box_and_below_its_share(seed):
    rng = np.random.default_rng(seed)
    image = np.full((120, 160, 3), 7, np.uint8)
    boxes = np.array([[0, 0, 30, 90], [50.5, 20.2, 150.7, 40.9], [100, 60, 160, 120]], np.float32)
    out = erase_in_boxes(image, boxes, 1.0, rng)
    changed = (out != image).any(axis=2)
    inside = np.zeros_like(changed)
    for x1, y1, x2, y2 in boxes:
        box = np.zeros_like(changed)
        box[int(np.ceil(y1)) : int(y2), int(np.ceil(x1)) : int(x2)] = True
        share = (changed & box).sum() / ((x2 - x1) * (y2 - y1))
        assert 0 < share <= 0.4  # every box got a patch, none more than 40% of its area
        inside |= box
    assert not (changed & ~inside).any()  # nothing outside the boxes
    assert erase_in_boxes(image, boxes, 0.0, rng) is image  # probability 0: untouched


def test_train_transform_erasing_changes_only_pixels_inside_the_boxes():
    img, boxes = marked_image(96, 96, (20, 10, 60, 50))
    args = (img, boxes, np.array([0]), np.array([False]), 96, MEAN, STD)
    plain = train_transform(*args, np.random.default_rng(3), (1.0, 1.0), 0.5)
    erased = train_transform(*args, np.random.default_rng(3), (1.0, 1.0), 0.5, erase=1.0)
    assert torch.equal(plain.boxes, erased.boxes) and plain.offset == erased.offset
    changed = (plain.image != erased.image).any(dim=0)
    assert changed.any()
    x1, y1, x2, y2 = (int(v) for v in erased.boxes[0].tolist())
    changed[y1:y2, x1:x2] = False
    assert not changed.any()


def test_mix_blends_inputs_and_keeps_both_box_sets():
    def constant(value, box, label):
        return Resized(torch.full((3, 8, 8), float(value)), torch.tensor([box], dtype=torch.float32),
                       torch.tensor([label]), torch.tensor([False]), 0.5, (1.0, 2.0), (0.5, 0.5))  # fmt: skip

    first, second = constant(4.0, [0, 0, 4, 4], 0), constant(-8.0, [2, 2, 8, 8], 1)
    mixed = mix(first, second, 0.25)
    assert torch.allclose(mixed.image, torch.full((3, 8, 8), 0.25 * 4.0 - 0.75 * 8.0))
    assert mixed.boxes.tolist() == [[0, 0, 4, 4], [2, 2, 8, 8]] and mixed.labels.tolist() == [0, 1]
    assert (mixed.scale, mixed.offset, mixed.scale_xy) == (0.5, (1.0, 2.0), (0.5, 0.5))  # maps back to the first
    with pytest.raises(ValueError, match="mixup needs inputs of one size"):
        mix(first, replace(second, image=torch.zeros(3, 8, 9)), 0.5)
