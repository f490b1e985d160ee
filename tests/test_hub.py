"""Published weights by name, against a loopback HTTP server this module starts (nothing else may be reached).

The server serves small real effdet-layout checkpoints made from the parity fixtures (random weights, the real
key layout and shapes of D0 / Lite0 with 90 COCO classes); the URL table is pointed at it through
``$EFFICIENTDET_WEIGHTS_URL`` and entries of ``hub.DETECTION_WEIGHTS`` / ``hub.BACKBONE_WEIGHTS`` named after the
files' own SHA-256, as the published names are.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import json
import os
import socket
import stat
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR, require_shared
from PIL import Image

import efficientdet
from efficientdet import hub
from efficientdet.cli import main
from efficientdet.data.labels import coco_slot_names
from efficientdet.engine.train import TrainConfig, build_model
from efficientdet.models.weights import CheckpointError, read_backbone_weights

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --------------------------------------------------------------------------------------------- no outside host


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Every attempt to reach a host other than this machine is refused, and fails the test even if caught."""
    attempts: list[str] = []

    def refuse(host: object) -> None:
        attempts.append(str(host))
        raise OSError(errno.ENETUNREACH, f"test_hub: network access to {host} refused (loopback only)")

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    real_create = socket.create_connection

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            refuse(address[0])
        return real_connect(self, address)

    def create_connection(address, *args, **kwargs):
        if address[0] not in LOOPBACK:
            refuse(address[0])
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    yield
    assert not attempts, f"the test tried to reach {attempts}"


# --------------------------------------------------------------------------------------------- the server


class _Server:
    """Files by name; ``truncated`` names send half their bytes under the full Content-Length, then hang up."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.requests: list[str] = []
        handler = functools.partial(_Handler, self)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def __init__(self, server_state: _Server, *args, **kwargs) -> None:
        self.state = server_state
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        self.state.requests.append(name)
        body = self.state.files.get(name)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.state.truncated else body)
        self.close_connection = True

    def log_message(self, *args) -> None:  # quiet
        pass


def _hashed_name(stem: str, data: bytes) -> str:
    """``stem-<first 8 hex digits of the SHA-256>.pth``: the naming of the published files."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def _saved(obj: object) -> bytes:
    with tempfile.TemporaryFile() as f:
        torch.save(obj, f)
        f.seek(0)
        return f.read()


@pytest.fixture(scope="module")
def weights_files() -> dict[str, bytes]:
    """effdet-layout D0 and Lite0 files (90 classes) and a timm-layout B0 backbone file, by published-style name."""
    require_shared(PARITY_DIR)
    d0 = torch.load(PARITY_DIR / "tf_efficientdet_d0_256.pt", weights_only=True)["state_dict"]
    lite0 = torch.load(PARITY_DIR / "tf_efficientdet_lite0_128.pt", weights_only=True)["state_dict"]
    b0 = {k[len("backbone.") :]: v for k, v in d0.items() if k.startswith("backbone.")}
    files = {}
    for stem, sd in [("tf_efficientdet_d0_34", d0), ("tf_efficientdet_lite0", lite0), ("tf_efficientnet_b0_aa", b0)]:
        data = _saved(sd)
        files[_hashed_name(stem, data)] = data
    return files


def _named(files: dict[str, bytes], stem: str) -> str:
    return next(n for n in files if n.startswith(stem + "-"))


