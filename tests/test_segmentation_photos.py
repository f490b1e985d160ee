"""Segmentation on camera-size photos: a JPEG much larger than the network input is decoded at libjpeg's reduced
scale for training, evaluation and prediction, as detection decodes it, while masks stay at full resolution.

The picture encodes its classes by colour (red: 0, green: 1, blue: 2), so every pixel's colour can be checked
against its label after decoding at 1/8, resizing, flipping and cropping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import spy_decodes
from PIL import Image

import efficientdet.data.images as images_module
import efficientdet.data.segmentation as segmentation_data
import efficientdet.inference.segmentation as segmentation_inference
import efficientdet.inference.segmenter as segmenter_module
from efficientdet.data.segmentation import IGNORE, SegmentationDataset, SegPair
from efficientdet.inference.segmenter import Segmenter
from efficientdet.segmentation import create_segmentation_model

SIZE = 64  # network input (longer side): a 640x320 photo is 10x larger, so it decodes at 1/8 (80x40)
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def labels_640x320() -> np.ndarray:
    labels = np.zeros((320, 640), np.uint8)
    labels[:, 240:] = 1
    labels[200:, :] = 2
    return labels


@pytest.fixture
def photo(tmp_path) -> SegPair:
    """A 640x320 JPEG whose colours are its labels, and the label mask as a PNG."""
    labels = labels_640x320()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(COLOURS[labels]).save(tmp_path / "images" / "photo.jpg", quality=95)
    Image.fromarray(labels).save(tmp_path / "masks" / "photo.png")
    return SegPair(str(tmp_path / "images" / "photo.jpg"), str(tmp_path / "masks" / "photo.png"))


def test_training_samples_of_a_large_photo_come_from_its_reduced_decoding_and_stay_aligned(photo, monkeypatch):
    """At scale 1 the longer side becomes 64 px, so the 1/8 decoding (80x40) covers it; the full-resolution mask is
    resized with it, and every pure-coloured pixel of the crop still carries its own label."""
    reductions = spy_decodes(monkeypatch, segmentation_data)
    dataset = SegmentationDataset([photo], 3, None, SIZE, (0, 0, 0), (1, 1, 1), train=True, scale_range=(1, 1))
    for epoch in range(4):  # flipped and not
        dataset.set_epoch(epoch)
        _, x, t = dataset[0]
        valid = t != IGNORE
        pure = (x.max(0).values > 250) & valid
        assert int(pure.sum()) > 500
        assert (x.argmax(0)[pure] == t[pure]).float().mean() > 0.99
    assert reductions == [8] * 4
    # the default jitter's top (2.0) needs 128 px: the 1/4 decoding (160x80)
    jittered = SegmentationDataset([photo], 3, None, SIZE, (0, 0, 0), (1, 1, 1), train=True)
    jittered[0]
    assert reductions[-1] == 4


def test_evaluation_samples_use_the_reduced_decoding_and_the_full_mask(photo, monkeypatch):
    reductions = spy_decodes(monkeypatch, segmentation_data)
    _, x, targets = SegmentationDataset([photo], 3, None, SIZE, (0, 0, 0), (1, 1, 1))[0]
    assert reductions == [8]
    assert tuple(x.shape) == (3, 32, 64) and tuple(targets.shape) == (320, 640)
    np.testing.assert_array_equal(targets.numpy(), labels_640x320())
    full = SegmentationDataset([photo], 3, None, SIZE, (0, 0, 0), (1, 1, 1), reduced_decoding=False)[0]
    assert reductions == [8, 1]
    assert tuple(full[1].shape) == (3, 32, 64)


def test_a_mask_of_another_size_than_the_photo_is_named(photo, tmp_path):
    Image.fromarray(labels_640x320()[:, :320]).save(photo.mask)
    with pytest.raises(Exception, match=r"photo\.png: mask is 320x320 \(WxH\) but its image .*photo\.jpg is 640x320"):
        SegmentationDataset([photo], 3, None, SIZE, (0, 0, 0), (1, 1, 1))[0]


def test_segmenter_and_predict_answer_a_large_photo_file_in_its_own_pixels(photo, tmp_path, monkeypatch):
    """``Segmenter(path)`` runs the network on the 1/8 decoding and returns the mask at 640x320, the same mask as
    evaluation computes; ``predict`` draws its overlay on a second, full decoding."""
    torch.manual_seed(0)
    model = create_segmentation_model("efficientdet-seg-d0", num_classes=3, image_size=SIZE).eval()
    network_decodes = spy_decodes(monkeypatch, segmenter_module)  # Segmenter.decode
    segmenter = Segmenter(model, image_size=SIZE)
    mask = segmenter(photo.image)[0]["mask"]
    assert network_decodes == [8] and tuple(mask.shape) == (320, 640)
    _, x, _ = SegmentationDataset([photo], 3, None, SIZE, model.config.mean, model.config.std)[0]
    (evaluated,) = segmenter.predict_tensor(x[None], [tuple(x.shape[-2:])], [(320, 640)])
    assert torch.equal(mask, evaluated.cpu())
    full_decodes = spy_decodes(monkeypatch, images_module)  # full_picture, for the overlay
    [result] = segmentation_inference.predict_segmentation(model, [photo.image], tmp_path / "out", img_size=SIZE)
    assert network_decodes == [8, 8] and full_decodes == [1]
    with Image.open(result["overlay"]) as drawn, Image.open(result["mask"]) as ids:
        assert drawn.size == (640, 320) and ids.size == (640, 320)
        assert np.array_equal(np.asarray(ids), mask.numpy().astype(np.uint8))


@pytest.mark.parametrize("reduced", [True, False])
def test_train_reduced_decoding_flag_reaches_the_segmentation_dataset(photo, reduced, monkeypatch):
    """`efficientdet train --task segmentation [--no-reduced-decoding]`: the option both tasks share."""
    from efficientdet.engine.tasks.segmentation import SegmentationTask, SegTrainConfig
    from efficientdet.utils.distributed import DistEnv

    images, masks = Path(photo.image).parent, Path(photo.mask).parent
    cfg = SegTrainConfig(train_images=str(images), train_masks=str(masks), num_classes=3, img_size=SIZE,
                         reduced_decoding=reduced, output=str(images.parent / "run"))  # fmt: skip
    task = SegmentationTask(cfg, DistEnv(), torch.device("cpu"))
    task.read_data()
    reductions = spy_decodes(monkeypatch, segmentation_data)
    task.train_dataset(task.build_model())[0]
    assert reductions == ([4] if reduced else [1])  # the default jitter's top (2.0): 128 px, the 1/4 decoding
