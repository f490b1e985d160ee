"""Training speed: images per second of one training step, ours against effdet's ``DetBenchTrain``, one process.

A step is what the trainer does per batch: anchor labelling of the batch's boxes, forward, focal + Huber loss,
backward, gradient clipping and an SGD step (momentum 0.9). Both contestants get the same model size, input
size, batch, precision (fp32), random weights, and the same synthetic batch (random images, 3 boxes each); ours runs
channels-last as ``efficientdet train`` does by default (``--nchw`` adds ours in effdet's NCHW layout); they run
interleaved, round after round, so a slower or busier minute of the machine hits both alike. The figure is the
median over rounds of images / second; the ratio is ours / effdet's.

Settings (``--settings``, default all):

- ``lite0-320-b8``: Lite0, 320 px, batch 8, whole network trained, fp32 (both libraries' plain setting);
- ``d0-512-b4``: D0, 512 px, batch 4, fp32;
- ``lite0-448-b8-frozen``: ours with what our small-data recipe trains (frozen ImageNet backbone, channels-last,
  448 px) against effdet at 448 px with its backbone's parameters frozen the same way (``requires_grad=False``;
  effdet has no channels-last training path);
- ``lite0-448-b8-frozen-bf16``: the same with forward and loss of both under bf16 autocast, which is what
  ``efficientdet train --amp auto`` runs on a CPU with AVX512-BF16 or AMX (time it on such a CPU only: elsewhere
  bf16 is emulated and slower than fp32).

It also times the data loader alone (raccoon ``train``, training transforms at 448 px, batch 8) with 0 and 2
workers: a step can never be faster than the images arrive. effdet needs torchvision and timm, so this runs from
the side environment that ``benchmarks/speed.py`` describes:

    HF_HUB_OFFLINE=1 /tmp/effdet-venv/bin/python benchmarks/train_speed.py --threads 2

Without effdet importable it prints our figures alone. Run it on an otherwise idle machine.

Memory allocation (``--allocator``): ``efficientdet``'s training keeps freed memory in the process
(``efficientdet/utils/allocator.py``: glibc's malloc otherwise maps and zero-fills large blocks afresh every step).
The setting is process-wide, so one process cannot give it to ours alone:

- ``glibc`` (default): both contestants on glibc's own malloc, in one process;
- ``retained``: both with freed memory kept, in one process (like for like: what effdet would get from the same
  setting);
- ``shipped``: each contestant as it runs out of the box, ours with freed memory kept and effdet on glibc's malloc,
  each round one fresh process per contestant (built, warmed up with 2 steps, then timed), alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import efficientdet
from efficientdet.data.dataset import DetectionDataset, collate
from efficientdet.data.readers import read_dataset
from efficientdet.engine.recipe import CLIP_NORM, MOMENTUM
from efficientdet.engine.utils import freeze_backbone, set_train_mode
from efficientdet.models.fuse import FoldedCopy
from efficientdet.ops.anchors import anchors_for_config
from efficientdet.ops.labeler import AnchorLabeler
from efficientdet.ops.losses import BOX_LOSS_WEIGHT, detection_loss
from efficientdet.ops.postprocess import flatten_outputs
from efficientdet.utils.allocator import retain_freed_memory

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
SETTINGS = {  # name: (our model, effdet model, input size, batch, frozen backbone, bf16 autocast)
    "lite0-320-b8": ("efficientdet-lite0", "tf_efficientdet_lite0", 320, 8, False, False),
    "d0-512-b4": ("efficientdet-d0", "tf_efficientdet_d0", 512, 4, False, False),
    "lite0-448-b8-frozen": ("efficientdet-lite0", "tf_efficientdet_lite0", 448, 8, True, False),
    "lite0-448-b8-frozen-bf16": ("efficientdet-lite0", "tf_efficientdet_lite0", 448, 8, True, True),
}
ALLOCATORS = ("glibc", "retained", "shipped")
NUM_CLASSES = 1
BOXES_PER_IMAGE = 3
LR = 0.01


def synthetic_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised-looking images ``[B, 3, S, S]``, boxes ``[B, N, 4]`` (x1 y1 x2 y2, pixels), labels ``[B, N]``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    corner = torch.rand(batch, BOXES_PER_IMAGE, 2, generator=g) * size * 0.6
    extent = (0.1 + torch.rand(batch, BOXES_PER_IMAGE, 2, generator=g) * 0.3) * size
    boxes = torch.cat([corner, corner + extent], dim=-1)
    labels = torch.zeros(batch, BOXES_PER_IMAGE, dtype=torch.long)
    return images, boxes, labels


class OurStep:
    """Our training step, as ``DetectionTask.prepare`` + ``loss`` and ``Trainer.train_step`` run it."""

    def __init__(
        self,
        name: str,
        size: int,
        frozen: bool,
        data: tuple[torch.Tensor, ...],
        channels_last: bool = True,
        bf16: bool = False,
    ) -> None:
        self.bf16 = bf16
        self.model = efficientdet.create_model(name, num_classes=NUM_CLASSES, image_size=size)
        if frozen:
            freeze_backbone(self.model)
            self.model.backbone.folded_copy = FoldedCopy()  # as the trainer runs a wholly frozen backbone
        # channels-last, as `efficientdet train` runs by default (--channels-last); effdet has no such path
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        set_train_mode(self.model, frozen)  # a frozen backbone's BN stays in eval, as in the trainer
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
        self.labeler = AnchorLabeler(anchors_for_config(self.model.config, (size, size)))
        images, boxes, labels = data
        self.images = images.contiguous(memory_format=self.memory_format)
        self.targets = [{"boxes": b, "labels": c} for b, c in zip(boxes, labels)]

    def __call__(self) -> float:
        targets = self.labeler(self.targets)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):  # as the trainer's --amp bf16
            cls_out, box_out = self.model(self.images)
        cls_flat, box_flat = flatten_outputs(cls_out, box_out, NUM_CLASSES)
        loss = detection_loss(cls_flat, box_flat, targets, NUM_CLASSES, box_weight=BOX_LOSS_WEIGHT)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        self.optimizer.step()
        return float(loss.detach())


class EffdetStep:
    """effdet's ``DetBenchTrain`` (its anchor labeller run in the step, as ``bench_labeler=True`` does when its loader
    does not label; focal + Huber loss inside) with the same optimiser."""

    def __init__(self, name: str, size: int, frozen: bool, data: tuple[torch.Tensor, ...], bf16: bool = False) -> None:
        import effdet

        self.bf16 = bf16
        self.bench = effdet.create_model(
            name, bench_task="train", bench_labeler=True, num_classes=NUM_CLASSES, image_size=(size, size),
            pretrained=False, pretrained_backbone=False,
        )  # fmt: skip
        self.bench.train()
        if frozen:
            for p in self.bench.model.backbone.parameters():
                p.requires_grad_(False)
            self.bench.model.backbone.eval()
        params = [p for p in self.bench.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
        images, boxes, labels = data
        self.images = images
        # effdet's targets: boxes as y1 x1 y2 x2, classes counted from 1
        self.target = {"bbox": boxes[..., [1, 0, 3, 2]].clone(), "cls": (labels + 1).float()}

    def __call__(self) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.bench(self.images, self.target)["loss"].float()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.bench.parameters(), CLIP_NORM)
        self.optimizer.step()
        return float(loss.detach())


def time_steps(step: Any, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def build_step(contestant: str, setting: str) -> Any:
    ours_name, effdet_name, size, batch, frozen, bf16 = SETTINGS[setting]
    data = synthetic_batch(batch, size)
    if contestant == "effdet":
        return EffdetStep(effdet_name, size, frozen, data, bf16=bf16)
    return OurStep(ours_name, size, frozen, data, channels_last=contestant == "ours", bf16=bf16)


def rate_in_child(contestant: str, setting: str, steps: int, threads: int | None) -> float:
    """Images / second of ``contestant`` timed in a fresh process with its shipped allocator (``--allocator
    shipped``)."""
    allocator = "glibc" if contestant == "effdet" else "retained"
    command = [sys.executable, __file__, "--child", contestant, "--settings", setting, "--steps", str(steps),
               "--allocator", allocator] + (["--threads", str(threads)] if threads else [])  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["img_per_s"])


def compare(
    setting: str, rounds: int, steps: int, with_effdet: bool, nchw: bool, separate: bool, threads: int | None
) -> dict[str, Any]:
    _, _, size, batch, frozen, bf16 = SETTINGS[setting]
    names = ["ours"] + (["ours_nchw"] if nchw else []) + (["effdet"] if with_effdet else [])
    rates: dict[str, list[float]] = {name: [] for name in names}
    if separate:
        for _ in range(rounds):
            for name in names:
                rates[name].append(rate_in_child(name, setting, steps, threads))
    else:
        contestants = {name: build_step(name, setting) for name in names}
        for step in contestants.values():  # warm-up: allocator, oneDNN primitives
            time_steps(step, 2)
        for _ in range(rounds):
            for name, step in contestants.items():
                rates[name].append(batch * steps / time_steps(step, steps))
    row: dict[str, Any] = {
        "setting": setting,
        "img_size": size,
        "batch": batch,
        "frozen_backbone": frozen,
        "bf16": bf16,
    }
    for name, values in rates.items():
        row[f"{name}_img_per_s"] = round(statistics.median(values), 2)
    if with_effdet:
        for name in rates:
            if name != "effdet":
                row[f"{name}_ratio"] = round(row[f"{name}_img_per_s"] / row["effdet_img_per_s"], 3)
    return row


def loader_rate(workers: int, batches: int, size: int = 448, batch: int = 8) -> float | None:
    """Images per second the training data pipeline delivers (read, decode, jitter, crop, normalise, collate)."""
    if not RACCOON.is_dir():
        return None
    data = read_dataset(RACCOON, "voc", "train")
    cfg = efficientdet.get_config("efficientdet-lite0")
    dataset = DetectionDataset(data.records, size, cfg.mean, cfg.std, train=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         collate_fn=collate, persistent_workers=workers > 0)  # fmt: skip
    iterator = iter(loader)
    next(iterator)  # workers started
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(iterator))
        except StopIteration:
            iterator = iter(loader)
    return seen / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per setting (default 5)")
    p.add_argument("--steps", type=int, default=3, help="training steps per contestant per round (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--loader-batches", type=int, default=20, help="batches timed per loader setting (default 20)")
    p.add_argument("--nchw", action="store_true", help="also time ours without channels-last (effdet's layout)")
    p.add_argument("--allocator", choices=ALLOCATORS, default="glibc",
                   help="glibc (default), retained (both keep freed memory) or shipped (each as it runs out of the "
                        "box, one process per contestant and round); see the module docstring")  # fmt: skip
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--child", choices=("ours", "ours_nchw", "effdet"), help=argparse.SUPPRESS)  # shipped's workers
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator == "retained" and not retain_freed_memory():
        print("--allocator retained: glibc's malloc cannot be set here (see efficientdet/utils/allocator.py)")
        return 2
    if args.child:
        step = build_step(args.child, args.settings[0])
        time_steps(step, 2)
        batch = SETTINGS[args.settings[0]][3]
        print(json.dumps({"img_per_s": batch * args.steps / time_steps(step, args.steps)}))
        return 0
    try:
        import effdet  # noqa: F401

        with_effdet = True
    except ImportError:
        print("effdet not importable: our figures only (see the module docstring for the side environment)")
        with_effdet = False
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator: {args.allocator}")
    print(f"{'setting':22s} {'contestant':10s} {'img/s':>7s} {'vs effdet':>9s}")
    for setting in args.settings:
        separate = args.allocator == "shipped"
        row = compare(setting, args.rounds, args.steps, with_effdet, args.nchw, separate, args.threads)
        rows.append(row)
        for name in ("ours", "ours_nchw", "effdet"):
            if f"{name}_img_per_s" in row:
                ratio = f"{row[name + '_ratio']:8.2f}x" if f"{name}_ratio" in row else ""
                print(f"{setting:22s} {name:10s} {row[name + '_img_per_s']:7.2f} {ratio:>9s}", flush=True)
    loader = {w: loader_rate(w, args.loader_batches) for w in (0, 2)}
    for workers, rate in loader.items():
        if rate is not None:
            print(f"data loader, raccoon train, 448 px, batch 8, {workers} workers: {rate:.1f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "loader_img_per_s": loader,
                                               "command": " ".join(sys.argv)}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