@pytest.fixture
def server(weights_files):
    s = _Server()
    s.files.update(weights_files)
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch, server, weights_files) -> Path:
    """The cache in ``$EFFICIENTDET_HOME``, the table pointed at the server (``$EFFICIENTDET_WEIGHTS_URL``)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(hub.HOME_ENV, str(folder))
    monkeypatch.setenv(hub.MIRROR_ENV, server.url)
    published = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"
    for name, stem in [("efficientdet-d0", "tf_efficientdet_d0_34"), ("efficientdet-lite0", "tf_efficientdet_lite0")]:
        monkeypatch.setitem(hub.DETECTION_WEIGHTS, name, hub.PublishedWeights(published + _named(weights_files, stem)))
    b0 = hub.PublishedWeights(published + _named(weights_files, "tf_efficientnet_b0_aa"))
    monkeypatch.setitem(hub.BACKBONE_WEIGHTS, "efficientnet-b0", b0)
    return folder


def _cache_files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# --------------------------------------------------------------------------------------------- downloads


def test_download_once_then_the_cache_answers_without_a_request(cache, server, weights_files):
    model = efficientdet.create_model("efficientdet-d0", pretrained=True)
    name = _named(weights_files, "tf_efficientdet_d0_34")
    assert server.requests == [name] and _cache_files(cache) == [name]  # nothing else: no temporary file left
    assert (cache / name).read_bytes() == weights_files[name]
    again = efficientdet.create_model("efficientdet-d0", pretrained=True)
    assert server.requests == [name]  # the second model came from the cache
    # effdet's file: TF padding inferred, and the COCO label space: slot i is category i + 1
    assert model.config.padding == "same" and model.config.num_classes == 90
    assert model.class_names == coco_slot_names() and model.category_ids == list(range(1, 91))
    assert model.class_names[0] == "person" and model.class_names[11] == "unused-12"
    local = efficientdet.create_model("efficientdet-d0", checkpoint=cache / name)
    for key, value in local.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_a_wrong_hash_is_refused_and_nothing_is_kept(cache, server, weights_files, monkeypatch):
    body = weights_files[_named(weights_files, "tf_efficientdet_d0_34")]
    server.files["tf_efficientdet_d0_34-deadbeef.pth"] = body
    monkeypatch.setitem(
        hub.DETECTION_WEIGHTS, "efficientdet-d0", hub.PublishedWeights("https://x/tf_efficientdet_d0_34-deadbeef.pth")
    )
    with pytest.raises(hub.WeightsUnavailableError) as e:
        efficientdet.create_model("efficientdet-d0", pretrained=True)
    message = str(e.value)
    assert "not the published one" in message and "deadbeef" in message and "Nothing was kept" in message
    assert str(cache / "tf_efficientdet_d0_34-deadbeef.pth") in message  # where to place it by hand
    assert _cache_files(cache) == []


def test_a_truncated_transfer_is_refused_and_nothing_is_kept(cache, server, weights_files):
    name = _named(weights_files, "tf_efficientdet_d0_34")
    server.truncated.add(name)
    with pytest.raises(hub.WeightsUnavailableError, match="cut short or altered"):
        efficientdet.create_model("efficientdet-d0", pretrained=True)
    assert _cache_files(cache) == []
    # a URL of no published file has no hash to check: the file must load (weights_only) or it is deleted
    server.files["mine.pth"] = weights_files[name]
    server.truncated.add("mine.pth")
    with pytest.raises(hub.WeightsUnavailableError, match="not a readable PyTorch checkpoint.*it was deleted"):
        efficientdet.create_model("efficientdet-d0", pretrained=f"{server.url}/mine.pth")
    assert _cache_files(cache) == []


def test_http_404_names_the_url_and_the_place_for_the_file(cache, server):
    with pytest.raises(hub.WeightsUnavailableError) as e:
        efficientdet.create_model("efficientdet-lite0", pretrained=f"{server.url}/missing.pth")
    assert f"{server.url}/missing.pth" in str(e.value) and "HTTP 404" in str(e.value)
    assert str(cache / "missing.pth") in str(e.value)
    assert _cache_files(cache) == []


def test_server_down_is_one_clear_error(cache, server):
    server.close()  # nothing listens on the port any more: connection refused, as when offline
    with pytest.raises(hub.WeightsUnavailableError) as e:
        efficientdet.create_model("efficientdet-d0", pretrained=True)
    message = str(e.value)
    assert message.startswith("cannot download the COCO weights of efficientdet-d0 from http://127.0.0.1:")
    assert "no connection" in message and "place it at" in message and "--checkpoint FILE" in message
    assert _cache_files(cache) == []


def test_a_read_only_cache_is_reported_before_any_transfer(cache, server, monkeypatch):
    cache.mkdir()
    cache.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse as a read-only mount would

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(hub.tempfile, "mkstemp", read_only)
    try:
        with pytest.raises(hub.WeightsUnavailableError) as e:
            efficientdet.create_model("efficientdet-d0", pretrained=True)
        message = str(e.value)
        assert message.startswith(f"cannot save the COCO weights of efficientdet-d0 in {cache}")
        assert hub.HOME_ENV in message and server.requests == []
        assert _cache_files(cache) == []
    finally:
        cache.chmod(stat.S_IRWXU)


def test_efficientdet_home_and_the_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.HOME_ENV, str(tmp_path / "mine"))
    assert hub.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(hub.HOME_ENV)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert hub.cache_dir() == tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"


def test_a_file_placed_in_the_cache_by_hand_is_used_offline(cache, server, weights_files):
    server.close()
    name = _named(weights_files, "tf_efficientdet_lite0")
    cache.mkdir()
    (cache / name).write_bytes(weights_files[name])
    model = efficientdet.create_model("efficientdet-lite0", pretrained=True)
    assert model.config.activation == "relu6" and model.class_names[89] == "toothbrush"


def test_pretrained_takes_a_path_or_a_url(cache, server, weights_files, tmp_path):
    name = _named(weights_files, "tf_efficientdet_lite0")
    local = tmp_path / "local.pth"
    local.write_bytes(weights_files[name])
    by_path = efficientdet.create_model("efficientdet-lite0", pretrained=str(local))
    assert server.requests == []
    by_url = efficientdet.create_model("efficientdet-lite0", pretrained=f"{server.url}/{name}")
    efficientdet.load_checkpoint(f"{server.url}/{name}", "efficientdet-lite0")  # --checkpoint URL: the cache
    assert server.requests == [name] and _cache_files(cache) == [name]
    assert torch.equal(by_path.class_net.predict.pointwise.weight, by_url.class_net.predict.pointwise.weight)


class _NotWeights:
    """Pickled, it would need this module's code to be loaded."""


