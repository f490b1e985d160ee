"""Video sources: ``efficientdet predict`` on video files and ``Detector.stream`` (PyAV, synthetic clips)."""

from __future__ import annotations

import json
import re
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_at_call, tiny_detector_checkpoint
from PIL import Image

from efficientdet.cli import main
from efficientdet.inference import Detector
from efficientdet.inference.detector import CPU_PARALLEL_FRAMES, default_parallel_frames
from efficientdet.inference.video import (
    JSONL_FILE,
    VideoDependencyError,
    VideoError,
    VideoSource,
    VideoWriter,
    is_video_source,
    jsonl_record,
    open_source,
    output_folders,
    parse_source,
    predict_videos,
    require_av,
)

av = pytest.importorskip("av")

CLASS_NAMES = ["cat", "dog"]
FRAMES, WIDTH, HEIGHT, RATE = 12, 96, 64, 25
OPTIONS = ("--max-det", "20")  # fewer boxes to draw: faster, and the comparisons still see every class


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """The whole module runs on one torch thread (see ``conftest.one_torch_thread``)."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_detector_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", CLASS_NAMES)


def write_clip(
    path: Path, frames: int = FRAMES, size: tuple[int, int] = (WIDTH, HEIGHT), intra: bool = False, **options: str
) -> Path:
    """A clip of two shapes moving over a grey background (H.264, or MPEG-4 where x264 is missing).

    ``intra``: every frame a key frame (and textured), so the frames share the file's bytes about evenly and a
    file cut at 60% keeps about half of them; ``options``: the container's (muxer options).
    """
    width, height = size
    texture = np.random.default_rng(0).integers(0, 256, (32, 30, 3), dtype=np.uint8)
    with av.open(str(path), "w", options=options) as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=RATE, options={"g": "1"} if intra else {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 90, np.uint8)
            x, y = (4 + 5 * i) % (width - 30), 8 + i % (height - 40)  # wrapping around in longer clips
            image[y : y + 32, x : x + 30] = texture // 4 + (180, 0, 0)
            x, y = (60 - 3 * i) % (width - 20), 30 + i % (height - 30)
            image[y : y + 20, x : x + 20] = (30, 200, 250)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decode(path: Path) -> tuple[list[np.ndarray], Fraction, tuple[int, int]]:
    """Every frame as RGB, the frame rate and (width, height) of a video, read back with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.average_rate, (stream.width, stream.height)


def predict(output: Path, checkpoint: Path, *sources: str | Path, extra: tuple[str, ...] = ()) -> int:
    argv = ["predict", *map(str, sources), "--checkpoint", str(checkpoint), "--output", str(output), *OPTIONS]
    return main([*argv, "--device", "cpu", *extra])


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / JSONL_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("videos") / "clip.mkv")


@pytest.fixture(scope="module")
def full_run(clip, checkpoint, tmp_path_factory) -> Path:
    """Every frame, batches of 5 (the last one short), drawn: the reference the other runs are compared with."""
    output = tmp_path_factory.mktemp("full") / "out"
    assert predict(output, checkpoint, clip, extra=("--batch-size", "5", "--save-txt", "--save-crop")) == 0
    return output / "clip"


def detector(checkpoint: Path) -> Detector:
    """A detector with ``efficientdet predict``'s defaults (the BN-folded network) and the options above."""
    return Detector.from_checkpoint(checkpoint, score_threshold=0.3, max_det=20, optimize=True)


def test_predict_writes_a_video_of_the_same_size_rate_and_frame_count(clip, full_run):
    source, source_rate, source_size = decode(clip)
    drawn, rate, size = decode(full_run / "clip.mp4")
    assert (len(drawn), rate, size) == (len(source), source_rate, source_size) == (FRAMES, RATE, (WIDTH, HEIGHT))
    # boxes are drawn: the frames differ from the source beyond the encoder's rounding
    assert np.abs(drawn[0].astype(int) - source[0]).mean() > 3


