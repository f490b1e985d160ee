"""The one training loop: a :class:`Trainer` runs any :class:`Task` with the paper's recipe, under torchrun or not.

The trainer owns what every problem shares: the schedule (``recipe``), SGD, gradient clipping, the EMA weights,
AMP, DDP with SyncBN, gradient checkpointing, frozen backbone stages, the non-finite guard, checkpoints that resume
exactly, the metrics log and TensorBoard. A task owns what differs: its data, its model, the loss of one batch,
its evaluation and headline metric (detection: AP, segmentation: mIoU). A new problem is a new ``Task``.

Under ``torchrun`` every process runs the trainer; W processes with batch b compute what one process with batch
W*b computes (:mod:`efficientdet.distributed` says how), and rank 0 alone logs and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..models.fuse import FoldedCopy
from ..models.weights import CheckpointError, read_file
from ..utils.allocator import OPT_OUT_ENV, retain_freed_memory
from ..utils.distributed import (
    DistEnv,
    GlobalBatchSampler,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_state,
    convert_sync_batchnorm,
    distributed_session,
)
from ..utils.folders import output_clash
from ..utils.progress import progress_bar
from .components import LAST_FILE, Checkpointer, MetricsLog, NonFiniteGuard, run_file_in
from .recipe import (
    EVAL_CADENCE_EPOCH,
    EVAL_SHARE,
    TENSORBOARD_DIR,
    RecipeConfig,
    decay_groups,
    default_lr,
    default_weight_decay,
    default_workers,
    lr_at,
    make_optimizer,
    param_groups,
    scaled_lr,
)
from .tensorboard_log import TensorBoardLogger
from .utils import (
    ModelEma,
    TrainingError,
    amp_mode,
    freeze_backbone,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    set_train_mode,
    unfreeze_backbone_convs,
)

LOG = logging.getLogger(__name__)


class Task:
    """What one problem adds to the loop. Subclasses set the class attributes and implement the methods.

    The trainer calls, in order: :meth:`read_data`, :meth:`build_model`, :meth:`train_dataset`; then per step
    :meth:`prepare` and :meth:`loss`; per evaluation :meth:`evaluate`; per epoch (rank 0) :meth:`after_epoch`.
    """

    name = "task"  # stored as ``task`` in checkpoints (detection files predate the key and lack it)
    metric = "metric"  # the headline metric of :meth:`evaluate`, which picks ``best.pt``
    loss_names: tuple[str, ...] = ("loss",)  # ``loss`` first: the one that is optimised; the others are logged
    divergence_hint = "Try a lower --lr or --amp off."
    reports_skipped_images = False  # a ``skipped_images`` column (detection skips unreadable images)

    def __init__(self, cfg: Any, env: DistEnv, device: torch.device) -> None:
        self.cfg = cfg
        self.env = env
        self.device = device
        self.class_names: list[str] = []
        self.memory_format = torch.contiguous_format  # the trainer's choice (``channels_last``), set in its set-up

    # ---- set-up
    def read_data(self) -> None:
        """Read and check the data; sets ``class_names``. Nothing may be written yet."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The network to train (fresh, with ImageNet backbone weights, or fine-tuned from a checkpoint)."""
        raise NotImplementedError

    def train_dataset(self, model: nn.Module) -> Dataset:
        """The training set for ``model`` (its input size and normalisation); must have ``set_epoch``."""
        raise NotImplementedError

    def loader_kwargs(self, workers: int) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def has_validation(self) -> bool:
        """Whether :meth:`read_data` found validation data (``val_data``): then the run evaluates."""
        return getattr(self, "val_data", None) is not None

    def checkpoint_extra(self) -> dict[str, Any]:
        """Top-level keys of ``last.pt`` / ``best.pt`` besides the model."""
        return {}

    def training_files(self) -> list[str] | None:
        """The image files this run trains on, in order (after :meth:`read_data`): what ``--resume`` with the
        data at another path must find again. None: the task cannot say, and ``--data`` may not change."""
        return None

    def plot(self, csv_path: Path, png_path: Path) -> None:
        """Draw ``metrics.csv`` into ``metrics.png``."""

    # ---- one step
    def prepare(self, batch: Any) -> Any | None:
        """The batch on the device with its targets, or None when this step is skipped (on every rank alike)."""
        raise NotImplementedError

    def loss(self, net: nn.Module, prepared: Any, autocast: Callable[[], Any]) -> dict[str, torch.Tensor]:
        """The losses of one batch, keyed by :attr:`loss_names`; run ``net`` inside ``autocast()``.

        Under DDP each rank returns its share of the global-batch loss (the normaliser counts all ranks): the
        trainer scales by the world size so that DDP's gradient average is the gradient of the global loss.
        """
        raise NotImplementedError

    # ---- epoch
    def evaluate(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(metrics, row)``: the metrics (holding :attr:`metric`) and what the metrics.csv row gets of them."""
        raise NotImplementedError

    def loss_detail(self, row: dict[str, Any]) -> str:
        """What the epoch's summary line shows after the loss (detection: its class and box parts)."""
        return ""

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        raise NotImplementedError

    def after_epoch(
        self, tb: TensorBoardLogger | None, epoch: int, model: nn.Module, evaluated: bool, last: bool
    ) -> None:
        """Rank 0, after the checkpoints: the task's extra logs and files (``epoch`` counts from 1)."""

    def summary(self, best: float) -> dict[str, Any]:
        """Keys the task adds to :func:`Trainer.fit`'s result (the best metric under its old name)."""
        return {}


def data_identity(files: list[str] | None, class_names: list[str]) -> dict[str, Any] | None:
    """What ``last.pt`` keeps of the training data to recognise it at another path: the number of images, a
    SHA-256 of their file names in reading order (folders aside: they are what moves) and the class names."""
    if files is None:
        return None
    digest = hashlib.sha256("\n".join(os.path.basename(f) for f in files).encode()).hexdigest()
    return {"images": len(files), "names_sha256": digest, "class_names": list(class_names)}


def identity_mismatch(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> str | None:
    """Why the data read now is not the run's (one phrase), or None when it is."""
    if saved is None or current is None:
        return "cannot tell whether it holds this run's images (its last.pt keeps no identity of its data)"
    if saved["images"] != current["images"]:
        return f"not the dataset this run trained on ({current['images']} training images, the run's {saved['images']})"
    if saved["class_names"] != current["class_names"]:
        return (f"not the dataset this run trained on (classes {', '.join(current['class_names'])}; the run's "
                f"{', '.join(saved['class_names'])})")  # fmt: skip
    if saved["names_sha256"] != current["names_sha256"]:
        return "not the dataset this run trained on (the same number of training images, other files)"
    return None


class Trainer:
    """The loop around a :class:`Task`: :meth:`setup`, optional resume, then :meth:`fit` epoch by epoch."""

    def __init__(
        self, cfg: RecipeConfig, task: Task, env: DistEnv, device: torch.device, tb: TensorBoardLogger | None = None
    ) -> None:
        self.cfg, self.task, self.env, self.device, self.tb = cfg, task, env, device, tb
        self.out = Path(cfg.output)
        self.start_epoch = 0
        self.step = 0
        self.stopped_early = False  # --patience ended the run
        self.time_limit_reached = False  # --time-limit ended the run
        self.time_spent = 0.0  # seconds of epochs and evaluations, as the last --time-limit check summed them
        self.last_metrics: dict[str, Any] = {}

    # --------------------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Read the data, build the model, optimiser and components; every input is checked before the output
        folder exists, so a failed start leaves nothing behind."""
        cfg, env, task, device = self.cfg, self.env, self.task, self.device
        problem = output_clash(("--output", self.out, "folder")) or self._earlier_run_in_output()
        if problem:
            raise TrainingError(problem)
        seed_everything(cfg.seed)
        task.read_data()
        self.data_identity = data_identity(task.training_files(), task.class_names)
        model = task.build_model().to(device)
        model.grad_checkpoint = cfg.grad_checkpoint
        if cfg.patience is not None and not task.has_validation:
            raise TrainingError("--patience stops on the validation metric, and this run has no validation split")
        for flag, value in (("--trainable-stages", cfg.trainable_stages), ("--unfreeze-epochs", cfg.unfreeze_epochs)):
            if value and not cfg.freeze_backbone:
                raise TrainingError(f"{flag} only applies with --freeze-backbone (without it every stage trains)")
        if cfg.warmup_epochs > cfg.epochs:  # the rate would never reach its peak nor begin to decay
            raise TrainingError(f"--warmup-epochs {cfg.warmup_epochs:g} is longer than the run ({cfg.epochs} epochs)")
        if cfg.unfreeze_epochs > cfg.epochs:
            raise TrainingError(f"--unfreeze-epochs is {cfg.unfreeze_epochs}, more than the {cfg.epochs} epochs")
        if cfg.freeze_backbone:
            freeze_backbone(model, cfg.trainable_stages)
        # the epoch (0-based) from which the backbone's convs train; None: never
        self.unfreeze_epoch = cfg.epochs - cfg.unfreeze_epochs if cfg.unfreeze_epochs else None
        self.backbone_unfrozen = False
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        task.memory_format = self.memory_format
        model = model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.dataset = task.train_dataset(model)
        if len(self.dataset) < env.world_size:  # type: ignore[arg-type]
            raise TrainingError(
                f"{len(self.dataset)} training images for {env.world_size} processes: each needs one at least"  # type: ignore[arg-type]
            )
        self.global_batch = cfg.batch_size * env.world_size
        images = len(self.dataset)  # type: ignore[arg-type]
        if images < self.global_batch:  # each step holds the whole set (GlobalBatchSampler): the rate follows that
            asked = f"--batch-size {cfg.batch_size}" + (f" x {env.world_size} processes" if env.distributed else "")
            rate = f"the default learning rate for a batch of {images}" if cfg.lr is None else "--lr as given"
            LOG.warning("%s is more than the %d training images: each step trains on all of them, at %s", asked, images,
                        rate)  # fmt: skip
            self.global_batch = images
        self.steps_per_epoch = max(1, images // self.global_batch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.peak_lr = cfg.lr if cfg.lr is not None else default_lr(self.global_batch, cfg.optimizer)
        self.weight_decay = cfg.weight_decay if cfg.weight_decay is not None else default_weight_decay(cfg.optimizer)
        self.ema = ModelEma(model, cfg.ema_decay)  # plain BN: the EMA only ever evaluates
        if cfg.freeze_backbone and not cfg.trainable_stages:
            # the whole backbone is inference inside each step: run it BN-folded until --unfreeze-epochs wakes it
            model.backbone.folded_copy = FoldedCopy()
        if cfg.sync_bn and env.distributed:
            model = convert_sync_batchnorm(model, device)  # shares parameters and buffers with the EMA's source
        elif cfg.sync_bn:
            LOG.info("--sync-bn: a single process already normalises over its whole batch; nothing to synchronise")
        self.model = model
        groups = param_groups(model, self.weight_decay, cfg.backbone_lr_scale)
        self.optimizer = make_optimizer(groups, cfg.optimizer, self.peak_lr)
        self.use_amp, self.amp_dtype = amp_mode(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.guard = NonFiniteGuard(task.divergence_hint)
        self.log = MetricsLog(self.out, task.plot)
        self.checkpoints = Checkpointer(self.out, task.class_names, task.checkpoint_extra())
        if env.is_main:  # inputs, model and options are fine: now the run may leave files
            self.out.mkdir(parents=True, exist_ok=True)
        if env.rank > 0:  # rank 0 keeps the single-process stream; the others draw their own stochastic depth masks
            seed_everything(cfg.seed + 100_003 * env.rank)
        if cfg.resume:
            self.load_state_dict(read_file(cfg.resume))
            LOG.info("resumed from %s at epoch %d (step %d)", cfg.resume, self.start_epoch, self.step)
        self.net: nn.Module = self._wrap(model)

    def _earlier_run_in_output(self) -> str | None:
        """Why this run may not write into its output folder: another run's ``last.pt`` / ``best.pt`` is there
        (not the one it resumes) and ``exist_ok`` was not given. None when it may."""
        if self.cfg.exist_ok:
            return None
        held = run_file_in(self.out)
        if held is None or (self.cfg.resume and Path(self.cfg.resume).resolve().parent == self.out.resolve()):
            return None
        return (f"--output {self.out} holds an earlier run ({held.name}): continue it with --resume "
                f"{self.out / LAST_FILE}, choose another folder, or add --exist-ok to replace it")  # fmt: skip

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the steps run: DDP around ``model`` under torchrun (over the parameters that train now)."""
        if not self.env.distributed:
            return model
        device = self.device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def _unfreeze_if_due(self, epoch: int, rewrap: bool = True) -> None:
        """From ``unfreeze_epoch`` on, the backbone's convs train: they join the optimiser (and, ``rewrap``, DDP,
        which averages only the parameters that trained when it was built) once."""
        if self.unfreeze_epoch is None or epoch < self.unfreeze_epoch or self.backbone_unfrozen:
            return
        woken = unfreeze_backbone_convs(self.model)
        self.model.backbone.folded_copy = None  # (it would step aside for trainable weights; this frees its memory)
        for group in decay_groups(woken, self.weight_decay, self.cfg.backbone_lr_scale):
            self.optimizer.add_param_group(group)
        self.backbone_unfrozen = True
        if rewrap:
            self.net = self._wrap(self.model)
        if self.env.is_main:
            LOG.info("epoch %d: the backbone's convs train from here on (--unfreeze-epochs)", epoch + 1)

    # --------------------------------------------------------------------------------------------- state

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """``train_state`` of ``last.pt`` after ``epoch`` epochs (the EMA weights are the file's ``state_dict``)."""
        return {
            "model": self.model.state_dict(),  # the raw weights
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "step": self.step,
            **self.checkpoints.state_dict(),
            **self.log.state_dict(),
            **self.guard.state_dict(),
            "rng": rng_state(),
            "world_size": self.env.world_size,
            "global_batch": self.global_batch,
            "train_config": self.cfg.to_dict(),
            "data_identity": self.data_identity,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue the run saved in a ``last.pt`` (this engine's, or one written before it)."""
        if not isinstance(saved, dict) or "train_state" not in saved:
            raise CheckpointError(f"{self.cfg.resume}: not a training checkpoint (no train_state)")
        state = saved["train_state"]
        if state["train_config"].get("data") != self.cfg.data:  # --data changed: the same images at a new path?
            problem = identity_mismatch(state.get("data_identity"), self.data_identity)
            if problem:
                raise TrainingError(f"--data {self.cfg.data}: {problem}; resume with the run's data, or start a new "
                                    f"run from its weights with --checkpoint {self.cfg.resume}")  # fmt: skip
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(saved["state_dict"])  # the file's main weights are the EMA weights
        self.ema.updates = state["ema_updates"]
        # the saved optimiser holds the backbone's groups already; setup wraps the model for DDP after this
        self._unfreeze_if_due(state["epoch"] - 1, rewrap=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.step = state["epoch"], state["step"]
        self.checkpoints.load_state_dict(state)
        self.log.load_state_dict(state)
        self.guard.load_state_dict(state)
        saved_batch = state.get("global_batch", state["train_config"]["batch_size"])
        if saved_batch != self.global_batch:
            self.step = self.start_epoch * self.steps_per_epoch  # the schedule is per step: place it by epochs
            LOG.warning(
                "resuming with a global batch of %d (saved run: %d): the schedule continues at epoch %d, step %d",
                self.global_batch, saved_batch, self.start_epoch, self.step,
            )  # fmt: skip
        env = self.env
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == env.world_size:
            set_rng_state(per_rank[env.rank])
        elif env.is_main:
            set_rng_state(state["rng"])
        else:
            seed_everything(self.cfg.seed + 100_003 * env.rank + self.start_epoch)

    # --------------------------------------------------------------------------------------------- the loop

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            yield

    def _loader(self, epoch: int) -> DataLoader:
        cfg, env = self.cfg, self.env
        return DataLoader(
            self.dataset,
            batch_sampler=GlobalBatchSampler(
                len(self.dataset),
                cfg.batch_size,
                env.rank,
                env.world_size,
                cfg.seed,
                epoch,  # type: ignore[arg-type]
            ),
            # the loader draws its workers' base seed from this generator, not from the global RNG (whose stream
            # stochastic depth uses)
            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
            **self.task.loader_kwargs(cfg.workers),
        )

    def _lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr)

    def train_step(self, batch: Any, epoch: int) -> tuple[list[torch.Tensor], int, float] | None:
        """One optimiser step on ``batch``: ``(losses, images of the global batch, lr)``, None when skipped."""
        env, task, optimizer, scaler = self.env, self.task, self.optimizer, self.scaler
        prepared = task.prepare(batch)
        if prepared is None:
            return None
        lr = self._lr(self.step)
        for group in optimizer.param_groups:
            group["lr"] = scaled_lr(group, lr)
        # the forward pass moves BN's running statistics before anyone knows whether the step is kept: a skipped
        # step must not leave NaN statistics behind (they would poison every later evaluation and the EMA)
        statistics = [b.detach().clone() for b in self.model.buffers()]
        losses = task.loss(self.net, prepared, self.autocast)
        optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(losses["loss"]))
        backward_done = False
        if finite or env.distributed:  # under DDP every rank runs backward (its collectives), then all decide
            loss = losses["loss"] * env.world_size if env.distributed else losses["loss"]
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
            finite = finite and bool(torch.isfinite(grad_norm))
            backward_done = True
        parts = [losses[k].detach().float() for k in task.loss_names]
        step_images = len(batch)
        if env.distributed:  # one decision for all ranks, and the global-batch loss for the log
            device = self.device
            stats = all_reduce_sum(torch.stack([torch.tensor(float(not finite), device=device), *parts,
                                                torch.tensor(float(len(batch)), device=device)]))  # fmt: skip
            finite = float(stats[0]) == 0.0
            parts, step_images = list(stats[1:-1]), int(stats[-1])
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), statistics):
                    buffer.copy_(saved)
            if scaler.is_enabled() and backward_done:
                scaler.update()  # fp16 overflow: the scaler lowers its scale and the step is skipped
            self.guard.bad_step(epoch)
            return None
        self.guard.good_step()
        scaler.step(optimizer)
        scaler.update()
        self.ema.update(self.model)
        self.step += 1
        return parts, step_images, lr

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training set; the epoch's metrics.csv row (before evaluation)."""
        cfg, env, task = self.cfg, self.env, self.task
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self._unfreeze_if_due(epoch)
        loader = self._loader(epoch)
        set_train_mode(self.model, cfg.freeze_backbone, self.net)
        sums = dict.fromkeys(task.loss_names, 0.0)
        n_steps, n_images, skipped_images = 0, 0, 0
        t0 = time.time()
        bar = progress_bar(loader, f"epoch {epoch + 1}/{cfg.epochs}", enabled=env.is_main, leave=False)
        for batch in bar:
            skipped_images += getattr(batch, "skipped", 0)
            done = self.train_step(batch, epoch)
            if done is None:
                continue
            parts, step_images, lr = done
            n_steps += 1
            n_images += step_images
            for k, v in zip(sums, parts):
                sums[k] += v.item()
            if self.tb is not None:  # train/<loss> (global batch) and train/lr per step
                self.tb.scalars("train", {**{k: float(v) for k, v in zip(sums, parts)}, "lr": lr}, self.step)
            rate = n_images / max(1e-9, time.time() - t0)
            shown = {k.replace("_loss", ""): f"{v / n_steps:.4g}" for k, v in sums.items()}
            bar.set_postfix(**shown, lr=f"{lr:.4g}", img_s=f"{rate:.1f}")
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                break
        bar.close()
        elapsed = time.time() - t0
        if env.distributed:
            skipped_images = int(all_reduce_sum(torch.tensor([skipped_images], device=self.device))[0])
            # without SyncBN each rank's BN statistics follow its own images: the job's EMA is rank 0's
            broadcast_state(self.ema.module, buffers_only=True)
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({("train_" + k if k != "loss" else "train_loss"): v / max(1, n_steps) for k, v in sums.items()})
        row["lr"] = self._lr(max(0, self.step - 1))
        row["images_per_s"] = n_images / max(1e-9, elapsed)
        if task.reports_skipped_images:
            row["skipped_images"] = skipped_images
        row["skipped_steps"] = self.guard.total
        row["epoch_time_s"] = elapsed
        return row

    def _rank_mean(self, *seconds: float) -> list[float]:
        """Each of ``seconds`` averaged over DDP's ranks (as given in a single process): the clock readings that
        decide what every rank does next (stop, evaluate), so that all of them decide alike."""
        values = torch.tensor(seconds, dtype=torch.float64, device=self.device)
        if self.env.distributed:
            values = all_reduce_sum(values) / self.env.world_size
        return values.tolist()

    def _time_is_up(self, row: dict[str, Any] | None = None) -> bool:
        """With ``--time-limit``: whether one more epoch would end past the limit, after the epochs of the metrics
        history and ``row`` (an epoch just trained, its evaluation still to come).

        An epoch costs the mean of the run's epochs so far, training and validation; ``row``'s evaluation is
        counted at the mean evaluation so far (as if it ran: it does when this epoch turns out to be the last).
        The history holds the epochs of earlier processes too, so a resumed run spends what is left. Under DDP the
        ranks average their times, so that all of them stop after the same epoch.
        """
        cfg = self.cfg
        rows = [*self.log.history, *([row] if row is not None else [])]
        if cfg.time_limit is None or not rows:
            return False
        evaluations = [r["eval_time_s"] for r in rows if r.get("eval_time_s") is not None]
        pending = sum(evaluations) / len(evaluations) if row is not None and evaluations else 0.0
        (spent,) = self._rank_mean(sum(r.get("epoch_time_s") or 0.0 for r in rows) + sum(evaluations) + pending)
        self.time_spent = spent
        return spent + spent / len(rows) > cfg.time_limit * 60

    def _say_time_is_up(self, epoch: int) -> None:
        if self.env.is_main:
            print(f"time limit {self.cfg.time_limit:g} min: the run ends after epoch {epoch} of {self.cfg.epochs} "
                  f"({self.time_spent / 60:.1f} min spent, {self.time_spent / epoch:.0f} s an epoch); last.pt holds "
                  f"its weights, and --resume with a larger --time-limit continues the schedule",
                  flush=True)  # fmt: skip

    def _choose_eval_interval(self, row: dict[str, Any]) -> None:
        """``--eval-interval`` left open: from this epoch's training and validation times (averaged over DDP's
        ranks, so that all of them evaluate alike), the smallest interval that keeps validation within EVAL_SHARE
        of the training time; it is saved with the run's config, so a resume keeps it."""
        train_s, eval_s = self._rank_mean(row["epoch_time_s"], row["eval_time_s"])
        interval = max(1, math.ceil(eval_s / (EVAL_SHARE * max(train_s, 1e-9))))
        self.cfg = dataclasses.replace(self.cfg, eval_interval=interval)
        if self.env.is_main:
            every = "every epoch" if interval == 1 else f"every {interval} epochs from here on, and after the last"
            print(f"validation: a pass takes {eval_s:.1f} s against {train_s:.1f} s of training an epoch: {every} "
                  f"(validation within {EVAL_SHARE:.0%} of the training time; --eval-interval N sets it)",
                  flush=True)  # fmt: skip

    def fit(self) -> dict[str, Any]:
        """Train from the start (or the resumed epoch) to ``cfg.epochs`` (or until ``--patience`` or
        ``--time-limit`` ends the run); the run's summary."""
        cfg, env, task = self.cfg, self.env, self.task
        end = cfg.epochs
        if self.start_epoch < end and self._time_is_up():  # resumed after its time limit ended it
            self.time_limit_reached, end = True, self.start_epoch
            self._say_time_is_up(self.start_epoch)
        for epoch in range(self.start_epoch, end):
            row = self.train_epoch(epoch)
            out_of_time = self.time_limit_reached = self._time_is_up(row)
            stop = out_of_time or (cfg.max_steps is not None and self.step >= cfg.max_steps)
            last = stop or epoch + 1 == cfg.epochs
            evaluate_now = task.has_validation and ((epoch + 1) % (self.cfg.eval_interval or 1) == 0 or last)
            if evaluate_now:
                eval_start = time.perf_counter()
                self.last_metrics, entries = task.evaluate(self.ema.module)
                row.update(entries)
                row["eval_time_s"] = time.perf_counter() - eval_start  # what validation costs the run
                if self.cfg.eval_interval is None and epoch + 1 == EVAL_CADENCE_EPOCH:
                    self._choose_eval_interval(row)
            self.log.append(row)
            summary = (
                f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}{task.loss_detail(row)}  "
                f"lr {row['lr']:.4g}  {row['images_per_s']:.1f} img/s  {row['epoch_time_s']:.0f}s"
            )
            if row.get("skipped_images"):
                summary += f"  skipped {row['skipped_images']} unreadable image(s)"
            if evaluate_now:
                summary += f"  | eval {row['eval_time_s']:.0f}s  " + task.format_metrics(self.last_metrics)
            if env.is_main:
                print(summary, flush=True)
            improved = evaluate_now and self.checkpoints.offer(float(self.last_metrics[task.metric]))
            if evaluate_now and cfg.patience is not None and self.checkpoints.since_best >= cfg.patience:
                stop = last = self.stopped_early = True
                if env.is_main:
                    print(f"early stop after epoch {epoch + 1}: {task.metric} has not improved for "
                          f"{cfg.patience} evaluations (--patience); best {self.checkpoints.best:.4f} is in best.pt",
                          flush=True)  # fmt: skip
            rank_rngs = all_gather_objects(rng_state()) if env.distributed else None  # every rank's draws differ
            if env.is_main:
                train_state = self.state_dict(epoch + 1)
                if rank_rngs is not None:
                    train_state["rng_per_rank"] = rank_rngs
                self.checkpoints.save_last(self.ema.module, train_state)
                if improved or (not task.has_validation and epoch + 1 == cfg.epochs):
                    self.checkpoints.save_best(self.ema.module, self.last_metrics)
                self.log.write()
                if self.tb is not None:  # the metrics.csv row under epoch/ (x: the epoch)
                    self.tb.scalars("epoch", {k: v for k, v in row.items() if k != "epoch"}, epoch + 1)
                task.after_epoch(self.tb, epoch + 1, self.ema.module, evaluate_now, last)
                if self.tb is not None:
                    self.tb.flush()
            if out_of_time:
                self._say_time_is_up(epoch + 1)
            if stop:
                break
        if env.is_main and not self.checkpoints.best_path.exists():
            self.checkpoints.save_best(self.ema.module, self.last_metrics)
        barrier()  # no rank returns before rank 0's files are there
        best = self.checkpoints.best
        return {
            "best_metric": best,
            **task.summary(best),
            "metrics": self.last_metrics,
            "last": str(self.checkpoints.last_path),
            "best": str(self.checkpoints.best_path),
            "epochs_done": len(self.log.history),
            "stopped_early": self.stopped_early,
            "time_limit_reached": self.time_limit_reached,
            "steps": self.step,
            "skipped_steps": self.guard.total,
        }


