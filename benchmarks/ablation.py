"""Feature-network ablation (paper, sections 6.2-6.3, Tables 5 and 6): one backbone and head, five feature networks.

For each of top-down FPN, FPN+PANet, and BiFPN with plain-sum / fast-normalised / softmax fusion this prints
parameters and FLOPs (whole model and feature network alone, with their ratio to FPN+PANet as the paper reports
them), forward latency (whole model and feature network alone, batch 1, this machine), and the AP on raccoon after
the same short training run with the same seed (`efficientdet.engine.train.train` with a ``model_overrides`` of
``fpn_type`` / ``fusion``).

    python benchmarks/ablation.py --skip-train                   # params / FLOPs / latency only: seconds
    python benchmarks/ablation.py --epochs 20 --amp bf16         # + AP on raccoon test after 20 epochs each
    python benchmarks/ablation.py --epochs 20 --amp bf16 --freeze-backbone    # the README table (frozen backbone)
    python benchmarks/ablation.py --model efficientdet-d3 --skip-train    # the paper's B3 backbone

Besides the five networks the issue names, ``fpn-2x`` repeats the top-down FPN twice as often: a top-down cell has
half the nodes of a PANet or BiFPN cell, and the paper's "repeated top-down FPN" baseline is the cost-matched one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from efficientdet.models.config import get_config
from efficientdet.models.detector import EfficientDet
from efficientdet.models.flops import count_multiply_adds
from efficientdet.utils.threads import torch_threads

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"

# name -> (fpn_type, fusion, repeats multiplier). FPN and PANet fuse by plain sums, as in their own papers.
VARIANTS: dict[str, tuple[str, str, int]] = {
    "fpn": ("fpn", "sum", 1),
    "fpn-2x": ("fpn", "sum", 2),
    "panet": ("panet", "sum", 1),
    "bifpn-sum": ("bifpn", "sum", 1),
    "bifpn-fast": ("bifpn", "fast", 1),
    "bifpn-softmax": ("bifpn", "softmax", 1),
}
DEFAULT_VARIANTS = ("fpn", "fpn-2x", "panet", "bifpn-sum", "bifpn-fast", "bifpn-softmax")
BASELINE = "panet"  # the paper's tables state ratios against repeated FPN+PANet (1.0x)
# Paper, Table 5 (B3 backbone, COCO val): AP, params and FLOPs ratios to FPN+PANet; softmax fusion: Table 6.
PAPER = {
    "fpn": "42.3 AP (repeated FPN)",
    "fpn-2x": "42.3 AP (repeated FPN)",
    "panet": "44.1 AP, 1.00x, 1.00x",
    "bifpn-sum": "43.9 AP, 0.88x, 0.67x",
    "bifpn-fast": "44.4 AP, 0.88x, 0.68x",
    "bifpn-softmax": "fast within 0.2 AP; 1.26-1.31x slower (GPU)",
}


def variant_overrides(model: str, name: str) -> dict[str, Any]:
    fpn_type, fusion, mult = VARIANTS[name]
    return {"fpn_type": fpn_type, "fusion": fusion, "fpn_repeats": get_config(model).fpn_repeats * mult}


def counts(model: str, name: str, size: int, num_classes: int) -> dict[str, Any]:
    """Parameters and multiply-adds of the whole model and of its feature network, on the meta device."""
    cfg = get_config(model, num_classes=num_classes, **variant_overrides(model, name))
    with torch.device("meta"):
        net = EfficientDet(cfg).eval()
        x = torch.empty(1, 3, size, size)
        with torch.no_grad():
            feats = net.backbone(x)
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "fpn_params": sum(p.numel() for p in net.fpn.parameters()),
        "flops": count_multiply_adds(net, x),
        "fpn_flops": count_multiply_adds(net.fpn, feats),  # type: ignore[arg-type]
    }


def latencies(model: str, names: list[str], size: int, runs: int, num_classes: int) -> dict[str, dict[str, float]]:
    """Fastest forward time (ms, batch 1, eval mode) of each whole model and of its feature network alone.

    The variants are timed round-robin, one forward each per round, so that a load change on a shared machine
    hits all of them alike instead of whichever happened to run at the time; and the minimum over the rounds is
    reported (as ``timeit`` advises): other jobs only ever add time, so the fastest run is the least disturbed.
    """
    torch.manual_seed(0)
    nets = {n: EfficientDet(get_config(model, num_classes=num_classes, **variant_overrides(model, n))).eval()
            for n in names}  # fmt: skip
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = {n: net.backbone(x) for n, net in nets.items()}
        times: dict[str, dict[str, list[float]]] = {n: {"model": [], "fpn": []} for n in names}
        for r in range(runs + 2):  # two warm-up rounds
            for n, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                t1 = time.perf_counter()
                net.fpn(feats[n])
                t2 = time.perf_counter()
                if r >= 2:
                    times[n]["model"].append(1e3 * (t1 - t0))
                    times[n]["fpn"].append(1e3 * (t2 - t1))
    return {n: {k: min(v) for k, v in t.items()} for n, t in times.items()}


def train_ap(model: str, name: str, args: argparse.Namespace) -> dict[str, float]:
    """AP on raccoon `test` after ``args.epochs`` epochs on `train` (ImageNet backbone, same seed for all)."""
    from efficientdet.engine.train import TrainConfig, train

    cfg = TrainConfig(
        model=model, data=args.data, format="voc", train_split="train", val_split="test", epochs=args.epochs,
        batch_size=args.batch_size, img_size=args.img_size, amp=args.amp, workers=args.workers, seed=args.seed,
        pretrained_backbone=not args.no_pretrained, output=str(Path(args.output) / name), exist_ok=True,
        freeze_backbone=args.freeze_backbone, eval_interval=args.epochs, model_overrides=variant_overrides(model, name),
    )  # fmt: skip
    t0 = time.time()
    result = train(cfg)
    m = result["metrics"]
    return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "train_min": (time.time() - t0) / 60}


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientdet-lite0", help="backbone + head (+ repeats) to ablate")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--runs", type=int, default=20, help="timed forwards per variant (the fastest is reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the latency part (1 is the steadiest on a shared machine)")  # fmt: skip
    p.add_argument("--skip-train", action="store_true", help="params / FLOPs / latency only (seconds)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs per variant for the AP column")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--amp", default="auto")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the feature network and heads (the raccoon benchmark's setting)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pretrained", action="store_true", help="random backbone (for backbones without weights)")
    p.add_argument("--data", default=str(RACCOON))
    p.add_argument("--output", default="runs/ablation")
    p.add_argument("--json", help="also write the table to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = args.img_size or get_config(args.model).image_size
    names = list(dict.fromkeys(args.variants))
    rows: dict[str, dict[str, Any]] = {n: counts(args.model, n, size, 1) for n in names}
    with torch_threads(args.threads):  # for the latency part only; training uses every core
        for n, t in latencies(args.model, names, size, args.runs, 1).items():
            rows[n].update({"ms": t["model"], "fpn_ms": t["fpn"]})
        latency_threads = torch.get_num_threads()
    if not args.skip_train:
        for n in names:
            print(f"training {n} for {args.epochs} epochs ...", flush=True)
            rows[n].update(train_ap(args.model, n, args))
    base = rows.get(BASELINE)
    cfg = get_config(args.model)
    print(f"\n{args.model} ({cfg.backbone}), {size}x{size}, 1 class, repeats {cfg.fpn_repeats}; ratios against "
          f"{BASELINE if base else 'n/a'}; latency: best of {args.runs}, batch 1, {latency_threads} "
          f"thread(s), CPU fp32")  # fmt: skip
    header = (f"{'variant':14s} {'params':>10s} {'ratio':>6s} {'FPN params':>10s} {'ratio':>6s} {'FLOPs':>8s} "
              f"{'ratio':>6s} {'FPN FLOPs':>9s} {'ratio':>6s} {'ms':>7s} {'FPN ms':>7s}")  # fmt: skip
    if not args.skip_train:
        header += f" {'AP':>6s} {'AP50':>6s}"
    header += "   paper (B3, COCO): AP, params, FLOPs"
    print(header)
    print("-" * len(header))
    for n in names:
        r = rows[n]
        line = (
            f"{n:14s} {r['params']:>10,d} {_ratio(r['params'], base['params']) if base else '-':>6s} "
            f"{r['fpn_params']:>10,d} {_ratio(r['fpn_params'], base['fpn_params']) if base else '-':>6s} "
            f"{r['flops'] / 1e9:>7.3f}B {_ratio(r['flops'], base['flops']) if base else '-':>6s} "
            f"{r['fpn_flops'] / 1e9:>8.3f}B {_ratio(r['fpn_flops'], base['fpn_flops']) if base else '-':>6s} "
            f"{r['ms']:>7.1f} {r['fpn_ms']:>7.1f}"
        )
        if not args.skip_train:
            line += f" {r['AP']:>6.3f} {r['AP50']:>6.3f}"
        line += f"   {PAPER.get(n, '')}"
        print(line)
    if "bifpn-fast" in rows and "bifpn-softmax" in rows:
        fast, soft = rows["bifpn-fast"], rows["bifpn-softmax"]
        print(f"\nsoftmax / fast fusion latency: model {soft['ms'] / fast['ms']:.2f}x, feature network "
              f"{soft['fpn_ms'] / fast['fpn_ms']:.2f}x (paper, GPU: 1.26-1.31x)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "image_size": size, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
