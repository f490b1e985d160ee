"""Activation (gradient) checkpointing that leaves the training step exactly as it was.

``torch.utils.checkpoint`` drops a segment's intermediate activations after the forward pass and recomputes them
during backward. Two things could make the recomputed segment differ from the first pass:

- randomness (stochastic depth's masks): the non-reentrant checkpoint saves and restores the RNG state, so the
  recomputation draws the same masks;
- BatchNorm in training mode: it would update ``running_mean`` / ``running_var`` (and ``num_batches_tracked``) a
  second time with the same batch — with momentum 0.01 that is not harmless: the statistics would move as if the
  momentum were 0.0199. During recomputation the BNs of the segment therefore run with momentum 0 (the
  update ``(1 - 0) * running + 0 * batch`` leaves the buffers bit for bit as they were) and their
  ``num_batches_tracked`` is put back afterwards. Switching ``track_running_stats`` off instead would also skip
  the update, but it changes which tensors BN saves for backward, and the recomputation must save exactly what the
  first pass saved. Forward outputs, gradients and buffers are those of the plain run (tests/test_grad_checkpoint.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """BN layers of ``module`` normalise with batch statistics as usual but leave their running buffers alone."""
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def checkpointed(module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` (a call into ``module``) with its activations recomputed in backward instead of stored."""
    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_bn_statistics(module)),
    )


def checkpointing_active(module: nn.Module) -> bool:
    """Checkpoint only when it saves something: training mode with autograd recording."""
    return bool(getattr(module, "grad_checkpoint", False)) and module.training and torch.is_grad_enabled()


class BackboneFpnCheckpointing:
    """``grad_checkpoint`` for a network with a ``backbone`` and an ``fpn`` (the detector and the segmenter):
    recompute backbone blocks and BiFPN cells in backward, ~half the peak memory for ~25% more arithmetic."""

    backbone: nn.Module
    fpn: nn.Module

    @property
    def grad_checkpoint(self) -> bool:
        return bool(self.backbone.grad_checkpoint)

    @grad_checkpoint.setter
    def grad_checkpoint(self, enabled: bool) -> None:
        self.backbone.grad_checkpoint = bool(enabled)
        self.fpn.grad_checkpoint = bool(enabled)
