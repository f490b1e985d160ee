"""Training samples, evaluation samples and predictions per second from camera-size photos, decoded in full and
at libjpeg's reduced scales.

Writes raccoon ``train`` images enlarged to camera sizes (long side 4032 px: a 12-megapixel phone photo; 1920 px:
Full HD) as JPEGs in a temporary folder, then times, each with reduced decoding (the default) and in full,
interleaved round by round in one process:
- ``train``: ``DetectionDataset`` training samples (transforms at 448 px, scale jitter 0.5-1.5: what ``efficientdet
  train`` runs on a small dataset);
- ``eval``: evaluation samples (resized to 448 px, what ``eval`` and the in-training evaluation load);
- ``predict``: a Lite0 ``Detector`` at 448 px (random weights, BN folded as ``predict`` runs it, score threshold
  0.3) from the file to detections: ``Detector(path)`` decodes at the reduced scale, the full row passes the fully
  decoded picture (what ``predict --no-draw`` did before it decoded files reduced; a drawn ``predict`` decodes the
  picture in full as well, to draw on).
One image at a time on the calling thread: what a 0-worker loader does, the default on a CPU of at most 4 cores.
Of the raccoon photos themselves (most ~650 px) only one is reduced at 448 px: raccoon-183.jpg (2000 x 1333), at
1/2.

    python benchmarks/photo_decoding.py --data ../shared/datasets/raccoon --images 16 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from efficientdet.data.dataset import DetectionDataset
from efficientdet.data.images import load_image
from efficientdet.data.readers import read_dataset
from efficientdet.data.records import ImageRecord
from efficientdet.inference import Detector
from efficientdet.models.factory import create_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def enlarged_records(data: str, count: int, long_side: int, folder: Path) -> list[ImageRecord]:
    """The first ``count`` raccoon ``train`` images enlarged to ``long_side`` px (aspect kept), boxes scaled too."""
    records = []
    for i, rec in enumerate(read_dataset(data, None, "train").records[:count]):
        scale = long_side / max(rec.width, rec.height)
        size = (round(rec.width * scale), round(rec.height * scale))
        path = folder / f"{long_side}_{i}.jpg"
        with Image.open(rec.path) as img:
            img.convert("RGB").resize(size, Image.BICUBIC).save(path, quality=92)
        records.append(ImageRecord(str(path), i, size[0], size[1], rec.boxes * scale, rec.labels, rec.iscrowd))
    return records


def samples_per_second(dataset: DetectionDataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def predictions_per_second(detector: Detector, records: list[ImageRecord], reduced: bool) -> float:
    """Files to detections, one at a time: ``Detector(path)`` (reduced decoding) or the fully decoded picture."""
    start = time.perf_counter()
    for rec in records:
        detector(rec.path if reduced else load_image(rec.path))
    return len(records) / (time.perf_counter() - start)


def rate(what: str, reduced: bool, records: list[ImageRecord], detector: Detector) -> float:
    """Images per second of ``what`` (train, eval or predict) with reduced decoding or in full."""
    if what == "predict":
        return predictions_per_second(detector, records, reduced)
    return samples_per_second(DetectionDataset(records, 448, MEAN, STD, train=what == "train",
                                               reduced_decoding=reduced))  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/datasets/raccoon")
    p.add_argument("--images", type=int, default=16, help="photos per size (default 16)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--sizes", type=int, nargs="+", default=[4032, 1920], help="long sides in px")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    detector = Detector(create_model("efficientdet-lite0", num_classes=1), image_size=448, score_threshold=0.3,
                        optimize=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="efficientdet-photos-") as tmp:
        for long_side in args.sizes:
            records = enlarged_records(args.data, args.images, long_side, Path(tmp))
            runs = [(what, reduced) for what in ("train", "eval", "predict") for reduced in (True, False)]
            rates: dict[tuple[str, bool], list[float]] = {key: [] for key in runs}
            for _ in range(args.rounds):
                for what, reduced in runs:
                    rates[(what, reduced)].append(rate(what, reduced, records, detector))
            width = DetectionDataset(records, 448, MEAN, STD, train=True)[0].frame.image_width
            eval_width = DetectionDataset(records, 448, MEAN, STD)[0].frame.image_width
            print(f"long side {long_side} px (decoded {width} px wide for training, {eval_width} px for evaluation "
                  f"and prediction; {args.images} photos, {args.rounds} rounds, {args.threads} threads):")  # fmt: skip
            for what in ("train", "eval", "predict"):
                reduced, full = (statistics.median(rates[(what, flag)]) for flag in (True, False))
                print(f"  {what:8s} reduced {reduced:6.1f}/s, full {full:6.1f}/s, {reduced / full:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
