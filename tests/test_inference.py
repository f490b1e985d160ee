"""The Detector: any image input in, detections in the original image's pixels out."""

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR
from PIL import Image

import efficientdet
from efficientdet.inference import Detector


@pytest.fixture(scope="module")
def detector():
    model = efficientdet.create_model("efficientdet-lite0", checkpoint=PARITY_DIR / "tf_efficientdet_lite0_128.pt")
    return Detector(model, image_size=128, score_threshold=0.0, max_det=20)


def test_every_input_kind_gives_the_same_detections(detector, tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    from_array = detector(array)[0]
    from_path = detector(str(path))[0]
    from_pil = detector(Image.fromarray(array))[0]
    from_tensor = detector(torch.from_numpy(array).permute(2, 0, 1).float() / 255)[0]
    for other in (from_path, from_pil, from_tensor):
        assert torch.allclose(other["boxes"], from_array["boxes"], atol=1e-3)
        assert torch.equal(other["labels"], from_array["labels"])
    assert len(from_array["label_names"]) == len(from_array["scores"]) == 20


def test_boxes_are_in_original_pixels(detector):
    """Boxes come back through the pre-processing's scale (longer side 160 -> 128) and are clipped to the image."""
    array = np.random.default_rng(1).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    batch, scales, sizes = detector.preprocess([array])
    assert scales == [pytest.approx((0.8, 0.8))] and sizes == [(90, 160)]
    in_input_pixels = detector.predict_tensor(batch)[0]["boxes"]
    expected = in_input_pixels / 0.8
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 160)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 90)
    assert torch.allclose(detector(array)[0]["boxes"], expected, atol=1e-4)


def test_list_input_and_bad_input(detector):
    imgs = [np.zeros((10, 10, 3), np.uint8), np.full((300, 50, 3), 200, np.uint8)]
    out = detector(imgs)
    assert len(out) == 2 and all(set(d) == {"boxes", "scores", "labels", "label_names"} for d in out)
    with pytest.raises(ValueError, match="uint8"):
        detector(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        detector(torch.zeros(2, 1, 8, 8))
