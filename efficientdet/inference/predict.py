"""``efficientdet predict``: run a checkpoint over image files, folders and globs; draw the boxes; save the results.

Output folder contents:

- one drawn copy of every readable input (boxes, class names and scores; RGB, same format as the input where
  Pillow can write it, else PNG), named by its path relative to the folder or glob base it was found under, so
  ``photos/2023/a.jpg`` found under ``photos/`` becomes ``OUT/2023/a.jpg``. Names that would collide (two ``a.jpg``
  from different folders, or a case-only difference) or that would land on an input file (``--output`` pointing
  at the input folder) get ``_2``, ``_3``, ... before the extension: an input is never overwritten.
- ``detections.json``: a COCO *results* list (what ``COCO.loadRes`` and the evaluation server take), one entry
  per detection, plus the two names a human needs::

      {"image_id": 3, "file_name": "photos/2023/a.jpg", "category_id": 1, "category_name": "raccoon",
       "bbox": [x, y, width, height], "score": 0.87}

  ``image_id`` is the 1-based position of the file in the expanded, de-duplicated input list, so ids do not shift
  when another file fails to load. ``category_id`` is the training dataset's own id of the class when the model
  knows it (a model trained on a COCO JSON; effdet's 90-class COCO weights: the COCO category id, slot + 1), else
  the 0-based class index + 1, the same convention as ``efficientdet eval`` for data without ids of its own.
  ``file_name`` is the input path as found (POSIX separators), or the URL of an image given by URL. Boxes are
  in original-image pixels, rounded to 0.01 px. Images without detections have no entries.

Optional files, named after the drawn image (``2023/a.jpg`` -> ``2023/a``; inputs differing only by extension
get ``_2``, ... here too):

- ``labels/2023/a.txt`` (``save_txt``): YOLO label lines ``class cx cy w h`` normalised to 0..1 by the image's width
  and height, plus the score with ``save_conf``; an image without detections gets an empty file (boxes
  clipped flat against the border are left out). With the images
  in an ``images/`` folder beside ``labels/`` and a ``data.yaml`` naming the model's classes, this is a dataset
  that ``efficientdet train --format yolo`` reads (the score column is ignored there).
- ``crops/<class>/2023/a_<k>.jpg`` (``save_crop``): the k-th detection of the image (0-based, as listed) cut from
  the original, rounded to whole pixels and clipped to the image; class names are made file-system safe.

Images given by http(s) URL whose path names an image file (``https://example.com/bus.jpg``) are downloaded into a
temporary folder for the run (:mod:`efficientdet.inference.image_urls`) and then treated like files, named after
the URL's file name; other http(s) URLs are streams (below).

Unreadable files are reported on stderr by name and skipped; the run goes on and ``PredictSummary.failures``
(and the exit code of the command) says whether anything failed.

Memory: images are decoded one at a time and only the current batch is held (``batch_size`` images, fewer when
they are large: a batch is closed once it holds ``BATCH_PIXEL_BUDGET`` pixels), so a folder of any size runs in
the memory of one batch. Very large images are expected here (a user pointing the tool at their own
10000x10000 scan wants a result, not a warning), so Pillow's decompression-bomb check is replaced during the run
by ``max_pixels``: by default the same limit at which Pillow refuses (about 179 million pixels, 13377 x 13377);
larger files are reported as failures, and ``max_pixels=0`` removes the limit.

Video files (by extension; also those that folders and globs hold), ``/dev/video*`` cameras and stream URLs among
the sources, and every ``video_sources`` entry (``--source``: also camera indices such as ``0``), are run frame by
frame after the images: a drawn video and ``detections.jsonl`` per source in ``OUTPUT/<name>/`` (see
:mod:`efficientdet.video`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from ..data.coco_format import detections_to_coco
from ..data.images import ImageReadError, decode_image, full_picture, image_size
from ..models.detector import EfficientDet
from ..ops.postprocess import MAX_DETECTIONS, NMS_IOU, NMS_METHODS
from ..utils.atomic import atomic_open
from ..utils.folders import output_clash
from ..utils.text import counted
from ..viz.draw import draw_detections
from .files import class_folders, image_stems, is_glob_pattern, label_path, save_crops, write_label_file, yolo_lines
from .image_urls import ImageDownloadError, download_image, is_image_url, naming_url, url_file_name
from .tiling import DEFAULT_TILE_OVERLAP, too_many_tiles
from .video import (
    VIDEO_EXTENSIONS,
    VideoDependencyError,
    check_video_options,
    is_stream_url,
    is_video_source,
    predict_videos,
)

# Extensions picked up from folders and globs (files named explicitly are tried whatever their extension).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
DEFAULT_OUTPUT = "runs/predict"
DEFAULT_SCORE_THRESHOLD = 0.3  # drawn images are for looking at: 0.05 (the Detector's default) clutters them
# Pillow's DecompressionBombError limit (2 x Image.MAX_IMAGE_PIXELS); 10000 x 10000 is below it.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
# A batch is closed early once its decoded images hold this many pixels (3 bytes each): one 10000 x 10000 image
# runs alone instead of in a batch of eight 300 MB arrays.
BATCH_PIXEL_BUDGET = 32_000_000
DETECTIONS_FILE = "detections.json"
JPEG_QUALITY = 95  # re-encoding a photo with Pillow's default 75 visibly degrades it


@dataclass(frozen=True)
class SourceImage:
    """One input file and its output name (relative to the output folder, before collisions are resolved)."""

    path: Path
    name: str
    origin: str | None = None  # the URL of an image downloaded to ``path``

    @property
    def shown(self) -> str:
        """How results and messages name the image: its URL, or its path as found (POSIX separators)."""
        return self.origin or self.path.as_posix()

    def naming(self, message: str) -> str:
        """``message`` (e.g. a decoding error, which names the file read) with a downloaded file's temporary path
        replaced by its URL."""
        return naming_url(message, self.path, self.origin) if self.origin else message


def nothing_read_line(failed: int) -> str:
    """The summary of a run in which no source could be read (each was named as it failed): nothing is written."""
    return f"predict: no source could be read ({counted(failed, 'source')} failed); nothing written"


@dataclass
class PredictSummary:
    """What a run did; ``exit_code`` is 130 when Ctrl-C left images unprocessed, else 1 when any source or file
    failed, else 0 (Ctrl-C is how a camera or stream run ends: that alone is no failure)."""

    images: int = 0  # images read and processed
    detections: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source or file, message naming it)
    seconds: float = 0.0
    output: Path | None = None
    detections_path: Path | None = None
    drawn: list[Path] = field(default_factory=list)
    videos: int = 0  # video sources processed (see efficientdet.video)
    frames: int = 0  # their frames processed
    interrupted: bool = False  # Ctrl-C ended the run (a video's files are closed and playable)
    images_left: int = 0  # images Ctrl-C left unprocessed (their drawings and detections are not written)
    capped: int = 0  # images and frames whose detections reached max_det: a dense scene may hold more
    max_det: int = MAX_DETECTIONS

    @property
    def exit_code(self) -> int:
        if self.images_left:
            return 130  # 128 + SIGINT: what a shell reports for a command Ctrl-C stopped
        return 1 if self.failures else 0

    def line(self) -> str:
        """The one-line summary the command prints."""
        if self.output is None and not (self.images or self.videos):
            return nothing_read_line(len(self.failures))
        where = f"; results in {self.output}" if self.output is not None else ""
        videos = f"{counted(self.frames, 'frame')} of {counted(self.videos, 'video')}, " if self.videos else ""
        left = f": {counted(self.images_left, 'image')} not processed" if self.images_left else ""
        stopped = f" (stopped by Ctrl-C{left})" if self.interrupted else ""
        capped = ""
        if self.capped:
            what = "image" if not self.videos else "image or frame" if self.images else "frame"
            capped = (f"; {counted(self.capped, what)} reached --max-det {self.max_det} detections (more objects may "
                      "be there: raise --max-det)")  # fmt: skip
        return (
            f"predict: {counted(self.images, 'image')}, {videos}{counted(self.detections, 'detection')}, "
            f"{len(self.failures)} failed, "
            f"{self.seconds:.1f} s{where}{stopped}{capped}"
        )


def _glob_base(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard: output names are taken relative to it."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if is_glob_pattern(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


SOURCE_LIST_SUFFIX = ".txt"  # a file listing sources, one per line


def is_picture_source(source: str | os.PathLike) -> bool:
    """Whether a ``--source`` value (a video source whatever its name) names pictures instead: a folder, an image
    file, a glob pattern, an image URL or a list of sources. Only cameras, devices, streams and other files are
    video sources then; ultralytics' ``source=`` takes all of these alike, and its users type them so."""
    text = os.fspath(source)
    path = Path(text)
    if text.isdigit():  # a camera index, even beside a folder of that name
        return False
    if is_image_url(text) or path.is_dir():
        return True
    if is_stream_url(text):  # rtsp://cam/live?channel=1 holds a "?" and is no glob
        return False
    if path.is_file():
        return _is_image_file(path) or path.suffix.lower() == SOURCE_LIST_SUFFIX
    return is_glob_pattern(text)


