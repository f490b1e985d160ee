"""Parameter and FLOP counts as the paper reports them.

The paper counts FLOPs as multiply-adds (one multiply-add = one FLOP) at the model's own input size. We
count the multiply-adds of every conv and linear layer: BN folds into the convs at inference, and the
element-wise work (activations, fusion, pooling) is under 1% of the total. Counting runs on the ``meta``
device, so even D7x at 1536x1536 costs no memory and no time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import ModelConfig, get_config
from .detector import EfficientDet


def count_multiply_adds(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of convs and linears for one forward pass of ``example`` (per whole batch)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def count_on_meta(build: Callable[[], nn.Module], size: int | tuple[int, int]) -> dict[str, Any]:
    """Parameters and multiply-adds of the model ``build()`` makes, built on the meta device (no weights
    allocated), for one ``size`` input; plus ``image_size`` as an int when square, else ``[H, W]``."""
    h, w = (size, size) if isinstance(size, int) else size
    with torch.device("meta"):
        model = build().eval()
        example = torch.empty(1, 3, h, w)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops": count_multiply_adds(model, example),
        "image_size": h if h == w else [h, w],
    }


def model_stats(config: ModelConfig | str, image_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """Parameters and multiply-adds of a variant (built on the meta device, no weights allocated)."""
    cfg = get_config(config) if isinstance(config, str) else config
    counts = count_on_meta(lambda: EfficientDet(cfg), image_size if image_size is not None else cfg.image_size)
    return {
        "name": cfg.name,
        **counts,
        "backbone": cfg.backbone,
        "fpn_channels": cfg.fpn_channels,
        "fpn_repeats": cfg.fpn_repeats,
        "head_repeats": cfg.head_repeats,
        "fusion": cfg.fusion,
        "levels": f"P{cfg.min_level}-P{cfg.max_level}",
        "paper_params": cfg.paper_params,
        "paper_flops": cfg.paper_flops,
    }
