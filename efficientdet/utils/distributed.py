"""Multi-process training under ``torchrun``: process group, data sharding, SyncBN that also runs on CPU, gathers.

``torchrun --nproc-per-node N -m efficientdet train ...`` starts N copies of the ordinary command; each reads
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from its environment (set by torchrun) and joins one process group:
NCCL when it trains on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. With ``WORLD_SIZE`` unset or 1 nothing
here does anything, so the single-process path is the one that existed before.

The design goal is that W processes with batch b are the *same* computation as one process with batch W*b:

- :class:`GlobalBatchSampler` draws the permutation the single-process loader draws and hands each rank a
  contiguous slice of every global batch (augmentation randomness is per ``(seed, epoch, index)``, so an image is
  augmented identically whichever rank loads it);
- the loss normaliser (positives + 1) is summed over ranks before the loss is formed (``all_reduce_sum``);
- :func:`convert_sync_batchnorm` computes BN statistics over the global batch. torch's ``nn.SyncBatchNorm`` only
  runs on GPUs (on CPU its forward raises ``ValueError: SyncBatchNorm expected input tensor to be on GPU``, and
  the ``batch_norm_stats`` / ``batch_norm_elemt`` kernels it calls have no CPU implementation in torch 2.13), so on
  CPU the conversion uses :class:`SyncBatchNorm2d`, a small autograd function over two gloo all-reduces.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Sampler

from .device import parse_device

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job (``world_size == 1``: an ordinary single-process run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, draws progress bars and writes files."""
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """The ranks torchrun (or any launcher using its variables) gave this process; defaults mean single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistEnv(rank, local, world)


def current_env() -> DistEnv:
    """The job as seen by an initialised process group (single-process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())
    return DistEnv()


def distributed_device(name: str, env: DistEnv) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when CUDA exists, else what was asked."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name)  # an unknown name or a missing device: one line naming --device
    if device.type == "cuda" and device.index is None:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA device(s) on this node: "
                f"use --nproc-per-node <= {torch.cuda.device_count()}"
            )
        device = torch.device("cuda", env.local_rank)
    return device


@contextlib.contextmanager
def distributed_session(device_name: str, resolve: Callable[[str], torch.device]) -> Iterator[tuple[DistEnv, Any]]:
    """Join (and afterwards leave) the torchrun process group; yields ``(env, device)``.

    Single process (no ``WORLD_SIZE`` > 1): no group, ``resolve(device_name)`` as before. A group that the caller
    already initialised is used as it is and left alone on exit.
    """
    env = env_from_torchrun()
    if not env.distributed:
        yield env, resolve(device_name)
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = distributed_device(device_name, env)
    created = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    env = DistEnv(dist.get_rank(), env.local_rank, dist.get_world_size())
    try:
        yield env, device
    finally:
        if created:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- collectives


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left alone). Identity in a single process."""
    out = values.clone()
    if _active():
        dist.all_reduce(out)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (pickled; for detections and RNG states, not for big tensors)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_state(module: nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Overwrite every rank's tensors of ``module`` with rank ``src``'s (in place; state_dict order is the same)."""
    if not _active():
        return
    tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
    for t in tensors:
        dist.broadcast(t, src=src)


def barrier() -> None:
    if _active():
        dist.barrier()


# --------------------------------------------------------------------------------------------- sharding