def test_jsonl_matches_image_mode_frame_by_frame(clip, checkpoint, full_run):
    frames, _, _ = decode(clip)
    lines = records(full_run)
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([i / RATE for i in range(FRAMES)])
    for line, expected in zip(lines, detector(checkpoint)(frames)):
        assert line["labels"] == expected["labels"].tolist() and line["labels"]
        assert line["names"] == expected["label_names"]
        assert line["scores"] == pytest.approx(expected["scores"].tolist(), abs=1e-5)
        np.testing.assert_allclose(line["boxes"], expected["boxes"].numpy(), atol=0.02)
    # the shapes move, so the detections do too
    assert lines[0]["boxes"] != lines[-1]["boxes"]


def test_save_txt_writes_a_label_file_per_frame(full_run):
    files = sorted((full_run / "labels").iterdir())
    assert [f.name for f in files] == [f"clip_{i:06d}.txt" for i in range(FRAMES)]
    for path, line in zip(files, records(full_run)):
        non_empty = [b for b in line["boxes"] if b[2] > b[0] and b[3] > b[1]]
        assert len(path.read_text().splitlines()) == len(non_empty)


def test_save_crop_writes_each_frames_detections(clip, checkpoint, full_run):
    """`--save-crop` on a video wrote nothing and said nothing (images only)."""
    from efficientdet.inference.files import class_folders, crop_region

    folders = class_folders(CLASS_NAMES)
    expected = {}
    for result in detector(checkpoint).stream(clip, batch_size=5):  # predict's detections, unrounded
        det = result.detections
        for k, (box, label) in enumerate(zip(det["boxes"].tolist(), det["labels"].tolist())):
            region = crop_region(box, WIDTH, HEIGHT)
            if region is not None:
                x1, y1, x2, y2 = region
                expected[f"{folders[label]}/clip_{result.index:06d}_{k}.jpg"] = (x2 - x1, y2 - y1)
    written = {str(p.relative_to(full_run / "crops")): p for p in (full_run / "crops").rglob("*.jpg")}
    assert expected and set(written) == set(expected)
    for name, path in written.items():
        with Image.open(path) as crop:
            assert crop.size == expected[name]


def test_vid_stride_and_max_frames(clip, checkpoint, full_run, tmp_path):
    assert predict(tmp_path, checkpoint, clip, extra=("--vid-stride", "3", "--max-frames", "3")) == 0
    strided = records(tmp_path / "clip")
    assert [line["frame"] for line in strided] == [0, 3, 6]
    assert strided == [records(full_run)[i] for i in (0, 3, 6)]
    frames, rate, size = decode(tmp_path / "clip" / "clip.mp4")
    assert (len(frames), rate, size) == (3, Fraction(RATE, 3), (WIDTH, HEIGHT))  # plays at the source's speed


@pytest.mark.parametrize(
    "name, options",
    [
        ("cut.mkv", {}),  # Matroska: the demuxer ends quietly; the header's duration gives the damage away
        ("cut.mp4", {"movflags": "+faststart"}),  # index first: FFmpeg reports the missing data
    ],
)
def test_truncated_video_keeps_the_frames_before_the_damage(checkpoint, tmp_path, capsys, name, options):
    whole = write_clip(tmp_path / f"whole{Path(name).suffix}", intra=True, **options)
    cut = tmp_path / name
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    output = tmp_path / "out"
    assert predict(output, checkpoint, cut) == 1
    err = capsys.readouterr().err
    assert "warning" in err and str(cut) in err
    lines = records(output / "cut")
    kept = len(lines)
    assert 0 < kept < FRAMES
    assert [line["frame"] for line in lines] == list(range(kept))
    frames, rate, _ = decode(output / "cut" / "cut.mp4")  # closed properly: it plays
    assert (len(frames), rate) == (kept, RATE)
    seen = []  # Python: the same frames, then the error
    with pytest.raises(VideoError, match=re.escape(str(cut))):
        for result in detector(checkpoint).stream(cut):
            seen.append(result.index)
    assert seen == list(range(kept))


def test_stream_yields_what_predict_writes(clip, checkpoint, full_run):
    frames, _, _ = decode(clip)
    results = list(detector(checkpoint).stream(clip, batch_size=5))
    assert [jsonl_record(r) for r in results] == records(full_run)
    for result, frame in zip(results, frames):
        np.testing.assert_array_equal(result.image, frame)
    few = list(detector(checkpoint).stream(clip, batch_size=2, vid_stride=4, max_frames=2))
    assert [(r.index, r.time) for r in few] == [(0, 0.0), (4, pytest.approx(4 / RATE))]


