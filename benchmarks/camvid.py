"""Segmentation benchmark: EfficientDet-Seg-Lite0 from the ImageNet Lite0 backbone on CamVid (CPU).

Trains on CamVid `train` (367 frames, 360x480) and reports the mIoU over the 11 classes (void = 11 ignored),
pixel accuracy and per-class IoU on `val` (101 frames) at the frames' full resolution, plus the wall time.
The figure reported is that of the final EMA weights (no model selection); the best epoch is printed beside it.
The loss weighs classes by SegNet's median frequency balancing (`--class-weights none`: plain cross-entropy),
which measured 53.4% against 45.2% mIoU after 20 epochs; the 80-epoch default reached 61.7% in 108 minutes
on a 2-core CPU (README). Epochs, class weights, backbone and jitter are `efficientdet train --task segmentation`'s
own defaults; the script adds CamVid's frame size (480 px) and a 384 px training crop.
`val` chose those settings, so its mIoU is a validation figure, not comparable to published CamVid test-set numbers.
Run from the repository root:

    python benchmarks/camvid.py                          # the defaults below
    python benchmarks/camvid.py --epochs 2 --eval-interval 2 --output runs/camvid-smoke    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from efficientdet.data.segmentation import CAMVID_CLASSES
from efficientdet.engine.train_segmentation import SegTrainConfig, train_segmentation

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
CAMVID_VOID = 11
TARGET_MIOU = 0.60


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(CAMVID), help="folder with train/ trainannot/ val/ valannot/")
    p.add_argument("--model", default="efficientdet-seg-lite0")
    p.add_argument("--epochs", type=int, default=SegTrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=480, help="longer side at evaluation (480: CamVid's own size)")
    p.add_argument("--crop-size", type=int, default=384, help="square training crop")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: 0.24 * batch / 64 = 0.03 at batch 8)")
    p.add_argument("--scale-range", type=float, nargs=2, default=[0.5, 2.0])
    p.add_argument("--class-weights", default="median-freq",
                   help="loss weight per class: median-freq (default: SegNet balancing), none, K numbers")  # fmt: skip
    p.add_argument("--amp", default="auto", help="auto (bf16 on CPUs that compute it natively, else fp32), bf16, off")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-interval", type=int, default=10, help="evaluate every N epochs (and after the last)")
    p.add_argument("--output", default="runs/camvid-benchmark")
    p.add_argument("--resume", help="continue from this last.pt")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = Path(args.data)
    cfg = SegTrainConfig(
        model=args.model, num_classes=len(CAMVID_CLASSES), ignore_index=CAMVID_VOID, class_names=list(CAMVID_CLASSES),
        train_images=str(data / "train"), train_masks=str(data / "trainannot"), val_images=str(data / "val"),
        val_masks=str(data / "valannot"), epochs=args.epochs, batch_size=args.batch_size, img_size=args.img_size,
        crop_size=args.crop_size, lr=args.lr, scale_range=tuple(args.scale_range), amp=args.amp,
        class_weights=args.class_weights,
        pretrained_backbone=args.resume is None, workers=args.workers, seed=args.seed,
        eval_interval=args.eval_interval, output=args.output, resume=args.resume, exist_ok=True,
    )  # fmt: skip
    t0 = time.time()
    result = train_segmentation(cfg)
    minutes = (time.time() - t0) / 60
    m = result["metrics"]
    per_class = {n: round(v, 4) for n, v in zip(CAMVID_CLASSES, m["per_class_iou"])}
    print(f"\nCamVid val (101 frames, 11 classes, void ignored): mIoU {100 * m['mIoU']:.2f}%  pixel acc "
          f"{100 * m['pixel_acc']:.2f}%  (best evaluated epoch: {100 * result['best_miou']:.2f}%)  "
          f"wall {minutes:.1f} min (training + evaluations)")  # fmt: skip
    print("per-class IoU: " + "  ".join(f"{n} {100 * v:.1f}" for n, v in per_class.items()))
    print(f"target mIoU >= {100 * TARGET_MIOU:.0f}%: {'met' if m['mIoU'] >= TARGET_MIOU else 'NOT met'}")
    if args.json:
        figures = {"mIoU": m["mIoU"], "pixel_acc": m["pixel_acc"], "per_class_iou": per_class,
                   "best_mIoU": result["best_miou"], "minutes": round(minutes, 2), "command": " ".join(sys.argv),
                   "settings": cfg.to_dict()}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
