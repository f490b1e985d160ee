"""ImageNet backbones: the packaged Lite0/1/2 weights classify real photos, and load into the detector."""

import socket

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR
from PIL import Image

import efficientdet
from efficientdet.models.efficientnet import EfficientNet
from efficientdet.models.weights import CheckpointError, lite_weights_file, load_weights, read_backbone_weights

skimage_data = pytest.importorskip("skimage.data")

TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504


def _center_crop_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """ImageNet evaluation pre-processing: resize shorter side to size/0.875, centre crop, (x - 127) / 128."""
    im = Image.fromarray(image)
    scale = round(size / 0.875) / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()
    return ((x - 127.0) / 128.0)[None]


@pytest.mark.parametrize(
    "name,size", [("efficientnet-lite0", 224), ("efficientnet-lite1", 240), ("efficientnet-lite2", 260)]
)
def test_lite_imagenet_weights_recognise_a_cat_and_a_coffee(name, size):
    net = EfficientNet(name, num_classes=1000).eval()
    load_weights(net, read_backbone_weights(lite_weights_file(name), [len(s) for s in net.blocks]))
    with torch.no_grad():
        cat = net(_center_crop_tensor(skimage_data.chelsea(), size)).topk(5).indices[0].tolist()
        coffee = net(_center_crop_tensor(skimage_data.coffee(), size)).topk(5).indices[0].tolist()
    assert TABBY in cat and {TIGER_CAT, EGYPTIAN_CAT} & set(cat), cat
    assert coffee[0] == ESPRESSO and {CUP, COFFEE_MUG} & set(coffee), coffee


def test_random_backbone_does_not_pass_the_same_check():
    """Control for the test above: without the weights the classes are not found."""
    net = EfficientNet("efficientnet-lite0", num_classes=1000).eval()
    with torch.no_grad():
        coffee = net(_center_crop_tensor(skimage_data.coffee(), 224)).topk(5).indices[0].tolist()
    assert coffee[0] != ESPRESSO


@pytest.mark.parametrize("model_name", ["efficientdet-lite0", "efficientdet-lite1", "efficientdet-lite2"])
def test_create_model_with_pretrained_lite_backbone(model_name):
    model = efficientdet.create_model(model_name, num_classes=4, pretrained_backbone=True)
    net = model.backbone
    expected = read_backbone_weights(lite_weights_file(net.name), [len(s) for s in net.blocks])
    own = net.state_dict()
    for key in ("stem.conv.weight", "blocks.3.1.dw.conv.weight", "blocks.6.0.project.bn.running_var"):
        assert torch.equal(own[key], expected[key])


def test_b_series_backbone_from_a_timm_layout_file(tmp_path):
    """timm's EfficientNet layout (as in tf_efficientnet_b0_*.pth) loads as pretrained_backbone=PATH."""
    sd = torch.load(PARITY_DIR / "tf_efficientdet_d0_256.pt", weights_only=True)["state_dict"]
    timm_sd = {k[len("backbone.") :]: v.float() for k, v in sd.items() if k.startswith("backbone.")}
    timm_sd["conv_head.weight"] = torch.randn(1280, 320, 1, 1)  # a classifier file also has head + classifier
    timm_sd["classifier.weight"] = torch.randn(1000, 1280)
    path = tmp_path / "tf_efficientnet_b0.pth"
    torch.save(timm_sd, path)
    model = efficientdet.create_model("efficientdet-d0", num_classes=3, pretrained_backbone=str(path))
    assert torch.equal(model.backbone.blocks[1][0].expand.conv.weight, timm_sd["blocks.1.0.conv_pw.weight"])
    assert torch.equal(model.backbone.blocks[0][0].dw.bn.bias, timm_sd["blocks.0.0.bn1.bias"])


def test_b_series_unreachable_explains_how_to_get_the_file(tmp_path, monkeypatch):
    """B0-B7 are downloaded (tests/test_hub.py); unreachable, the error says from where, to where, and the opt-out."""
    from efficientdet import hub

    with socket.socket() as s:  # a loopback port nobody listens on: never an outside host
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(hub.HOME_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(hub.MIRROR_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(CheckpointError) as e:
        efficientdet.create_model("efficientdet-d1", pretrained_backbone=True)
    name = hub.BACKBONE_WEIGHTS["efficientnet-b1"].file_name
    for part in (f"127.0.0.1:{port}/{name}", str(tmp_path / "cache" / name), "--no-pretrained-backbone",
                 "pretrained_backbone=FILE"):  # fmt: skip
        assert part in str(e.value)