def test_frames_run_side_by_side_give_the_same_outputs(clip, checkpoint, full_run, tmp_path):
    """``--parallel-frames``: batches run in threads at once, results written in order, identical to one at a time."""
    assert predict(tmp_path, checkpoint, clip, extra=("--batch-size", "2", "--parallel-frames", "3")) == 0
    assert records(tmp_path / "clip") == records(full_run)
    assert len(decode(tmp_path / "clip" / "clip.mp4")[0]) == FRAMES
    threads = set()
    original = Detector.predict_tensor

    def recording(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Detector, "predict_tensor", recording)
        results = list(detector(checkpoint).stream(clip, parallel_frames=2))
    assert [jsonl_record(r) for r in results] == records(full_run)
    assert len(threads) == 2 and all(name.startswith("detect") for name in threads)


def test_parallel_frames_default_to_two_for_the_torch_network_on_a_cpu(checkpoint):
    model = detector(checkpoint).model
    threads = torch.get_num_threads()  # 1 in this module
    assert default_parallel_frames(model, "cpu") == 1  # one thread to share: nothing to run side by side
    torch.set_num_threads(2)
    try:
        assert default_parallel_frames(model, "cpu") == CPU_PARALLEL_FRAMES == 2
        assert default_parallel_frames(model, "cuda") == 1  # a GPU takes batches
        assert default_parallel_frames(torch.nn.Identity(), "cpu") == 1  # e.g. an exported file's runtime
        assert Detector.from_checkpoint(checkpoint).parallel_frames == 2
        assert Detector.from_checkpoint(checkpoint, parallel_frames=3).parallel_frames == 3
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="parallel_frames must be at least 1"):
        Detector.from_checkpoint(checkpoint, parallel_frames=0)


def test_ctrl_c_ends_with_closed_playable_outputs(clip, checkpoint, tmp_path, monkeypatch, capsys):
    interrupt_at_call(monkeypatch, Detector, "predict_tensor", 2)
    assert predict(tmp_path, checkpoint, clip, clip, extra=("--batch-size", "4")) == 0
    assert "stopped by Ctrl-C" in capsys.readouterr().out
    assert len(records(tmp_path / "clip")) == 4
    assert len(decode(tmp_path / "clip" / "clip.mp4")[0]) == 4
    assert not (tmp_path / "clip_2").exists()  # the second source is not started


def test_ctrl_c_while_frames_run_side_by_side(clip, checkpoint, tmp_path, monkeypatch, capsys):
    """Ctrl-C reaches the main thread while two batches are in the workers: the outputs hold the frames written
    before it, and no worker thread is left running."""
    from efficientdet.inference import video

    written, original = [], video.jsonl_record

    def interrupted_on_the_fifth_frame(*args, **kwargs):
        written.append(1)
        if len(written) == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(video, "jsonl_record", interrupted_on_the_fifth_frame)
    assert predict(tmp_path, checkpoint, clip, extra=("--batch-size", "2", "--parallel-frames", "2")) == 0
    assert "stopped by Ctrl-C" in capsys.readouterr().out
    assert len(records(tmp_path / "clip")) == 4
    assert len(decode(tmp_path / "clip" / "clip.mp4")[0]) == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("detect")]