def test_a_downloaded_file_loads_weights_only(cache, server):
    server.files["evil.pth"] = _saved({"state_dict": {"w": torch.zeros(1)}, "payload": _NotWeights()})
    with pytest.raises(hub.WeightsUnavailableError, match="refused to load.*it was deleted"):
        efficientdet.create_model("efficientdet-d0", pretrained=f"{server.url}/evil.pth")
    assert _cache_files(cache) == []


def test_models_without_published_weights_say_so(cache, server):
    with pytest.raises(CheckpointError, match="efficientdet-seg-lite0 has no published COCO weights"):
        efficientdet.create_model("efficientdet-seg-lite0", pretrained=True)
    assert server.requests == []


# --------------------------------------------------------------------------------------------- ImageNet backbones


def test_training_defaults_to_the_imagenet_backbone_downloaded_once(cache, server, weights_files):
    model = build_model(TrainConfig(model="efficientdet-d0"), ["raccoon"])
    name = _named(weights_files, "tf_efficientnet_b0_aa")
    assert server.requests == [name]
    expected = read_backbone_weights(str(cache / name), [len(s) for s in model.backbone.blocks])
    for key in ("stem.conv.weight", "blocks.3.1.dw.conv.weight", "blocks.6.0.project.bn.running_var"):
        assert torch.equal(model.backbone.state_dict()[key], expected[key].float()), key
    build_model(TrainConfig(model="efficientdet-d0"), ["raccoon"])
    assert server.requests == [name]


def test_lite0_backbone_needs_no_network(cache, server):
    server.close()
    build_model(TrainConfig(model="efficientdet-lite0"), ["raccoon"])  # the packaged weights


