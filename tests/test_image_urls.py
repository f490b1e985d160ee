"""``predict https://host/photo.jpg``: an image given by URL is downloaded and predicted like a file, against a
loopback HTTP server the test starts (no outside host is contacted)."""

from __future__ import annotations

import json
import socket
import tempfile

import pytest
from conftest import SHARED, require_shared, serve_folder, tiny_detector_checkpoint

from efficientdet.cli import main
from efficientdet.inference import image_urls
from efficientdet.inference.image_urls import is_image_url, url_file_name
from efficientdet.inference.video import is_video_source

PHOTOS = SHARED / "datasets" / "raccoon" / "JPEGImages"


@pytest.fixture(scope="module")
def photo_server():
    """``http://127.0.0.1:PORT``: the raccoon photos, served read-only from the shared data."""
    with serve_folder(require_shared(PHOTOS)) as url:
        yield url


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_detector_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", ["a", "b"])


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
    """Temporary folders made during the test go here, so the test can see that none is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_which_urls_are_images():
    assert is_image_url("https://example.com/a/bus.JPG") and is_image_url("http://h:8080/x.png?size=2")
    assert is_image_url("https://example.com/a%20b.jpg") and url_file_name("https://example.com/a%20b.jpg") == "a_b.jpg"
    assert not is_image_url("https://example.com/live.m3u8") and is_video_source("https://example.com/live.m3u8")
    assert not is_image_url("rtsp://camera/stream.jpg")  # a stream scheme stays a stream
    assert not is_image_url("photos/bus.jpg") and not is_video_source("https://example.com/bus.jpg")


def test_an_image_url_is_predicted_like_the_file(photo_server, checkpoint, tmp_path, private_tempdir):
    url = f"{photo_server}/raccoon-1.jpg"
    assert main(["predict", url, "--checkpoint", str(checkpoint), "--output", str(tmp_path / "by_url"),
                 "--save-txt"]) == 0  # fmt: skip
    assert main(["predict", str(PHOTOS / "raccoon-1.jpg"), "--checkpoint", str(checkpoint),
                 "--output", str(tmp_path / "by_file"), "--save-txt"]) == 0  # fmt: skip

    by_url = json.loads((tmp_path / "by_url" / "detections.json").read_text())
    by_file = json.loads((tmp_path / "by_file" / "detections.json").read_text())
    assert by_url and {d["file_name"] for d in by_url} == {url}
    assert [{k: v for k, v in d.items() if k != "file_name"} for d in by_url] == [
        {k: v for k, v in d.items() if k != "file_name"} for d in by_file
    ]
    written = sorted(str(p.relative_to(tmp_path / "by_url")) for p in (tmp_path / "by_url").rglob("*") if p.is_file())
    assert written == ["detections.json", "labels/raccoon-1.txt", "raccoon-1.jpg"]  # an image's outputs, no video
    assert (tmp_path / "by_url" / "labels" / "raccoon-1.txt").read_text() == (
        tmp_path / "by_file" / "labels" / "raccoon-1.txt"
    ).read_text()
    assert list(private_tempdir.iterdir()) == []  # the download is gone


def test_a_url_that_fails_is_named_and_the_others_still_run(photo_server, checkpoint, tmp_path, capsys, monkeypatch):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nothing listens on
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}/x.jpg"
    closed.close()
    missing = f"{photo_server}/no-such-photo.jpg"
    out = tmp_path / "out"
    code = main(["predict", missing, refused, f"{photo_server}/raccoon-2.jpg", "--checkpoint", str(checkpoint),
                 "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"{missing}: cannot download image (HTTP Error 404" in err
    assert f"{refused}: cannot download image (" in err
    assert (out / "raccoon-2.jpg").is_file() and not (out / "no-such-photo.jpg").exists()

    monkeypatch.setattr(image_urls, "MAX_IMAGE_BYTES", 1000)  # an answer larger than the limit is refused
    code = main(["predict", f"{photo_server}/raccoon-3.jpg", "--checkpoint", str(checkpoint), "--output", str(out)])
    assert code == 1 and "raccoon-3.jpg: cannot download image (larger than" in capsys.readouterr().err
    assert not (out / "raccoon-3.jpg").exists()


def test_an_image_url_that_is_no_image_names_the_url(photo_server, checkpoint, tmp_path, capsys, monkeypatch):
    """A server answering an image URL with something else (an HTML error page, say): the decoding failure names
    the URL, not the temporary file it was downloaded to."""
    served = tmp_path / "site"
    served.mkdir()
    (served / "fake.jpg").write_text("<html>not an image</html>")
    with serve_folder(served) as site:
        url = f"{site}/fake.jpg"
        code = main(["predict", url, "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and f"{url}: cannot read image" in err and "efficientdet-url-images" not in err


def test_the_python_detector_takes_image_urls_too(photo_server, checkpoint):
    from efficientdet.data.images import ImageReadError
    from efficientdet.inference import Detector

    detector = Detector.from_checkpoint(checkpoint, score_threshold=0.3)
    by_url, by_file = detector([f"{photo_server}/raccoon-1.jpg", PHOTOS / "raccoon-1.jpg"])
    assert len(by_url["scores"]) and all((by_url[k] == by_file[k]).all() for k in ("boxes", "scores", "labels"))
    tiled = Detector.from_checkpoint(checkpoint, score_threshold=0.3, tile=256)
    (tile_url,), (tile_file,) = tiled(f"{photo_server}/raccoon-1.jpg"), tiled(PHOTOS / "raccoon-1.jpg")
    assert (tile_url["boxes"] == tile_file["boxes"]).all()
    with pytest.raises(ImageReadError, match=f"{photo_server}/none.jpg: cannot download image .HTTP Error 404"):
        detector(f"{photo_server}/none.jpg")