def run_training(cfg: RecipeConfig, make_task: Callable[[Any, DistEnv, torch.device], Task]) -> dict[str, Any]:
    """Train (or resume) ``cfg`` with the task ``make_task(cfg, env, device)`` builds; the run's summary.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), every process calls this and they train as one DDP job: gloo on
    CPU, NCCL on CUDA (device ``cuda:LOCAL_RANK``). All ranks return the same summary.
    """
    with distributed_session(cfg.device, resolve_device) as (env, device):
        notes = []  # said once set-up has checked every input, so that a bad one is the only line a user sees
        if cfg.workers is None:
            cfg = dataclasses.replace(cfg, workers=default_workers(device))
            if cfg.workers == 0:
                notes.append("data loading: in the training process (a CPU of few cores, where worker processes "
                             "would take cores from each step); --workers N overrides")  # fmt: skip
        if retain_freed_memory():
            notes.append(f"memory: freed blocks stay in the process for reuse, sparing the kernel's page zeroing "
                         f"every step (glibc malloc; {OPT_OUT_ENV}=0 turns it off)")  # fmt: skip
        quiet = logging.getLogger("efficientdet")
        level = quiet.level
        if not env.is_main:  # one copy of each message: rank 0 speaks for the job
            quiet.setLevel(logging.WARNING)
        # rank 0 alone writes TensorBoard logs; the event file is opened on the first write
        tb = TensorBoardLogger(Path(cfg.output) / TENSORBOARD_DIR) if cfg.tensorboard and env.is_main else None
        try:
            trainer = Trainer(cfg, make_task(cfg, env, device), env, device, tb)
            trainer.setup()
            for note in notes:
                LOG.info(note)
            return trainer.fit()
        finally:
            if tb is not None:
                tb.close()
            quiet.setLevel(level)


def resume_settings(path: str, task: str, **changes: Any) -> dict[str, Any]:
    """The options of the run saved in ``path`` (a ``last.pt`` of ``task``), with ``changes`` and ``resume=path``.

    Output defaults to the checkpoint's folder. Model, data and recipe come from the checkpoint so that the
    resumed run is the same run.
    """
    obj = read_file(path)
    if not isinstance(obj, dict) or "train_state" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint (no train_state); use --checkpoint to fine-tune")
    saved_task = obj.get("task", "detection")  # detection checkpoints carry no task key
    if saved_task != task:
        hint = "with --task segmentation" if saved_task == "segmentation" else "without --task segmentation"
        raise CheckpointError(f"{path}: a {saved_task} training checkpoint; resume it {hint}")
    saved = dict(obj["train_state"]["train_config"])
    saved["scale_range"] = tuple(saved["scale_range"])
    saved["output"] = str(Path(path).parent)
    saved.update(changes, resume=str(path))
    return saved


__all__ = ["Task", "Trainer", "resume_settings", "run_training"]