def _coco_json(tmp_path: Path, ids=(1, 2, 3, 5, 90), images: int = 2) -> Path:
    """A COCO instances file with COCO's id gaps and COCO's names, over small real JPEGs."""
    names = coco_slot_names()
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    content = {"images": [], "annotations": [], "categories": [{"id": i, "name": names[i - 1]} for i in ids]}
    for k in range(images):
        file = f"{k}.jpg"
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(root / "images" / file)
        content["images"].append({"id": k + 1, "file_name": file, "width": 128, "height": 96})
        for j, cid in enumerate(ids):
            content["annotations"].append({"id": len(content["annotations"]) + 1, "image_id": k + 1,
                                           "category_id": cid, "bbox": [4 + 10 * j, 8, 30, 40], "area": 1200,
                                           "iscrowd": 0})  # fmt: skip
    path = root / "instances.json"
    path.write_text(json.dumps(content))
    return path


def test_without_the_backbone_weights_training_stops_and_says_how_to_get_them(cache, server, tmp_path, capsys):
    server.close()
    data = _coco_json(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--model", "efficientdet-d0", "--data", str(data), "--format", "coco", "--val-split",
               "none", "--output", str(out), "--workers", "0", "--max-steps", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("efficientdet train: cannot download the ImageNet")
    name = hub.BACKBONE_WEIGHTS["efficientnet-b0"].file_name
    assert f"{server.url}/{name}" in err and str(cache / name) in err and "--no-pretrained-backbone" in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- the CLI


def test_predict_with_the_published_weights_by_name(cache, server, tmp_path, monkeypatch, capsys):
    import efficientdet.inference.predict as predict_mod

    photo = tmp_path / "photo.jpg"
    gradient = np.linspace(0, 255, 160 * 120 * 3).reshape(120, 160, 3).astype(np.uint8)
    Image.fromarray(gradient).save(photo)
    drawn_names = []
    real_draw = predict_mod.draw_detections

    def draw(image, boxes, labels, scores, class_names=None, *args, **kwargs):
        drawn_names.append([class_names[int(k)] for k in labels])
        return real_draw(image, boxes, labels, scores, class_names, *args, **kwargs)

    monkeypatch.setattr(predict_mod, "draw_detections", draw)
    out = tmp_path / "out"
    rc = main(["predict", "--model", "efficientdet-d0", "--pretrained", str(photo), "--output", str(out),
               "--score-threshold", "0.0", "--max-det", "20", "--device", "cpu", "--img-size", "256"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert (out / "photo.jpg").is_file() and len(server.requests) == 1
    results = json.loads((out / "detections.json").read_text())
    names = coco_slot_names()
    assert results and all(r["category_name"] == names[r["category_id"] - 1] for r in results)
    assert drawn_names == [[r["category_name"] for r in results]]  # the COCO names are what is drawn


def test_eval_of_the_90_slot_weights_on_a_coco_json_with_id_gaps(cache, server, tmp_path, capsys):
    """COCO's 5 categories (ids 1, 2, 3, 5, 90) meet slots 0, 1, 2, 4, 89: results carry the ids, by id."""
    data = _coco_json(tmp_path)
    metrics = tmp_path / "metrics.json"
    rc = main(["eval", "--model", "efficientdet-d0", "--pretrained", "--data", str(data), "--format", "coco",
               "--json", str(metrics), "--workers", "0", "--device", "cpu", "--img-size", "256"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    written = json.loads(metrics.read_text())
    by_name = {row["class"]: row for row in written["per_class"]}
    names = coco_slot_names()
    for cid in (1, 2, 3, 5, 90):
        assert by_name[names[cid - 1]]["category_id"] == cid and by_name[names[cid - 1]]["gt_boxes"] == 2
    detections = json.loads(Path(written["detections"]).read_text())
    assert detections and all(1 <= d["category_id"] <= 90 for d in detections)
    # the same detections from Python: category id = slot + 1 for every one of them
    from efficientdet.data.readers import read_dataset
    from efficientdet.evaluation.validate import predict_records

    model = efficientdet.create_model("efficientdet-d0", pretrained=True)
    records = read_dataset(str(data), "coco", "val").records
    dets, _ = predict_records(model, records, image_size=256)
    expected = [int(label) + 1 for det in dets for label in det["labels"]]
    assert [d["category_id"] for d in detections] == expected


def test_fine_tuning_from_the_published_weights_keeps_the_shared_class_rows(cache, server, caplog):
    caplog.set_level("INFO", logger="efficientdet")
    model = build_model(TrainConfig(model="efficientdet-d0", pretrained=True), ["aeroplane", "raccoon", "Person"])
    source = efficientdet.create_model("efficientdet-d0", pretrained=True)
    ours, theirs = model.class_net.predict.pointwise, source.class_net.predict.pointwise
    for anchor in range(model.config.num_anchors):
        for new, old in [(0, 4), (2, 0)]:  # aeroplane <- airplane (COCO id 5), Person <- person
            assert torch.equal(ours.weight[anchor * 3 + new], theirs.weight[anchor * 90 + old])
            assert torch.equal(ours.bias[anchor * 3 + new], theirs.bias[anchor * 90 + old])
    assert "2 of 3 classes keep their rows (aeroplane <- airplane, Person <- person); new: raccoon" in caplog.text
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(model="efficientdet-d0", pretrained=True, checkpoint="x.pt")


# --------------------------------------------------------------------------------------------- torch.hub


def _hub(entry: str, *args, **kwargs):
    """``torch.hub.load`` of this checkout's ``hubconf.py``, as ``torch.hub.load("owner/efficientdet", entry)``
    runs it once GitHub's copy is downloaded (``source="local"``: nothing is fetched)."""
    from conftest import REPO

    return torch.hub.load(str(REPO), entry, *args, source="local", trust_repo=True, **kwargs)


def test_torch_hub_lists_one_entry_per_model_and_the_detector():
    import importlib.util

    from conftest import REPO

    # torch.hub.list reads GitHub only; its rule on the module: every public callable is an entry
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = [name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")]
    from efficientdet.models.registry import model_names

    assert {name.replace("-", "_") for name in model_names()} | {"detector"} == set(entries)
    assert "efficientdet_d0" in entries and "efficientdet_seg_lite0" in entries


def test_torch_hub_builds_the_model_with_its_published_weights(cache, server):
    by_hub = _hub("efficientdet_d0", pretrained=True)
    direct = efficientdet.create_model("efficientdet-d0", pretrained=True)
    assert len(server.requests) == 1  # downloaded once, then the cache answers
    assert by_hub.config == direct.config and by_hub.class_names == direct.class_names
    for (name, a), (_, b) in zip(by_hub.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), name


def test_torch_hub_passes_model_options_on():
    model = _hub("efficientdet_lite0", num_classes=3, pretrained_backbone=False)
    assert model.config.name == "efficientdet-lite0" and model.config.num_classes == 3
    out = model.eval()(torch.zeros(1, 3, 128, 128))
    assert out[0][0].shape[1] == 9 * 3  # 9 anchors x 3 classes at P3
    segmenter = _hub("efficientdet_seg_lite0", num_classes=5)
    assert segmenter.eval()(torch.zeros(1, 3, 64, 96)).shape == (1, 5, 64, 96)


def test_torch_hub_detector_takes_pictures_and_returns_boxes_in_their_pixels(cache, server):
    detector = _hub("detector", "efficientdet-lite0", pretrained=True, score_threshold=0.0, image_size=128)
    picture = np.linspace(0, 255, 90 * 200 * 3).reshape(90, 200, 3).astype(np.uint8)
    result = detector(picture)[0]
    boxes = result["boxes"]
    assert len(boxes) > 0 and result["label_names"][0] in detector.class_names
    assert float(boxes[:, 2].max()) <= 200 and float(boxes[:, 3].max()) <= 90  # the picture's pixels, not 128's