def test_unreadable_and_missing_videos_are_named_and_leave_no_output(clip, checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    output = tmp_path / "out"
    extra = ("--max-frames", "1", "--no-draw")
    assert predict(output, checkpoint, bad, tmp_path / "missing.mkv", clip, extra=extra) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(str(bad) in line and "cannot open video" in line for line in err)
    assert any("missing.mkv: no such file" in line for line in err)
    assert sorted(p.name for p in output.iterdir()) == ["clip"]  # the good source still ran
    assert sorted(p.name for p in (output / "clip").iterdir()) == [JSONL_FILE]  # --no-draw: no video
    # when no source opens at all, no empty output folder is left behind
    alone = tmp_path / "alone"
    assert predict(alone, checkpoint, bad, tmp_path / "missing.mkv", extra=extra) == 1
    assert "predict: no source could be read (2 sources failed); nothing written" in capsys.readouterr().out
    assert not alone.exists()


def test_drawing_runs_beside_the_model_and_a_writing_error_reaches_the_caller(clip, checkpoint, tmp_path, monkeypatch):
    writers, original = [], VideoWriter.write

    def failing_on_the_third_frame(self, image):
        writers.append(threading.current_thread().name)
        if len(writers) == 3:
            raise OSError("No space left on device")
        original(self, image)

    monkeypatch.setattr(VideoWriter, "write", failing_on_the_third_frame)

    def fail(source, message):
        raise AssertionError(f"{source}: {message}")

    with pytest.raises(OSError, match="No space left on device"):
        predict_videos(detector(checkpoint), [clip], tmp_path / "out", fail, batch_size=2)
    assert set(writers) == {"encode clip.mp4"}  # drawn and encoded in a thread of its own
    assert len(writers) == 3  # nothing written after the error
    assert list((tmp_path / "out" / "clip").iterdir()) == []  # neither the video nor the JSONL is left


def test_sources_are_needed_and_a_camera_index_goes_through_source(checkpoint, tmp_path, capsys, monkeypatch):
    assert main(["predict", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 2
    assert "--source" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no file named "0" here
    assert predict(tmp_path / "out", checkpoint, "0") == 1
    assert "0: no such file or folder (a camera: --source 0)" in capsys.readouterr().err


def test_missing_pyav_is_one_clear_error_before_any_output(clip, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" now raises ImportError
    with pytest.raises(VideoDependencyError, match=r'pip install "efficientdet\[video\]"'):
        require_av()
    assert predict(tmp_path / "out", checkpoint, clip) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "efficientdet[video]" in err
    assert not (tmp_path / "out").exists()


def test_source_parsing():
    assert parse_source("0", platform="linux") == VideoSource("0", "camera", "/dev/video0", "v4l2")
    assert parse_source(0, platform="linux") == parse_source("0", platform="linux")  # Detector.stream(0)
    assert parse_source("/dev/video2", platform="linux").name == "camera2"
    assert parse_source("1", platform="darwin").format == "avfoundation"
    with pytest.raises(VideoError, match="^0: camera"):
        parse_source("0", platform="win32")
    rtsp = parse_source("rtsp://cam.local:554/live/ch1")
    assert (rtsp.kind, rtsp.live, rtsp.name) == ("stream", True, "cam.local_live_ch1")
    assert parse_source("HTTPS://example.org/a.m3u8").kind == "stream"
    clip = parse_source("videos/Clip.MOV")
    assert (clip.kind, clip.live, clip.name) == ("file", False, "Clip")


@pytest.mark.skipif(not sys.platform.startswith("linux") or Path("/dev/video57").exists(), reason="Linux, no camera 57")
def test_stream_takes_one_source(checkpoint):
    """A list of videos gave "expected str, bytes or os.PathLike object, not list" from inside the decoder."""
    for bad in (["a.mp4", "b.mp4"], None, 1.5):
        with pytest.raises(TypeError, match=r"^stream takes one source \(a video file, a camera index or device, a "):
            next(iter(detector(checkpoint).stream(bad)))


def test_a_missing_camera_names_the_device_it_tried(tmp_path):
    """ "7: cannot open video (No such file or directory)" before: neither the word camera nor /dev/video7."""
    for text, named in (("57", "57 (/dev/video57)"), ("/dev/video57", "/dev/video57")):
        with pytest.raises(VideoError, match=rf"^{re.escape(named)}: cannot open camera \("):
            open_source(parse_source(text, platform="linux"))
    # positional sources: videos by extension, devices and URLs; a bare number stays an image path
    assert [is_video_source(s) for s in ("a.webm", "b.AVI", "/dev/video1", "rtsp://h/x", "0", "a.jpg", "mp4")] == [
        True, True, True, True, False, False, False,
    ]  # fmt: skip
    folders = output_folders([parse_source("a/x.mp4"), parse_source("b/x.mkv"), parse_source("X.avi")], Path("o"))
    assert folders == [Path("o/x"), Path("o/x_2"), Path("o/X_3")]


def test_writer_keeps_odd_sizes(tmp_path):
    path = tmp_path / "odd.mp4"
    writer = VideoWriter(path, 33, 21, Fraction(10))
    for i in range(3):
        writer.write(np.full((21, 33, 3), 60 * i, np.uint8))
    assert not path.exists()  # under a temporary name until closed
    writer.close()
    frames, rate, size = decode(path)
    assert (len(frames), rate, size) == (3, 10, (33, 21))
    assert abs(int(frames[2].mean()) - 120) <= 3
    VideoWriter(tmp_path / "empty.mp4", 32, 32, Fraction(10)).close()  # no frame: no file (it would not play)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


def test_stream_decodes_ahead_and_stops_when_the_caller_does(clip, checkpoint):
    """Frames are decoded ahead in a thread; stopping early stops it (the generator closes the reader)."""

    def decoding() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"decode {clip}"]

    stream = detector(checkpoint).stream(clip, batch_size=2)
    first = next(stream)
    assert first.index == 0 and first.image.shape == (HEIGHT, WIDTH, 3)
    assert isinstance(first.detections["boxes"], torch.Tensor)
    assert decoding()  # still running ahead: 10 frames left, a queue of 4
    stream.close()
    assert not decoding()


@pytest.mark.parametrize("parallel_frames", [1, 2])
def test_live_sources_batch_what_has_arrived(clip, checkpoint, full_run, parallel_frames):
    """The live path (cameras, streams: batches of whatever is decoded, times from the first frame) on a local file.

    A real camera or RTSP server is not available here; FFmpeg opens the file as it would a stream URL.
    """
    live = VideoSource(str(clip), "stream", str(clip))
    results = list(detector(checkpoint).stream(live, batch_size=4, parallel_frames=parallel_frames))
    expected = records(full_run)
    assert [r.index for r in results] == list(range(FRAMES))
    assert [r.time for r in results] == pytest.approx([line["time"] for line in expected])
    for result, line in zip(results, expected):
        got = jsonl_record(result)
        assert got["labels"] == line["labels"]
        np.testing.assert_allclose(got["boxes"], line["boxes"], atol=0.02)


def test_video_speed_benchmark_encodes_each_run_with_its_own_x264_options():
    """benchmarks/video_speed.py swaps the encoder settings per run: the project's own run must encode with the
    project's X264_OPTIONS (the benchmark once emptied them, so its "video" row was timed with x264's default preset),
    a ``--x264`` run with its options, and the project's settings come back afterwards."""
    from conftest import REPO

    from efficientdet.inference import video as video_module

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import video_speed
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    project = dict(video_module.X264_OPTIONS)
    with video_speed.x264_options(video_module.X264_OPTIONS):  # the project's run passes the dict itself
        assert project == video_module.X264_OPTIONS
    with video_speed.x264_options({"preset": "ultrafast"}):
        assert video_module.X264_OPTIONS == {"preset": "ultrafast"}
    assert project == video_module.X264_OPTIONS


def test_folders_and_globs_give_their_videos_too(clip, full_run, checkpoint, tmp_path, monkeypatch, capsys):
    """A folder of photos and clips (what other detectors' predict commands take whole): the photos are drawn as
    images and each clip as a video, as if named one by one; a glob finds clips the same way. Without PyAV the
    clips are named as failures and the photos still run."""
    import shutil

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(clip, folder / "clip.mkv")
    Image.fromarray(decode(clip)[0][0]).save(folder / "frame0.png")
    out = tmp_path / "out"
    assert predict(out, checkpoint, folder, extra=("--batch-size", "5", "--save-txt")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip", "detections.json", "frame0.png", "labels"]
    assert records(out / "clip") == records(full_run)  # the same detections as the clip named on its own

    glob_out = tmp_path / "glob"
    assert predict(glob_out, checkpoint, str(folder / "*.mkv"), extra=("--batch-size", "5")) == 0
    assert records(glob_out / "clip") == records(full_run)

    import efficientdet.inference.video as video_module

    def no_av():
        raise VideoDependencyError('video, camera and stream sources need PyAV: pip install "x"')

    monkeypatch.setattr(video_module, "require_av", no_av)
    capsys.readouterr()
    no_av_out = tmp_path / "no_av"
    assert predict(no_av_out, checkpoint, folder) == 1
    assert f"{folder / 'clip.mkv'}: a video: video, camera and stream sources need PyAV" in capsys.readouterr().err
    assert sorted(p.name for p in no_av_out.iterdir()) == ["detections.json", "frame0.png"]