def listed_sources(sources: Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """``sources`` with each ``.txt`` file replaced by the sources it lists, one per line (blank lines and ``#``
    comments skipped); a relative entry not found from the working folder is taken from the list's folder."""
    out: list[str | os.PathLike] = []
    for source in sources:
        path = Path(source)
        if path.suffix.lower() != SOURCE_LIST_SUFFIX or not path.is_file():
            out.append(source)
            continue
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            beside = path.parent / entry
            local = Path(entry).exists() or Path(entry).is_absolute() or "://" in entry or not beside.exists()
            out.append(entry if local else str(beside))
    return out


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file()


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _folder_images(
    folder: Path, recursive: bool, exclude: Path | None, kind: Callable[[Path], bool] = _is_image_file
) -> list[Path]:
    """Image files (or the files ``kind`` accepts) of a folder, sorted; an ``exclude`` folder strictly inside it
    (the output) is skipped."""
    skip = exclude if exclude is not None and exclude.resolve() != folder.resolve() else None
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in entries if kind(p) and not (skip is not None and _is_within(p, skip)))


def expand_sources(
    sources: Sequence[str | os.PathLike],
    recursive: bool = False,
    exclude: str | os.PathLike | None = None,
    download_to: str | os.PathLike | None = None,
    videos: list[Path] | None = None,
) -> tuple[list[SourceImage], list[tuple[str, str]]]:
    """Files, folders, glob patterns and image URLs -> the image files to process, plus one error per source that
    found none.

    Folders give their image files (sorted; subfolders with ``recursive``), globs (``*``, ``?``, ``[...]``, and
    ``**`` across folders) their matching image files and the image files of matching folders; a path that exists
    is taken as it is. A file reached twice (two sources, or through a symlink) is processed once. Image URLs
    (:func:`~efficientdet.inference.image_urls.is_image_url`) are downloaded into ``download_to`` (which the
    caller removes afterwards); without it they are errors. With ``videos`` (a list), the video files (by
    extension) of folders and globs are appended to it (each once); without it they are passed over.
    """
    exclude_path = Path(exclude) if exclude is not None else None
    found: list[SourceImage] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: Path, root: Path) -> None:
        key = os.path.realpath(path)
        if key in seen:
            return
        seen.add(key)
        try:
            name = os.path.relpath(path, root).replace(os.sep, "/")
        except ValueError:  # another drive (Windows)
            name = path.name
        if name.startswith("../") or os.path.isabs(name):  # "a/*/../b.jpg": keep outputs inside the folder
            name = path.name
        found.append(SourceImage(path, name))

    def add_videos(clips: list[Path]) -> None:
        for clip in clips:
            key = os.path.realpath(clip)
            if videos is not None and key not in seen:
                seen.add(key)
                videos.append(clip)

    for source in map(str, sources):
        path = Path(source)
        if is_image_url(source):
            if source in seen:
                continue
            seen.add(source)
            if download_to is None:
                errors.append((source, f"{source}: an image URL needs a folder to download to"))
                continue
            try:
                found.append(
                    SourceImage(download_image(source, download_to, len(found)), url_file_name(source), source)
                )
            except ImageDownloadError as exc:
                errors.append((source, str(exc)))
        elif path.is_dir():
            images = _folder_images(path, recursive, exclude_path)
            clips = _folder_images(path, recursive, exclude_path, _is_video_file) if videos is not None else []
            add_videos(clips)
            if not images and not clips:
                has_subfolders = not recursive and any(p.is_dir() for p in path.iterdir())
                hint = " (--recursive searches its subfolders)" if has_subfolders else ""
                errors.append((source, f"{source}: no images in this folder{hint}"))
            for image in images:
                add(image, path)
        elif path.exists():
            add(path, path.parent)
        elif is_glob_pattern(source):
            base = _glob_base(source)
            matches = sorted(Path(m) for m in glob.glob(source, recursive=True))
            images, clips = [], []
            for match in matches:
                if match.is_dir():
                    images += _folder_images(match, recursive, exclude_path)
                    if videos is not None:
                        clips += _folder_images(match, recursive, exclude_path, _is_video_file)
                elif _is_image_file(match):
                    images.append(match)
                elif videos is not None and _is_video_file(match):
                    clips.append(match)
            add_videos(clips)
            if not images and not clips:
                what = "no image files" if matches else "nothing"
                errors.append((source, f"{source}: matches {what}"))
            for image in images:
                add(image, base)
        else:
            hint = f" (a camera: --source {source})" if source.isdigit() else ""
            errors.append((source, f"{source}: no such file or folder{hint}"))
    return found, errors


