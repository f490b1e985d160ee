"""Training samples per second from camera-size photos, decoded in full and at libjpeg's reduced scales.

Writes raccoon ``train`` images enlarged to camera sizes (long side 4032 px: a 12-megapixel phone photo; 1920 px:
Full HD) as JPEGs in a temporary folder, then times ``DetectionDataset`` samples (training transforms at 448 px,
scale jitter 0.5-1.5: what ``efficientdet train`` runs on a small dataset) with ``reduced_decoding`` on (the default)
and off, interleaved round by round in one process. One sample at a time on the calling thread: what a 0-worker
loader does, the default on a CPU of at most 4 cores. Of the raccoon photos themselves (most ~650 px) only one is
reduced at 448 px: raccoon-183.jpg (2000 x 1333), at 1/2.

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
from efficientdet.data.readers import read_dataset
from efficientdet.data.records import ImageRecord

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/datasets/raccoon")
    p.add_argument("--images", type=int, default=16, help="photos per size (default 16)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--sizes", type=int, nargs="+", default=[4032, 1920], help="long sides in px")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="efficientdet-photos-") as tmp:
        for long_side in args.sizes:
            records = enlarged_records(args.data, args.images, long_side, Path(tmp))
            datasets = {
                "reduced": DetectionDataset(records, 448, MEAN, STD, train=True),
                "full": DetectionDataset(records, 448, MEAN, STD, train=True, reduced_decoding=False),
            }
            rates: dict[str, list[float]] = {name: [] for name in datasets}
            for _ in range(args.rounds):
                for name, dataset in datasets.items():
                    rates[name].append(samples_per_second(dataset))
            reduced, full = (statistics.median(rates[name]) for name in ("reduced", "full"))
            sample = datasets["reduced"][0]
            print(f"long side {long_side} px (decoded at {sample.frame.image_width} px wide): "
                  f"reduced {reduced:.1f} samples/s, full {full:.1f} samples/s, {reduced / full:.2f}x "
                  f"({args.images} photos, {args.rounds} rounds, {args.threads} threads)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