def single_process_permutation(n: int, seed: int) -> list[int]:
    """The order in which ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))`` visits ``n`` items.

    Asking a DataLoader for it (rather than calling ``randperm`` ourselves) keeps the exact order single-process
    training has always used, whatever else the loader draws from its generator first, so runs started before
    multi-process support resume identically and a W-process run sees exactly the batches of a 1-process run.
    """
    loader = DataLoader(
        range(n), batch_size=max(1, n), shuffle=True, collate_fn=list, generator=torch.Generator().manual_seed(seed)
    )
    return [int(i) for batch in loader for i in batch]


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of a global batch of ``batch_size * world_size`` images, of which this rank gets its slice.

    Global batch ``s`` is the single-process loader's batch ``s`` at batch ``batch_size * world_size`` (same
    permutation, same ``drop_last`` rule: drop the ragged end unless the dataset is smaller than one global
    batch); rank ``r`` takes images ``[r*b, (r+1)*b)`` of it. The one ragged batch of a tiny dataset is split as
    evenly as possible; every rank must get at least one image (checked by the trainer).
    """

    def __init__(self, num_items: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int) -> None:
        self.n = num_items
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch = seed, epoch
        self.global_batch = batch_size * world_size
        self.drop_last = num_items >= self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = single_process_permutation(self.n, self.seed * 100_003 + self.epoch)
        for step in range(len(self)):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            m = len(batch)
            lo, hi = self.rank * m // self.world_size, (self.rank + 1) * m // self.world_size
            yield batch[lo:hi]

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.global_batch
        return 1 if self.n else 0


# --------------------------------------------------------------------------------------------- SyncBN


class _SyncBatchNormFn(torch.autograd.Function):
    """Batch norm with statistics over all ranks' batches: one all-reduce forward, one backward.

    Forward: per-channel sum, sum of squares and count (float64, as torch's CPU BN accumulates) are summed over
    ranks; mean and biased variance normalise, the unbiased variance feeds the running statistics. Backward: the
    input gradient of a BN over the global batch needs the global sums of ``dy`` and ``dy * x_hat``; the weight
    and bias gradients stay local (DDP averages them like any other parameter gradient).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):  # type: ignore[override]
        dims = [0] + list(range(2, x.dim()))
        local = torch.cat(
            [
                x.sum(dims, dtype=torch.float64),
                x.double().square().sum(dims),
                torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device),
            ]
        )
        dist.all_reduce(local, group=group)
        c = x.shape[1]
        count = local[-1]
        mean64 = local[:c] / count
        var64 = (local[c : 2 * c] / count - mean64.square()).clamp_(min=0.0)
        if running_mean is not None:
            unbiased = var64 * (count / (count - 1).clamp(min=1))
            running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        mean = mean64.to(x.dtype)
        invstd = torch.rsqrt(var64 + eps).to(x.dtype)
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count, ctx.group = float(count), group
        return x * scale.view(shape) + shift.view(shape)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        sum_dy = grad_out.sum(dims, dtype=torch.float64)
        sum_dy_xhat = (grad_out * x_hat).sum(dims, dtype=torch.float64)
        grad_weight = sum_dy_xhat.to(x.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(x.dtype) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both, group=ctx.group)
            mean_dy = (both[:c] / ctx.count).to(x.dtype).view(shape)
            mean_dy_xhat = (both[c:] / ctx.count).to(x.dtype).view(shape)
            gain = invstd if weight is None else invstd * weight
            grad_x = (grad_out - mean_dy - x_hat * mean_dy_xhat) * gain.view(shape)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics span all ranks; works with gloo on CPU (and on CUDA).

    Outside training, or without an initialised group of more than one process, it is a plain ``BatchNorm2d``.
    Same parameters and buffers (and state_dict keys) as ``BatchNorm2d``, so checkpoints do not see the difference.
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        self._check_input_dim(x)
        track = self.track_running_stats and self.running_mean is not None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        group = self.process_group or dist.group.WORLD
        return _SyncBatchNormFn.apply(
            x, self.weight, self.bias, self.running_mean if track else None, self.running_var if track else None,
            self.eps, momentum, group,
        )  # fmt: skip


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm (module tree walk) for a SyncBatchNorm2d sharing its parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm2d):
        sync = SyncBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        ).to(next(iter(module.buffers()), torch.zeros(())).device)
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, _to_cpu_sync(child))
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BN of ``model`` (backbone, BiFPN, each level's BN of the heads) synchronised across ranks.

    On CUDA: torch's ``nn.SyncBatchNorm`` (fused kernels, NCCL). Elsewhere: :class:`SyncBatchNorm2d`, because
    torch's does not run on CPU. Parameters and buffers are shared with the original modules, not copied, so an
    optimiser or EMA built before the conversion still sees the same tensors.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_cpu_sync(model)


__all__ = [
    "DistEnv",
    "GlobalBatchSampler",
    "SyncBatchNorm2d",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_state",
    "convert_sync_batchnorm",
    "current_env",
    "distributed_device",
    "distributed_session",
    "env_from_torchrun",
    "single_process_permutation",
]