def _writable_name(name: str) -> str:
    """``name`` if Pillow can write its extension, else ``name + ".png"`` (e.g. a JPEG saved as ``photo.dat``)."""
    fmt = Image.registered_extensions().get(Path(name).suffix.lower())
    return name if fmt is not None and fmt in Image.SAVE else name + ".png"


def output_names(images: Sequence[SourceImage], output: str | os.PathLike) -> list[Path]:
    """A distinct output path per image that is never one of the inputs (``_2``, ``_3``, ... added on collision).

    Names are compared case-insensitively, so the outputs are distinct on case-insensitive file systems too.
    """
    out = Path(output)
    inputs = {os.path.normcase(os.path.realpath(img.path)) for img in images}
    taken = {DETECTIONS_FILE}

    def clashes(candidate: Path) -> bool:
        return candidate.as_posix().casefold() in taken or os.path.normcase(os.path.realpath(out / candidate)) in inputs

    paths = []
    for img in images:
        name = Path(_writable_name(img.name))
        candidate, n = name, 1
        while clashes(candidate):
            n += 1
            candidate = name.with_name(f"{name.stem}_{n}{name.suffix}")
        taken.add(candidate.as_posix().casefold())
        paths.append(out / candidate)
    return paths


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's global bomb check off for the run (``check_pixels`` applies ``max_pixels``), restored afterwards."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_pixels(path: str | os.PathLike, max_pixels: int) -> None:
    """Raise ``ImageReadError`` if the image file ``path`` has more than ``max_pixels`` pixels (0: no limit).

    From the header alone: an oversized file is refused before hundreds of megabytes are decoded.
    """
    if max_pixels:
        width, height = image_size(path)
        if width * height > max_pixels:
            raise ImageReadError(
                f"{path}: cannot read image ({width}x{height} = {width * height:,} pixels is over the limit of "
                f"{max_pixels:,}; raise it with --max-pixels, 0 for none)"
            )


