"""Files the tools write get the permissions a plain ``open(path, "w")`` would give them: 0o666 less the umask.

Every output is first written under a temporary name and renamed into place (a crash leaves no half-made file);
a temporary file from ``tempfile.mkstemp`` is owner-only (0o600), and renamed it would make every checkpoint, export,
drawn image and video private to its owner, unreadable to a colleague or a web server.
"""

from __future__ import annotations

import os
import stat
from fractions import Fraction

import numpy as np
import pytest
from conftest import tiny_detector_checkpoint
from PIL import Image

from efficientdet.cli import main
from efficientdet.utils.atomic import atomic_open


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_atomic_writes_follow_the_umask_and_leave_nothing_else(tmp_path, umask):
    target = tmp_path / "out" / "file.json"
    with atomic_open(target, "w") as f:
        f.write("{}")
    assert target.read_text() == "{}"
    assert mode(target) == 0o666 & ~umask
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]

    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:  # a failed write keeps the old file
        f.write("half")
        raise RuntimeError("stop")
    assert target.read_text() == "{}" and sorted(p.name for p in target.parent.iterdir()) == ["file.json"]


def test_verified_exports_follow_the_umask(tmp_path, umask):
    from efficientdet.export.verify import write_verified

    path = write_verified(tmp_path / "model.onnx", lambda p: p.write_bytes(b"x"), lambda p: None)
    assert mode(path) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_videos_follow_the_umask(tmp_path, umask):
    pytest.importorskip("av")
    from efficientdet.inference.video import VideoWriter

    writer = VideoWriter(tmp_path / "clip.mp4", 32, 32, Fraction(10))
    writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.close()
    assert mode(tmp_path / "clip.mp4") == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_predict_and_its_checkpoint_are_readable_by_others_under_the_usual_umask(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint = tiny_detector_checkpoint(tmp_path / "tiny.pt", ["a", "b"])
        pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)  # the tiny model finds boxes
        Image.fromarray(pixels).save(tmp_path / "photo.jpg")
        out = tmp_path / "pred"
        assert main(["predict", str(tmp_path / "photo.jpg"), "--checkpoint", str(checkpoint),
                     "--output", str(out), "--save-txt"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    written = {str(p.relative_to(out)): mode(p) for p in out.rglob("*") if p.is_file()}
    assert written == {"photo.jpg": 0o644, "detections.json": 0o644, "labels/photo.txt": 0o644}
    assert mode(checkpoint) == 0o644
