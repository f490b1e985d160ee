import numpy as np
import pytest
import torch

from efficientdet.data.transforms import eval_transform, train_transform

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
