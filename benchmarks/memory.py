"""Memory benchmark: peak memory and step time of one training step with and without activation checkpointing.

Default: EfficientDet-D3 at 896x896 (its own size), 90 classes (COCO), batch 1, full training step (forward, focal
+ Huber loss against anchor targets, backward, gradient clipping, SGD step), fp32. Each mode runs in a fresh Python
process so that one mode's allocations cannot hide in the other's numbers. Run from the repository root:

    python benchmarks/memory.py                                   # D3 @ 896, batch 1, 2 steps per mode, CPU
    python benchmarks/memory.py --device cuda --batch-size 4      # on a GPU

How memory is measured:

- **CUDA**: ``torch.cuda.max_memory_allocated`` over the steps (reset before the first), i.e. tensor memory, not the
  caching allocator's reserve; "above baseline" subtracts what was allocated before the first step (weights).
- **CPU**: torch 2.13 has no CPU allocator statistics, so the figure is the process's peak resident set size
  (``getrusage`` ``ru_maxrss``) of that fresh process; "above baseline" subtracts the resident size just before
  the first step (Python, torch's libraries, the model and its gradients-to-be are in the baseline). Peak RSS is an
  upper bound of peak live memory: freed blocks that malloc keeps count until they are reused.

The step time is that of the last step (the first one also pays for first-touch allocations and kernel set-up);
on CPU the process CPU time of that step is shown too: on a shared machine wall time measures the neighbours as much
as the step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("plain", "checkpoint")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args: argparse.Namespace) -> dict:
    """One mode, in this (fresh) process: build, run ``args.steps`` training steps, measure."""
    import torch

    from efficientdet import create_model
    from efficientdet.engine.train import CLIP_NORM, MOMENTUM, param_groups
    from efficientdet.ops.anchors import anchors_for_config
    from efficientdet.ops.labeler import AnchorLabeler
    from efficientdet.ops.losses import detection_loss
    from efficientdet.ops.postprocess import flatten_outputs

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    overrides = {"image_size": args.img_size} if args.img_size else {}
    model = create_model(args.model, num_classes=args.num_classes, **overrides).to(device).train()
    model.grad_checkpoint = args.worker == "checkpoint"
    size = model.config.image_size
    optimizer = torch.optim.SGD(param_groups(model, 4e-5), lr=1e-3, momentum=MOMENTUM)
    labeler = AnchorLabeler(anchors_for_config(model.config, (size, size)).to(device))
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)
    targets = []
    for _ in range(args.batch_size):  # three boxes per image, 10-50% of the side
        wh = torch.rand(3, 2, generator=g) * 0.4 + 0.1
        xy = torch.rand(3, 2, generator=g) * (1 - wh)
        boxes = torch.cat([xy, xy + wh], 1) * size
        labels = torch.randint(0, args.num_classes, (3,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _rss_bytes()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        cls, box = model(images)
        cls_flat, box_flat = flatten_outputs(cls, box, args.num_classes)
        loss = detection_loss(cls_flat, box_flat, labeler(targets), args.num_classes)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        del cls, box, cls_flat, box_flat, loss
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": args.worker, "peak_bytes": peak, "baseline_bytes": baseline, "step_s": times[-1], "times": times,
            "cpu_s": cpu_times[-1], "cpu_times": cpu_times,
            "measure": "cuda max_memory_allocated" if cuda else "peak RSS (ru_maxrss)",
            "threads": torch.get_num_threads(), "device": str(device)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientdet-d3")
    p.add_argument("--img-size", type=int, default=None, help="default: the model's own (896 for D3)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=90)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--worker", mode, "--model", args.model, "--batch-size", str(args.batch_size),
               "--num-classes", str(args.num_classes), "--steps", str(args.steps), "--device", args.device,
               "--threads", str(args.threads)]  # fmt: skip
        cmd += ["--img-size", str(args.img_size)] if args.img_size else []
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{mode} failed:\n{res.stderr[-4000:]}")
        out = res.stdout
        rows.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
        r = rows[-1]
        print(f"{mode}: peak {r['peak_bytes'] / 2**30:.2f} GiB, step {r['step_s']:.1f} s", file=sys.stderr)
    size = args.img_size or "own size"
    print(f"\n{args.model} @ {size}, batch {args.batch_size}, {args.num_classes} classes, {rows[0]['device']} "
          f"({rows[0]['threads']} threads), memory = {rows[0]['measure']}\n")  # fmt: skip
    print("| mode | peak memory | above baseline | step time (wall) | step CPU time |")
    print("|---|---|---|---|---|")
    base = rows[0]
    for r in rows:
        above = r["peak_bytes"] - r["baseline_bytes"]
        rel = ""
        if r is not base:
            base_above = base["peak_bytes"] - base["baseline_bytes"]
            rel = (f" ({100 * (r['peak_bytes'] / base['peak_bytes'] - 1):+.0f}%)",
                   f" ({100 * (above / base_above - 1):+.0f}%)", f" ({r['step_s'] / base['step_s']:.2f}x)",
                   f" ({r['cpu_s'] / base['cpu_s']:.2f}x)")  # fmt: skip
        rel = rel or ("", "", "", "")
        print(f"| {r['mode']} | {r['peak_bytes'] / 2**30:.2f} GiB{rel[0]} | {above / 2**30:.2f} GiB{rel[1]} "
              f"| {r['step_s']:.1f} s{rel[2]} | {r['cpu_s']:.1f} s{rel[3]} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