def _save_drawn(image: Image.Image, path: Path) -> None:
    """Write atomically in the format the extension names (a killed run never leaves half an image)."""
    fmt = Image.registered_extensions()[path.suffix.lower()]
    options: dict[str, Any] = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    with atomic_open(path, "wb") as f:
        image.save(f, format=fmt, **options)


def _load_model(checkpoint: Any, model_name: str | None) -> Any:
    from ..models.factory import load_checkpoint

    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint
    return load_checkpoint(checkpoint, model_name)


def _check_options(
    score_threshold: float, iou_threshold: float, max_det: int, batch_size: int | None, nms: str
) -> None:
    from .detector import check_detection_options

    check_detection_options(score_threshold, iou_threshold, max_det)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if nms not in NMS_METHODS:
        raise ValueError(f"nms must be one of {', '.join(NMS_METHODS)}, got {nms!r}")


def predict(
    sources: Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike | torch.nn.Module,
    output: str | os.PathLike = DEFAULT_OUTPUT,
    *,
    model_name: str | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    nms: str = "hard",
    class_agnostic: bool = False,
    max_det: int = MAX_DETECTIONS,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    image_size: int | None = None,
    recursive: bool = False,
    draw: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    class_names: Sequence[str] | None = None,
    classes: str | Sequence[int | str] | None = None,
    save_txt: bool = False,
    save_conf: bool = False,
    save_crop: bool = False,
    tile: int = 0,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
    errors: IO[str] | bool = True,
    progress: bool | None = False,
    video_sources: Sequence[str | os.PathLike] = (),
    vid_stride: int = 1,
    max_frames: int | None = None,
    parallel_frames: int | None = None,
    optimize: bool = True,
    flip_tta: bool = False,
    vote_iou: float | None = None,
) -> PredictSummary:
    """Detect objects in every image that ``sources`` name; write drawn copies and ``detections.json`` to ``output``.

    Args:
        sources: image files, folders (their image and video files; subfolders with ``recursive``), glob
            patterns, image URLs, video files, cameras and stream URLs.
        checkpoint: a model file (ours; effdet's with ``model_name``) or an already built model.
        output: folder for the drawn images and ``detections.json`` (created; see the module docstring for names;
            not created when no source can be read: the summary's ``output`` is then None).
        score_threshold, iou_threshold, nms, class_agnostic, max_det, image_size, class_names: passed to
            :class:`~efficientdet.inference.Detector` (``nms="soft"``: Gaussian soft-NMS, sigma 0.5).
        batch_size: images per forward pass (fewer when they are large, see ``BATCH_PIXEL_BUDGET``); default
            :func:`~efficientdet.inference.detector.default_batch_size`: 1 on a CPU, 8 on a GPU.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        classes: keep only these classes: names (case-insensitive) or 0-based indices, a list or ``"cat,2"``.
        draw: ``False`` writes no drawn images.
        save_txt, save_conf: write ``labels/<name>.txt`` per image (YOLO lines; ``save_conf``: with scores).
        save_crop: write ``crops/<class>/<name>_<k>.jpg`` per detection.
        tile, tile_overlap: sliced inference for large images with small objects (:mod:`efficientdet.tiling`):
            tiles of ``tile`` px overlapping by ``tile_overlap`` plus a full-image pass, ``batch_size`` per forward
            pass; each image is then run on its own. 0: off.
        max_pixels: larger images are reported as failures without being decoded (0: no limit).
        errors: where each failure is reported as it happens: ``True`` stderr, ``False`` nowhere, or a text
            stream; the summary lists them all either way.
        progress: report progress on stderr: a bar on a terminal, else (a log file) a plain line every 30 s;
            ``None`` is the same as ``True``.
        video_sources: video files, cameras (``0``, ``/dev/video0``) or stream URLs, whatever their names (video
            files, ``/dev/video*`` and URLs in ``sources`` are found by name); needs PyAV.
        vid_stride, max_frames: videos: process every ``vid_stride``-th frame, at most ``max_frames`` per source.
        parallel_frames: videos: frames run at once, each in a thread with its share of torch's threads
            (default: 2 for the torch network on a CPU, else 1; :mod:`efficientdet.inference.parallel`).
        optimize: run a copy of the network with BN and SAME pads folded (channels-last on the CPU), as ``bench``
            times it: ~1.6x faster on a 2-core CPU (Lite0 448 px), boxes equal to the unfolded network's within
            float rounding (~1e-3 px). Exported files run as they are.
        flip_tta: each image also runs mirrored left-right, the detections merged (twice the network time).
        vote_iou: box voting after NMS at this IoU (:class:`~efficientdet.inference.Detector`); None: off.

    Raises ``ValueError`` for invalid options (``UnknownClassError``, a subclass, for an unknown class) and
    ``CheckpointError`` / ``FileNotFoundError`` for a bad model file, before any image is read or any file written.
    Unreadable images are not exceptions: they are in ``PredictSummary.failures``.
    """
    from ..utils.progress import progress_bar
    from .detector import Detector

    start = time.perf_counter()
    _check_options(score_threshold, iou_threshold, max_det, batch_size, nms)
    save_txt = save_txt or save_conf  # a score column needs a label file to go in
    out = Path(output)
    problem = output_clash(("output", out, "folder"))
    if problem:
        raise ValueError(problem)
    if isinstance(sources, (str, os.PathLike)):  # one source, not a sequence of characters
        sources = [sources]
    pictures = [s for s in video_sources if is_picture_source(s)]  # `--source photos/` as ultralytics takes it
    sources = listed_sources([*sources, *pictures])
    videos = [*(s for s in sources if is_video_source(s)), *(s for s in video_sources if s not in pictures)]
    sources = [s for s in sources if not is_video_source(s)]
    if videos:
        check_video_options(vid_stride, max_frames)
    model = _load_model(checkpoint, model_name)
    detector = Detector(
        model, device=device, image_size=image_size,
        optimize=optimize and isinstance(model, EfficientDet), score_threshold=score_threshold,
        iou_threshold=iou_threshold, max_det=max_det, class_names=class_names, nms=nms,
        class_agnostic=class_agnostic, classes=classes, tile=tile, tile_overlap=tile_overlap, batch_size=batch_size,
        flip_tta=flip_tta, vote_iou=vote_iou, parallel_frames=parallel_frames,
    )  # fmt: skip
    batch_size = detector.batch_size
    with contextlib.ExitStack() as downloads:  # images given by URL live in a temporary folder for the run
        folder = None
        if any(is_image_url(s) for s in sources):
            folder = downloads.enter_context(tempfile.TemporaryDirectory(prefix="efficientdet-url-images-"))
        found_videos: list[Path] = []  # in folders and globs
        images, source_errors = expand_sources(sources, recursive, exclude=out, download_to=folder, videos=found_videos)
        summary = PredictSummary(output=out, detections_path=out / DETECTIONS_FILE, max_det=detector.max_det)
        bar = progress_bar(total=len(images), enabled=progress is not False, unit="img")

        stream = sys.stderr if errors is True else errors or None  # resolved now: sys.stderr may have been replaced

        def fail(name: str, message: str) -> None:
            summary.failures.append((name, message))
            if stream is not None:
                bar.write(message, file=stream)  # beside a terminal bar, without breaking it

        for source, message in source_errors:
            fail(source, message)
        if found_videos:
            try:
                check_video_options(vid_stride, max_frames)
                named = set(map(str, videos))
                videos += [str(v) for v in found_videos if str(v) not in named]
            except VideoDependencyError as exc:  # the images still run
                for clip in found_videos:
                    fail(str(clip), f"{clip}: a video: {exc}")
        if not images and not videos:  # nothing to run at all: bad input, so no output folder is made
            summary.output = summary.detections_path = None
            summary.seconds = time.perf_counter() - start
            return summary
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        destinations = output_names(images, out)
        stems = image_stems(destinations, out) if save_txt or save_crop else []
        folders = class_folders(detector.class_names) if save_crop else []
        keep_pixels = draw or save_crop or tile  # the decoded image is held until tiled, drawn or cropped
        results: list[dict] = []
        batch: list[tuple[int, np.ndarray | None, torch.Tensor | None, float, tuple[int, int]]] = []

        finished = 0  # images done or failed; Ctrl-C leaves the rest

        def advance() -> None:  # one image done or failed
            nonlocal finished
            finished += 1
            bar.update(1)

        def run_batch() -> None:
            if tile:  # one image, cut into tiles and run batch_size tiles at a time by the Detector
                dets = detector([item[1] for item in batch])
            else:
                tensors = torch.cat([item[2] for item in batch])
                dets = detector.predict_tensor(tensors, [item[3] for item in batch], [item[4] for item in batch])
            for det in dets:
                index, array, _, _, size = batch.pop(0)  # the batch lets go of each image as soon as it is done
                img = images[index]
                entries = detections_to_coco([index + 1], [det], detector.category_ids)
                for entry, name in zip(entries, det["label_names"]):
                    results.append({
                        "image_id": entry["image_id"], "file_name": img.shown,
                        "category_id": entry["category_id"], "category_name": name,
                        "bbox": entry["bbox"], "score": entry["score"],
                    })  # fmt: skip
                summary.images += 1
                summary.detections += len(entries)
                summary.capped += len(det["labels"]) >= detector.max_det
                try:
                    if save_txt:
                        scores = det["scores"] if save_conf else None
                        lines = yolo_lines(det["boxes"], det["labels"], scores, size)
                        write_label_file(label_path(out, stems[index]), lines)
                    if save_crop:
                        save_crops(array, det["boxes"], det["labels"], folders, out, stems[index])
                except (OSError, ValueError) as exc:
                    fail(img.shown, f"{img.shown}: cannot write its label file or crops: {exc}")
                if draw:
                    canvas = Image.fromarray(array)
                    del array  # one full-size copy fewer while drawing a huge image
                    try:
                        drawn = draw_detections(
                            canvas, det["boxes"], det["labels"], det["scores"], detector.class_names
                        )
                        del canvas
                        _save_drawn(drawn, destinations[index])
                        summary.drawn.append(destinations[index])
                    except (OSError, ValueError) as exc:
                        fail(img.shown, f"{img.shown}: cannot write {destinations[index]}: {exc}")
                advance()

        with _pixel_limit(max_pixels), bar, contextlib.suppress(KeyboardInterrupt):
            pixels = 0
            for index, img in enumerate(images):
                try:
                    check_pixels(img.path, max_pixels)
                    # the network's input as `eval` decodes it (a camera photo at a reduced scale); tiles, drawings
                    # and crops need the full picture, a second decoding where the first was reduced
                    decoded = None if tile else detector.decode(img.path)
                    held = None
                    if keep_pixels:
                        held = decode_image(img.path).pixels if decoded is None else full_picture(decoded, img.path)
                    if tile and (problem := too_many_tiles(*held.shape[:2], tile, tile_overlap)):
                        raise ImageReadError(f"{img.shown}: {problem}")  # this image is skipped, the others run
                except ImageReadError as exc:
                    fail(img.shown, img.naming(str(exc)))
                    advance()
                    continue
                except MemoryError:
                    fail(img.shown, f"{img.shown}: cannot read image (out of memory)")
                    advance()
                    continue
                if decoded is None:  # tiled: pre-processed tile by tile when its batch runs
                    tensor, scales, sizes = None, [1.0], [held.shape[:2]]
                else:
                    tensor, scales, sizes = detector.preprocess([decoded])
                counted = held if held is not None else decoded.pixels
                pixels += counted.shape[0] * counted.shape[1]
                batch.append((index, held, tensor, scales[0], sizes[0]))
                del decoded, held, counted  # held by the batch only (to be drawn on): freed once drawn
                if len(batch) >= batch_size or pixels >= BATCH_PIXEL_BUDGET or tile:
                    run_batch()
                    pixels = 0
            if batch:
                run_batch()
        summary.images_left = len(images) - finished
        summary.interrupted = summary.images_left > 0
        # not when every image failed to decode (as for no source, nothing is written); a Ctrl-C keeps its file
        if images and (summary.images or summary.interrupted):
            with atomic_open(summary.detections_path, "w") as f:
                json.dump(results, f)
        else:
            summary.detections_path = None
    if videos and not summary.interrupted:
        run = predict_videos(
            detector, videos, out, fail, batch_size=batch_size, vid_stride=vid_stride, max_frames=max_frames,
            draw=draw, save_txt=save_txt, save_conf=save_conf, save_crop=save_crop, progress=progress is not False,
        )  # fmt: skip
        summary.videos, summary.frames, summary.interrupted = run.videos, run.frames, run.interrupted
        summary.detections += run.detections
        summary.capped += run.capped
    if created and not summary.images and not summary.videos and not any(out.iterdir()):
        out.rmdir()  # every image and video failed to open: no empty folder left behind
        summary.output = summary.detections_path = None
    summary.seconds = time.perf_counter() - start
    return summary
