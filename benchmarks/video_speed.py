"""Video throughput of `efficientdet predict` against single-image throughput, in one process (CPU).

    python benchmarks/video_speed.py --checkpoint runs/raccoon/seed0/last.pt --threads 2 --frames 200

Writes a 640x480 H.264 clip of raccoon photos (PyAV, 25 fps, each photo held for four frames) to a temporary folder,
then, alternating over ``--rounds`` rounds (the video runs in a seeded random order each round), times:

- **single image**: the predict Detector (BN-folded, channels-last, predict's score threshold) on the clip's
  frames one at a time, as decoded arrays: pre-processing, network, post-processing;
- **video**: ``predict_videos`` on the clip as ``efficientdet predict clip.mp4`` runs it: decoding, the same
  Detector on batches of ``--batch-size`` frames (default: predict's, one frame on a CPU), two batches at once on a
  CPU (``--parallel-frames``), ``detections.jsonl`` and the drawn H.264 video;
- **video, no drawing**: the same with ``--no-draw`` (the JSONL only);
- **video, one frame at a time** (with and without drawing): both again with ``--parallel-frames 1``, the network
  on one frame at a time on every thread (the default runs two frames side by side on a CPU, one thread each);
- with ``--x264 OPTIONS ...``, the video run once more per set of libx264 options (``preset=ultrafast``,
  ``preset=veryfast:threads=1``, ...) in place of the project's ``X264_OPTIONS``: what the encoder costs.

and, in every round too, ``efficientdet bench``'s end-to-end throughput of the same model (one synthetic 640x480
image, score threshold 0: all 5000 candidates reach NMS), so that the machine's drift over a run (measured: 20%
between rounds) meets every figure alike. Prints frames/s (medians over the rounds) and each video figure over
the single-image one and over ``bench``. Without ``--checkpoint`` the model is a randomly initialised Lite0 at
448 px (1 class). Run with nothing else on the machine: the figures are throughputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
FRAME_SIZE = (640, 480)  # (W, H): a typical camera frame
FPS = 25
HOLD = 4  # frames per photo: consecutive frames alike, as in a real video (H.264 encodes the changes)


@contextlib.contextmanager
def x264_options(options: dict[str, str]) -> Iterator[None]:
    """Encode drawn videos with ``options`` in place of the project's ``X264_OPTIONS`` for the block.

    ``options`` is copied before the project's dictionary is emptied: the project's own runs pass that very
    dictionary (until 2026-12-05 this benchmark emptied it first, so its "video" rows were encoded with x264's
    default preset, "medium", instead of the project's).
    """
    from efficientdet.inference import video

    saved, wanted = dict(video.X264_OPTIONS), dict(options)
    video.X264_OPTIONS.clear()
    video.X264_OPTIONS.update(wanted)
    try:
        yield
    finally:
        video.X264_OPTIONS.clear()
        video.X264_OPTIONS.update(saved)


def write_clip(path: Path, frames: int, photos: Path) -> list[np.ndarray]:
    """The clip at ``path`` (H.264 where PyAV has it) and its frames as RGB arrays."""
    from efficientdet.inference.video import VideoWriter

    files = sorted(photos.glob("*.jpg"))[: -(-frames // HOLD)]
    if not files:
        sys.exit(f"{photos}: no .jpg photos to build the clip from (give --photos)")
    images = [np.asarray(Image.open(f).convert("RGB").resize(FRAME_SIZE, Image.BILINEAR)) for f in files]
    clip = [images[(i // HOLD) % len(images)] for i in range(frames)]
    writer = VideoWriter(path, *FRAME_SIZE, Fraction(FPS))
    for frame in clip:
        writer.write(frame)
    writer.close()
    return clip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a trained checkpoint (default: random Lite0 at 448 px)")
    p.add_argument("--photos", default=str(RACCOON / "JPEGImages"), help="folder of .jpg photos for the clip")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, help="frames per network call in the video runs (default: predict's)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--x264",
        nargs="*",
        default=[],
        metavar="OPTIONS",
        help="more video runs, each with these libx264 options (key=value:key=value)",
    )
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    from efficientdet.inference import video
    from efficientdet.inference.detector import Detector
    from efficientdet.inference.predict import DEFAULT_SCORE_THRESHOLD
    from efficientdet.models.factory import create_model, load_checkpoint
    from efficientdet.tools.bench import BenchConfig, run_benchmark

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = create_model("efficientdet-lite0", num_classes=1, image_size=448)
    model.eval()
    detector = Detector(model, device="cpu", optimize=True, score_threshold=DEFAULT_SCORE_THRESHOLD)
    same_model = {"checkpoint": args.checkpoint} if args.checkpoint else {
        "model": "efficientdet-lite0", "img_size": 448, "num_classes": 1}  # fmt: skip
    bench = BenchConfig(**same_model, threads=args.threads, iterations=30)

    def fail(source: str, message: str) -> None:
        raise SystemExit(f"{source}: {message}")

    parallel = detector.parallel_frames
    variants = {
        "video": (True, video.X264_OPTIONS, parallel),
        "video, no drawing": (False, video.X264_OPTIONS, parallel),
        "video, one frame at a time": (True, video.X264_OPTIONS, 1),
        "video, one frame at a time, no drawing": (False, video.X264_OPTIONS, 1),
    }
    for text in args.x264:
        variants[f"video, x264 {text}"] = (True, dict(kv.split("=", 1) for kv in text.split(":")), parallel)
    figures: dict[str, list[float]] = {"single image": [], **{name: [] for name in variants}}
    bench_rounds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="video-speed-") as tmp:
        clip_path = Path(tmp) / "clip.mp4"
        frames = write_clip(clip_path, args.frames, Path(args.photos))
        with torch.inference_mode():
            detector(frames[:2])  # warm-up: anchors, first calls
        for r in range(args.rounds):
            bench_rounds.append(run_benchmark(bench)["end_to_end"]["throughput_ips"])
            with torch.inference_mode():
                start = time.perf_counter()
                for frame in frames:
                    detector(frame)
                figures["single image"].append(len(frames) / (time.perf_counter() - start))
            # the video runs in a new order each round (seeded), so that no setting always runs in the same place
            order = list(enumerate(variants.items()))
            random.Random(r).shuffle(order)
            for i, (name, (draw, options, frames_at_once)) in order:
                with x264_options(options):
                    start = time.perf_counter()
                    run = video.predict_videos(detector, [clip_path], Path(tmp) / f"out{r}-{i}", fail,
                                               batch_size=args.batch_size, parallel_frames=frames_at_once,
                                               draw=draw)  # fmt: skip
                    figures[name].append(run.frames / (time.perf_counter() - start))
                if run.frames != len(frames):
                    sys.exit(f"predict read {run.frames} of the clip's {len(frames)} frames")
    single = statistics.median(figures["single image"])
    bench_fps = statistics.median(bench_rounds)
    print(f"{args.frames} frames of {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, {args.threads} threads, "
          f"model {'from ' + args.checkpoint if args.checkpoint else 'random Lite0 448 px'}")  # fmt: skip
    print(f"efficientdet bench, end to end (one synthetic image, threshold 0): {bench_fps:.2f} images/s  "
          f"({', '.join(f'{v:.2f}' for v in bench_rounds)})")  # fmt: skip
    rows = {}
    for name, values in figures.items():
        median = statistics.median(values)
        rows[name] = {"fps": median, "rounds": values, "vs_single": median / single, "vs_bench": median / bench_fps}
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:<40} {median:6.2f} frames/s  ({runs})  {median / single:.2f}x single image  "
              f"{median / bench_fps:.2f}x bench")  # fmt: skip
    if args.json:
        summary = {"bench_end_to_end_fps": bench_fps, "bench_rounds": bench_rounds, **rows}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
