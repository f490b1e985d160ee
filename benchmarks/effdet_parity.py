"""Parity with the `effdet` package beyond the three shared fixtures: more variants, both padding flavours.

Needs an environment with effdet (it needs torchvision and timm, so not this project's own): make a side venv,
`pip install torchvision timm effdet`, then `pip install --no-deps -e .` of this repository into it, and run

    HF_HUB_OFFLINE=1 python benchmarks/effdet_parity.py

For each effdet model: random weights *and* random BN statistics (so every layer matters), one forward pass of
the same input through effdet and through our model loaded from effdet's state_dict; prints the max abs diffs.
"""

from __future__ import annotations

import sys

import torch

import efficientdet

CASES = [  # (effdet name, our name, input size)
    ("tf_efficientdet_d0", "efficientdet-d0", 320),
    ("tf_efficientdet_d1", "efficientdet-d1", 384),
    ("efficientdet_d1", "efficientdet-d1", 256),
    ("tf_efficientdet_d3", "efficientdet-d3", 256),
    ("tf_efficientdet_d5", "efficientdet-d5", 256),
    ("tf_efficientdet_d7x", "efficientdet-d7x", 256),
    ("tf_efficientdet_lite1", "efficientdet-lite1", 256),
    ("tf_efficientdet_lite3x", "efficientdet-lite3x", 256),
    ("tf_efficientdet_lite4", "efficientdet-lite4", 256),
]


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.5) + (1.0 if "bn" in name else 0.0))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def main() -> int:
    from effdet import create_model as effdet_create

    print(
        f"{'effdet model':24s} {'ours':20s} {'input':>5s} {'params':>12s} {'cls max diff':>15s} {'box max diff':>15s}"
    )
    worst = 0.0
    for i, (theirs_name, ours_name, size) in enumerate(CASES):
        theirs = effdet_create(theirs_name, pretrained=False, pretrained_backbone=False, image_size=(size, size)).eval()
        randomise(theirs, i)
        sd = {k: v.clone() for k, v in theirs.state_dict().items()}
        path = f"/tmp/_parity_{theirs_name}.pth"
        torch.save(sd, path)
        ours = efficientdet.create_model(ours_name, checkpoint=path).eval()
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(100 + i))
        with torch.no_grad():
            c1, b1 = theirs(x)
            c2, b2 = ours(x)
        dc = max((a - b).abs().max().item() for a, b in zip(c1, c2))
        db = max((a - b).abs().max().item() for a, b in zip(b1, b2))
        worst = max(worst, dc, db)
        n = sum(p.numel() for p in ours.parameters())
        print(f"{theirs_name:24s} {ours_name:20s} {size:>5d} {n:>12,d} {dc:>15.2e} {db:>15.2e}", flush=True)
    print(f"worst: {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
