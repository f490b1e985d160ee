"""Video files, cameras and network streams for ``Detector.stream`` and ``efficientdet predict`` (PyAV).

Sources: video files (``VIDEO_EXTENSIONS``), cameras (an index such as ``0``, or ``/dev/video0``) and network
streams (``rtsp://``, ``rtmp://``, ``http(s)://``). Frames are decoded by PyAV (FFmpeg's libraries in a wheel) in a
background thread and handed over through a bounded queue (``QUEUE_BATCHES`` batches): decoding runs ahead of the
model while memory stays at a few frames, whatever the length of the video. The frames are resized and normalised
by the model's own thread, as ``Detector`` does for images: torch operations in a second thread start a second
pool of intra-op threads, and on a CPU of few cores the two pools wait for each other (measured on 2 cores: half
the throughput of the model alone; with pre-processing moved out of the decoding thread, 0.9 of it). On a CPU two
batches run at once (``parallel_frames``, :mod:`efficientdet.inference.parallel`), each resized, normalised and
detected by a thread of its own with its share of torch's threads; results come out in frame order.

``efficientdet predict`` writes, per video, into ``OUTPUT/<name>/`` (``<name>``: the file's stem, ``camera0``, or
the stream's host and path; ``_2``, ... when two sources share a name):

- ``<name>.mp4``: the frames with their detections drawn, same size, frame rate divided by ``vid_stride`` (so the
  video lasts as long as the source), H.264 (libx264) where the PyAV wheel has it, else MPEG-4 part 2; the index is
  at the front of the file (``+faststart``), so it plays while downloading.
- ``detections.jsonl``: one JSON object per processed frame, in order::

      {"frame": 12, "time": 0.48, "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...],
       "names": [...]}

  ``frame`` is the 0-based index of the frame in the source (every ``vid_stride``-th), ``time`` its presentation
  time in seconds (for cameras and streams: since the first frame), boxes in frame pixels rounded to 0.01 px,
  ``labels`` 0-based class indices.
- ``labels/<name>_<frame>.txt`` with ``save_txt``: YOLO label lines per frame, as for images.
- ``crops/<class>/<name>_<frame>_<k>.jpg`` with ``save_crop``: the frame's k-th detection, as for images.

Both files are written under temporary names and renamed when closed, so a run that crashes leaves none of them.
A source that ends early (Ctrl-C, ``max_frames``, a damaged file) still gets closed, playable files. Damage is
detected two ways: FFmpeg reports an error (the frames it decoded before it are kept), or the decoded frames stop
well before the duration the file's header declares (a truncated Matroska/WebM file ends without an error).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np

from ..utils.atomic import atomic_open, create_beside
from ..viz.draw import draw_detections
from .files import class_folders, is_glob_pattern, label_path, save_crops, write_label_file, yolo_lines
from .image_urls import is_image_url
from .parallel import ordered_map

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
JSONL_FILE = "detections.jsonl"
DEFAULT_FPS = Fraction(30)  # a camera or stream that reports no frame rate (the usual webcam rate)
QUEUE_BATCHES = 2  # decoded frames held ahead of the model: two batches keep it busy without holding a whole video
NETWORK_TIMEOUT_S = 10.0  # a stream that sends nothing for this long ends (with a warning) instead of hanging
# x264's "veryfast" preset trades some compression for much faster encoding than its default "medium": the drawn
# video is for looking at, and encoding it must not hold the detector back. Quality: x264's default CRF 23.
X264_OPTIONS = {"preset": "veryfast"}
# A file counts as truncated when its last decoded frame ends more than this many frame intervals before the
# duration in its header (one interval of slack for rounding of the declared duration).
TRUNCATION_SLACK_FRAMES = 1.5
_UNSAFE = re.compile(r"[^\w.\-]+")


class VideoError(OSError):
    """A video source that cannot be opened or read; the message names the source."""


class VideoDependencyError(RuntimeError):
    """PyAV is not installed."""


def require_av() -> Any:
    """The ``av`` module, imported on first use: only video needs it, so it is an optional extra."""
    try:
        import av
    except ImportError as exc:
        raise VideoDependencyError(
            'video, camera and stream sources need PyAV: pip install "efficientdet[video]"'
        ) from exc
    return av


def check_video_options(vid_stride: int, max_frames: int | None) -> None:
    """Refuse bad video options, and a missing PyAV, before anything is read or written."""
    if vid_stride < 1:
        raise ValueError(f"vid_stride must be at least 1, got {vid_stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    require_av()


@dataclass(frozen=True)
class VideoSource:
    """A parsed source: what to open (``url``), how (``format``: an FFmpeg input device or ``None``), its kind."""

    text: str  # as the user gave it
    kind: str  # "file", "camera" or "stream"
    url: str
    format: str | None = None

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def name(self) -> str:
        """A file-system-safe base name for the outputs."""
        if self.kind == "file":
            base = Path(self.url).stem
        elif self.kind == "camera":
            base = "camera" + (self.text if self.text.isdigit() else Path(self.url).name.removeprefix("video"))
        else:
            parts = urlsplit(self.url)
            base = f"{parts.hostname or 'stream'}{parts.path}"
        return _UNSAFE.sub("_", base).strip("._") or "video"


def is_stream_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in STREAM_SCHEMES and "://" in text


def is_video_source(text: str | os.PathLike) -> bool:
    """Whether a positional ``predict`` source is a video (by extension), a ``/dev/video*`` camera or a stream URL.

    Camera indices (``0``) are only taken through ``--source``: a bare number could be a file name. An http(s) URL
    of an image file (``.../bus.jpg``) is an image (:mod:`efficientdet.inference.image_urls`), not a stream; a glob
    pattern (``clips/*.mp4``) is expanded with the images, its video files then run as videos.
    """
    text = os.fspath(text)
    if is_image_url(text):
        return False
    if is_stream_url(text):
        return True
    if is_glob_pattern(text) and not Path(text).exists():  # a glob ("clips/*.mp4"): expanded by predict
        return False
    return Path(text).suffix.lower() in VIDEO_EXTENSIONS or text.startswith("/dev/video")


def parse_source(text: str | int | os.PathLike, platform: str = sys.platform) -> VideoSource:
    """``"0"`` -> camera 0 (Video4Linux on Linux, AVFoundation on macOS), a URL -> stream, anything else -> file."""
    text = str(text) if isinstance(text, int) else os.fspath(text)
    if is_stream_url(text):
        return VideoSource(text, "stream", text)
    if text.isdigit() or text.startswith("/dev/video"):
        if platform.startswith("linux"):
            return VideoSource(text, "camera", f"/dev/video{text}" if text.isdigit() else text, "v4l2")
        if platform == "darwin" and text.isdigit():
            return VideoSource(text, "camera", text, "avfoundation")
        raise VideoError(f"{text}: camera sources need Linux (v4l2) or macOS (avfoundation, an index)")
    return VideoSource(text, "file", text)


def _frame_rate(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate).limit_denominator(1001 * 1000) if rate and rate > 0 else DEFAULT_FPS


def open_source(source: VideoSource) -> tuple[Any, Any]:
    """``(container, video stream)``; ``VideoError`` naming the source when it cannot be opened or has no video."""
    av = require_av()
    if source.kind == "file" and not Path(source.url).is_file():
        raise VideoError(f"{source.text}: no such file")
    kwargs: dict[str, Any] = {"format": source.format}
    if source.kind == "stream":
        kwargs["timeout"] = NETWORK_TIMEOUT_S
        if source.url.lower().startswith("rtsp"):
            kwargs["options"] = {"rtsp_transport": "tcp"}  # FFmpeg's default UDP loses packets on busy networks
    if source.format == "avfoundation":
        kwargs["options"] = {"framerate": "30"}  # FFmpeg's default 29.97 is refused by many Mac cameras
    shown = source.text if source.url == source.text else f"{source.text} ({source.url})"  # camera 0: /dev/video0
    what = "camera" if source.kind == "camera" else "video"
    try:
        container = av.open(source.url, **kwargs)
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{shown}: cannot open {what} ({_reason(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{shown}: cannot open {what} (no video stream in it)")
    return container, container.streams.video[0]


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without the file name PyAV appends (the caller names the source once)."""
    return getattr(exc, "strerror", None) or str(exc)


@dataclass
class DecodedFrame:
    index: int  # position of the frame in the source, 0-based
    time: float  # seconds
    image: np.ndarray  # H x W x 3 uint8 RGB


_END = object()


class FrameReader:
    """Frames decoded (and prepared) in a background thread: every ``vid_stride``-th, ``max_frames`` at most.

    Iterate over it for :class:`DecodedFrame` items; ``width``, ``height``, ``rate`` and ``frames`` (the count the
    header declares, 0 when unknown) are known as soon as it is made. After the iteration ends, ``damage`` is a
    message naming the source when the input was damaged or a stream failed, else ``None``. ``close()`` (or
    ``with``) stops the thread; it is safe to call at any time, e.g. after Ctrl-C.
    """

    def __init__(
        self,
        source: str | int | os.PathLike | VideoSource,
        vid_stride: int = 1,
        max_frames: int | None = None,
        queue_size: int = 16,
    ) -> None:
        check_video_options(vid_stride, max_frames)
        self.source = source if isinstance(source, VideoSource) else parse_source(source)
        self.vid_stride, self.max_frames = vid_stride, max_frames
        self._container, self._stream = open_source(self.source)
        self.width, self.height = self._stream.codec_context.width, self._stream.codec_context.height
        self.rate = _frame_rate(self._stream)
        self.frames = int(self._stream.frames or 0)
        self.damage: str | None = None
        self._first_time: float | None = None
        self._pending: Any = None  # an end or error seen by get_ready, handed over by the next read
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"decode {self.source.text}", daemon=True)
        self._thread.start()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[DecodedFrame]:
        while True:
            item, self._pending = (self._pending, None) if self._pending is not None else (self._queue.get(), None)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def get_ready(self, limit: int) -> list[DecodedFrame]:
        """Up to ``limit`` frames already decoded, without waiting (a live batch is whatever has arrived)."""
        ready: list[DecodedFrame] = []
        while len(ready) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _END or isinstance(item, BaseException):
                self._pending = item  # the next read ends the iteration (or raises)
                break
            ready.append(item)
        return ready

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a thread waiting for room
                self._queue.get_nowait()
        self._thread.join(timeout=NETWORK_TIMEOUT_S)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            kept = 0
            for index, frame in enumerate(self._decoded()):
                if index % self.vid_stride:
                    continue
                item = DecodedFrame(index, self._time(frame, index), frame.to_ndarray(format="rgb24"))
                if not self._put(item):
                    return
                kept += 1
                if self.max_frames is not None and kept >= self.max_frames:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            with contextlib.suppress(Exception):
                self._container.close()
            self._put(_END)

    def _time(self, frame: Any, index: int) -> float:
        t = frame.time if frame.time is not None else index / self.rate
        if self.source.live:  # device clocks and stream timestamps start anywhere: count from the first frame
            if self._first_time is None:
                self._first_time = t
            t -= self._first_time
        return float(t)

    def _decoded(self) -> Iterator[Any]:
        """Every frame of the stream, in order; damage recorded in ``self.damage`` (the frames before it are kept)."""
        av = require_av()
        stream, count, end = self._stream, 0, None
        try:
            for packet in self._container.demux(stream):  # the last packet is empty: it flushes the decoder
                for frame in packet.decode():
                    count += 1
                    end = frame.time
                    yield frame
                if self._stop.is_set():
                    return
        except (av.FFmpegError, OSError) as exc:
            with contextlib.suppress(av.FFmpegError, OSError):
                for frame in stream.decode(None):  # frames the decoder held back before the damaged packet
                    count += 1
                    yield frame
            what = "stream failed" if self.source.live else "video damaged"
            self.damage = f"{self.source.text}: {what} after {count} frames ({_reason(exc)})"
            return
        if self.source.kind == "file" and end is not None:
            declared = _declared_duration(self._container, stream)
            slack = TRUNCATION_SLACK_FRAMES / self.rate
            if declared is not None and end + 1 / self.rate < declared - slack:
                self.damage = (
                    f"{self.source.text}: video truncated or damaged: frames end at {end:.2f} s of the "
                    f"{declared:.2f} s its header declares"
                )


def _declared_duration(container: Any, stream: Any) -> float | None:
    """End time of the video stream from the file's header (the stream's own duration, else the container's)."""
    if stream.duration is not None and stream.time_base is not None:
        start = stream.start_time or 0
        return float((start + stream.duration) * stream.time_base)
    if container.duration is not None:
        start = container.start_time or 0
        return (start + container.duration) / 1_000_000  # AV_TIME_BASE: microseconds
    return None


@dataclass
class FrameResult:
    """One processed frame: ``detections`` as ``Detector.__call__`` returns them for that frame alone."""

    index: int  # 0-based position of the frame in the source
    time: float  # seconds (since the first frame for cameras and streams)
    image: np.ndarray  # H x W x 3 uint8 RGB
    detections: dict[str, Any] = field(default_factory=dict)


def frame_batches(reader: FrameReader, batch_size: int) -> Iterator[list[DecodedFrame]]:
    """The reader's frames in batches of ``batch_size``: files fill every batch; for cameras and streams a batch is
    whatever has arrived (at least one frame), so a slow model adds no waiting on top."""
    frames = iter(reader)
    while True:
        first = next(frames, None)
        if first is None:
            return
        batch = [first]
        if reader.source.live:
            batch += reader.get_ready(batch_size - 1)
        else:
            batch += [f for _, f in zip(range(batch_size - 1), frames)]
        yield batch


def detect_frames(detector: Any, reader: FrameReader, batch_size: int, parallel: int = 1) -> Iterator[FrameResult]:
    """Run ``detector`` over the reader's frames, ``batch_size`` at a time and ``parallel`` batches at once (in
    threads, :func:`~efficientdet.inference.parallel.ordered_map`), in order; ``VideoError`` at the end on damage.
    """

    def detect(batch: list[DecodedFrame]) -> list[FrameResult]:
        dets = detector([f.image for f in batch])
        return [FrameResult(f.index, f.time, f.image, det) for f, det in zip(batch, dets)]

    for results in ordered_map(detect, frame_batches(reader, batch_size), parallel):
        yield from results
    if reader.damage is not None:
        raise VideoError(reader.damage)


def stream(
    detector: Any,
    source: str | int | os.PathLike | VideoSource,
    batch_size: int | None = None,
    vid_stride: int = 1,
    max_frames: int | None = None,
    parallel_frames: int | None = None,
) -> Iterator[FrameResult]:
    """``Detector.stream``: open, detect frame by frame, close (also when the caller stops early); ``batch_size``
    frames per forward pass and ``parallel_frames`` passes at once, by default the detector's."""
    batch_size = detector.batch_size if batch_size is None else batch_size
    parallel = _parallel_frames(detector, parallel_frames)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    reader = FrameReader(source, vid_stride, max_frames, QUEUE_BATCHES * batch_size)
    with reader:
        yield from detect_frames(detector, reader, batch_size, parallel)


def _parallel_frames(detector: Any, parallel_frames: int | None) -> int:
    """``parallel_frames`` checked, or the detector's when not given."""
    if parallel_frames is None:
        return detector.parallel_frames
    if parallel_frames < 1:
        raise ValueError(f"parallel_frames must be at least 1, got {parallel_frames}")
    return parallel_frames


def _encoder(av: Any) -> str:
    """libx264 where the wheel has it (PyPI's PyAV wheels do), else FFmpeg's own MPEG-4 part 2 encoder."""
    try:
        av.Codec("libx264", "w")
        return "libx264"
    except (av.FFmpegError, ValueError):
        return "mpeg4"


class VideoWriter:
    """An MP4 written to a temporary name and renamed to ``path`` by ``close()``; ``discard()`` removes it.

    Frames are numbered 0, 1, 2, ... at ``rate``, so the stream's frame rate is exactly ``rate``.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: Fraction) -> None:
        av = require_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_beside(self.path)
        self._tmp = str(tmp)
        os.close(fd)
        self.count = 0
        try:
            self._container = av.open(self._tmp, "w", format="mp4", options={"movflags": "+faststart"})
            codec = _encoder(av)
            options = X264_OPTIONS if codec == "libx264" else {}
            self._stream = self._container.add_stream(codec, rate=rate, options=options)
            self._stream.width, self._stream.height = width, height
            # 4:2:0 needs even sides; odd ones keep full chroma (x264 High 4:4:4) rather than change the size
            even = width % 2 == 0 and height % 2 == 0
            self._stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
        except BaseException:
            self.discard()
            raise

    def write(self, image: np.ndarray) -> None:
        av = require_av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = frame.reformat(width=self._stream.width, height=self._stream.height, format=self._stream.pix_fmt)
        frame.pts = self.count
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.count += 1

    def close(self) -> None:
        """Flush the encoder, write the index, and move the file into place (no file when no frame was written)."""
        if not self.count:  # an MP4 without frames plays nowhere
            self.discard()
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


@contextlib.contextmanager
def video_writer(path: str | os.PathLike, width: int, height: int, rate: Fraction) -> Iterator[VideoWriter]:
    """A :class:`VideoWriter` closed (kept) when the block ends normally, discarded when it raises."""
    writer = VideoWriter(path, width, height, rate)
    try:
        yield writer
    except BaseException:
        writer.discard()
        raise
    writer.close()


def jsonl_record(result: FrameResult, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``detections.jsonl`` line of one frame (boxes rounded to 0.01 px, as ``detections.json``)."""
    det = result.detections
    names = det.get("label_names")
    if names is None:
        names = [class_names[int(k)] if class_names else str(int(k)) for k in det["labels"]]
    return {
        "frame": result.index,
        "time": round(result.time, 6),
        "boxes": [[round(float(v), 2) for v in box] for box in det["boxes"].tolist()],
        "scores": [float(s) for s in det["scores"].tolist()],
        "labels": [int(k) for k in det["labels"].tolist()],
        "names": list(names),
    }


def draw_frame(result: FrameResult, class_names: Sequence[str]) -> np.ndarray:
    """The frame with its detections drawn (boxes, names, scores), as predict draws images."""
    det = result.detections
    return np.asarray(draw_detections(result.image, det["boxes"], det["labels"], det["scores"], class_names))


class DrawingThread:
    """Draws each frame's detections and encodes the frame into a :class:`VideoWriter` in a thread of its own, at
    most ``limit`` frames behind the caller.

    Drawing (PIL) and H.264 encoding (FFmpeg) release the GIL for most of their work, so they run beside the
    network's next batch instead of adding to every frame's time, as the decoding thread of :class:`FrameReader`
    does on the input side. An error while writing is raised by the next ``put`` or by ``finish``; frames after it
    are dropped (and the caller then discards the file).
    """

    def __init__(self, writer: VideoWriter, class_names: Sequence[str], limit: int) -> None:
        self._writer, self._names = writer, class_names
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, limit))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"encode {writer.path.name}", daemon=True)
        self._thread.start()

    def put(self, result: FrameResult) -> None:
        self._raise_error()
        self._queue.put(result)  # the thread never stops before _END, so room always comes

    def finish(self) -> None:
        """Returns once every frame put so far is written; raises the thread's error, if there was one."""
        self._queue.put(_END)
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None:
                try:
                    self._writer.write(draw_frame(item, self._names))
                except BaseException as exc:  # raised in the caller's thread
                    self._error = exc


@contextlib.contextmanager
def drawing_thread(writer: VideoWriter, class_names: Sequence[str], limit: int) -> Iterator[DrawingThread]:
    """A :class:`DrawingThread` that has written every frame put when the block ends (or raised the block's
    error, after letting the thread finish: the writer must not be closed under it)."""
    drawing = DrawingThread(writer, class_names, limit)
    try:
        yield drawing
    except BaseException:
        with contextlib.suppress(Exception):  # the block's own error is the one to report
            drawing.finish()
        raise
    drawing.finish()


@dataclass
class VideoRun:
    """What :func:`predict_videos` did: frames processed, detections, outputs, and whether Ctrl-C ended it."""

    videos: int = 0
    frames: int = 0
    detections: int = 0
    capped: int = 0  # frames whose detections reached the detector's max_det
    outputs: list[Path] = field(default_factory=list)
    interrupted: bool = False


def output_folders(sources: Sequence[VideoSource], output: Path) -> list[Path]:
    """``OUTPUT/<name>`` per source, distinct (case-insensitively), never an existing file."""
    taken: set[str] = set()
    folders = []
    for source in sources:
        base, n = source.name, 1
        candidate = base
        while candidate.casefold() in taken or (output / candidate).is_file():
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate.casefold())
        folders.append(output / candidate)
    return folders


def predict_videos(
    detector: Any,
    sources: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    fail: Callable[[str, str], None],
    *,
    batch_size: int | None = None,
    parallel_frames: int | None = None,
    vid_stride: int = 1,
    max_frames: int | None = None,
    draw: bool = True,
    save_txt: bool = False,
    save_conf: bool = False,
    save_crop: bool = False,
    progress: bool = False,
    progress_file: IO[str] | None = None,
) -> VideoRun:
    """``efficientdet predict`` on video sources: per source a drawn video and ``detections.jsonl`` (module docs).

    A source that cannot be opened or is damaged is reported through ``fail(source, message)``; the frames before
    the damage are kept. Ctrl-C closes the current source's files (playable) and skips the remaining sources.
    ``batch_size``: frames per forward pass, ``parallel_frames``: passes run at once; by default the detector's.
    """
    from ..utils.progress import progress_bar

    batch_size = detector.batch_size if batch_size is None else batch_size
    parallel = _parallel_frames(detector, parallel_frames)

    crop_folders = class_folders(detector.class_names) if save_crop else []
    run = VideoRun()
    parsed: list[VideoSource] = []
    for text in sources:
        try:
            parsed.append(parse_source(text))
        except VideoError as exc:
            fail(os.fspath(text), str(exc))
    out = Path(output)
    for source, folder in zip(parsed, output_folders(parsed, out)):
        try:
            reader = FrameReader(source, vid_stride, max_frames, QUEUE_BATCHES * batch_size)
        except VideoError as exc:
            fail(source.text, str(exc))
            continue
        total = -(-reader.frames // vid_stride) if reader.frames and not source.live else None  # ceil
        if total is not None and max_frames is not None:
            total = min(total, max_frames)
        bar = progress_bar(total=total, desc=folder.name, enabled=progress, unit="frame", file=progress_file)
        with reader, bar, contextlib.ExitStack() as files:
            lines = files.enter_context(atomic_open(folder / JSONL_FILE, "w", encoding="utf-8", newline="\n"))
            drawing = None
            if draw:  # closed in reverse: the thread finishes, then the writer closes (or both are discarded)
                path = folder / f"{folder.name}.mp4"
                writer = files.enter_context(video_writer(path, reader.width, reader.height, reader.rate / vid_stride))
                drawing = files.enter_context(drawing_thread(writer, detector.class_names, QUEUE_BATCHES * batch_size))
            run.videos += 1
            try:
                for result in detect_frames(detector, reader, batch_size, parallel):
                    lines.write(json.dumps(jsonl_record(result, detector.class_names)) + "\n")
                    det = result.detections
                    if save_txt:
                        rows = yolo_lines(det["boxes"], det["labels"], det["scores"] if save_conf else None,
                                          result.image.shape[:2])  # fmt: skip
                        write_label_file(label_path(folder, f"{folder.name}_{result.index:06d}"), rows)
                    if save_crop:
                        save_crops(result.image, det["boxes"], det["labels"], crop_folders, folder,
                                   f"{folder.name}_{result.index:06d}")  # fmt: skip
                    if drawing is not None:
                        drawing.put(result)
                    run.frames += 1
                    run.detections += len(det["labels"])
                    run.capped += len(det["labels"]) >= detector.max_det
                    bar.update(1)
            except VideoError as exc:
                fail(source.text, f"warning: {exc}; kept the frames before it")
            except KeyboardInterrupt:
                run.interrupted = True
            run.outputs.append(folder)
        if run.interrupted:
            break
    return run


__all__ = [
    "JSONL_FILE",
    "VIDEO_EXTENSIONS",
    "FrameReader",
    "FrameResult",
    "VideoError",
    "VideoRun",
    "VideoSource",
    "VideoWriter",
    "check_video_options",
    "detect_frames",
    "is_video_source",
    "jsonl_record",
    "parse_source",
    "predict_videos",
    "stream",
]
