"""The training engine's guarantees, tested once on the engine itself with a toy task that needs no files.

Exact resume (also after a kill -9), skipped non-finite steps and the stop after MAX_BAD_STEPS in a row, N processes
x batch b == 1 process x batch N*b, the EMA formula, and atomic checkpoints are properties of ``Trainer``, not of
detection or segmentation: a task of a few hundred parameters and seeded in-memory tensors shows them in seconds,
and would show a task-independent regression that the per-task tests could blame on their task.

This file is also the worker script that the subprocess tests start
(``python tests/test_engine_loop.py <mode> <json>``, plain or under torchrun).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from efficientdet.engine import ModelEma, RecipeConfig, Task, Trainer, TrainingError, resume_settings, run_training
from efficientdet.engine.recipe import MAX_BAD_STEPS, lr_at
from efficientdet.utils.distributed import DistEnv
from efficientdet.utils.fields import OptionError

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# the only metrics.csv columns that may differ between equal runs
TIMING = ("images_per_s", "epoch_time_s", "eval_time_s")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bitwise comparisons with the 1-thread subprocesses


# --------------------------------------------------------------------------------------------- the toy task


@dataclass
class ToyConfig(RecipeConfig):
    """A regression of 16 seeded 3x6x6 tensors: 4 steps of batch 4 per epoch, milliseconds per epoch."""

    model: str = "toy"
    n_train: int = 16
    n_val: int = 8
    dropout: float = 0.2  # draws from the global RNG every step: a resume must restore it
    validate: bool = True
    epochs: int = 3
    batch_size: int = 4
    lr: float | None = 0.05
    warmup_epochs: float = 0.5
    ema_decay: float = 0.5  # short runs: both the warm-up (updates 1-7) and the cap (8 on) of ModelEma's decay
    eval_interval: int | None = 1  # every epoch (the default's cadence follows measured times; tested on its own)
    workers: int = 0
    device: str = "cpu"
    amp: str = "off"
    output: str = "runs/toy"


@dataclass
class ToyModelConfig:
    """What ``save_model`` (the Checkpointer) reads of a model: ``config.to_dict()``."""

    dropout: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": "toy", "dropout": self.dropout}


class ToyNet(nn.Module):
    """Conv + BN + SiLU, global pooling, dropout, linear: 249 parameters and BN buffers for the EMA to follow."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.config = ToyModelConfig(dropout)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.backbone(x).mean((2, 3)))).squeeze(1)


def _toy_tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = 2 * (x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2))) + 0.1 * torch.randn(n, generator=g)
    return x, y


class ToyDataset(Dataset):
    """Seeded tensors; each epoch adds its own noise (as augmentation would), so ``set_epoch`` matters."""

    def __init__(self, n: int, seed: int) -> None:
        self.x, self.y = _toy_tensors(n, seed)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed((self.seed * 1_000 + self.epoch) * 10_000 + index)
        return self.x[index] + 0.1 * torch.randn(self.x[index].shape, generator=g), self.y[index]


@dataclass
class ToyBatch:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:  # the trainer counts a batch's images with len()
        return len(self.y)


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> ToyBatch:
    return ToyBatch(torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]))


class _InfGrad(torch.autograd.Function):
    """The identity whose gradient is infinite: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


POISONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nan": lambda loss: loss * float("nan"),
    "inf": lambda loss: loss + float("inf"),
    "inf_grad": _InfGrad.apply,
    "nan_forward": lambda loss: loss,  # NaN inputs (set in ToyTask.loss): BN's running statistics see them
}


class ToyTask(Task):
    """Mean squared error of the global batch; the metric is 1 / (1 + MSE) of the EMA model on a fixed held-out set
    (in (0, 1] like AP and mIoU).

    Test hooks: ``poison`` maps the index of a ``loss`` call to a :data:`POISONS` key; ``on_loss(i)`` runs before
    call ``i``'s forward (when the weights are those of the previous optimiser step); ``on_epoch(epoch)`` runs
    after each epoch's checkpoints.
    """

    name = "toy"
    metric = "score"

    def __init__(self, cfg: ToyConfig, env: DistEnv, device: torch.device) -> None:
        super().__init__(cfg, env, device)
        self.calls = 0
        self.poison: dict[int, str] = {}
        self.on_loss: Callable[[int], None] | None = None
        self.on_epoch: Callable[[int], None] | None = None

    def read_data(self) -> None:
        self.class_names = ["value"]
        self.val_data = _toy_tensors(self.cfg.n_val, self.cfg.seed + 1) if self.cfg.validate else None

    def build_model(self) -> nn.Module:
        return ToyNet(self.cfg.dropout)

    def train_dataset(self, model: nn.Module) -> Dataset:
        return ToyDataset(self.cfg.n_train, self.cfg.seed)

    def loader_kwargs(self, workers: int) -> dict[str, Any]:
        return {"num_workers": workers, "collate_fn": collate}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"task": self.name}

    def prepare(self, batch: ToyBatch) -> Any:
        count = torch.tensor(float(len(batch)))
        if self.env.distributed:  # the mean over the global batch: every rank divides by all ranks' images
            dist.all_reduce(count)
        return batch.x.to(self.device).contiguous(memory_format=self.memory_format), batch.y.to(self.device), count

    def loss(self, net: nn.Module, prepared: Any, autocast: Callable[[], Any]) -> dict[str, torch.Tensor]:
        x, y, count = prepared
        if self.on_loss is not None:
            self.on_loss(self.calls)
        if self.poison.get(self.calls) == "nan_forward":
            x = x * float("nan")
        with autocast():
            pred = net(x)
        loss = ((pred.float() - y) ** 2).sum() / count
        poison = self.poison.get(self.calls)
        self.calls += 1
        return {"loss": POISONS[poison](loss) if poison else loss}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        x, y = self.val_data
        mse = F.mse_loss(model(x.to(self.device).contiguous(memory_format=self.memory_format)), y.to(self.device))
        metrics = {"score": 1 / (1 + float(mse))}
        return metrics, dict(metrics)

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        return f"score {metrics['score']:.4g}"

    def after_epoch(self, tb: Any, epoch: int, model: nn.Module, evaluated: bool, last: bool) -> None:
        if self.on_epoch is not None:
            self.on_epoch(epoch)


# --------------------------------------------------------------------------------------------- helpers


def _config(tmp_path: Path, name: str, **kw: Any) -> ToyConfig:
    return ToyConfig(output=str(tmp_path / name), **kw)


def _trainer(cfg: ToyConfig) -> Trainer:
    """A set-up single-process trainer (its ``task`` has the test hooks)."""
    env = DistEnv()
    trainer = Trainer(cfg, ToyTask(cfg, env, CPU), env, CPU)
    trainer.setup()
    return trainer


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint contents (tensors with ``torch.equal``), naming the first difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_run(a: Path, b: Path) -> None:
    """Two output folders hold the same run: last.pt (raw and EMA weights, optimiser, EMA count, step, RNG, best
    metric, history) bitwise, and the same metrics.csv rows; only wall-clock timings and the options that say how
    the run was launched (resume, max_steps, output) may differ."""
    la, lb = _load(a / "last.pt"), _load(b / "last.pt")
    for saved in (la, lb):
        saved["train_state"].pop("train_config")
        for row in saved["train_state"]["history"]:
            for k in TIMING:
                row.pop(k)
    _assert_same(la, lb, "last.pt")
    assert _rows(a) == _rows(b)
    _assert_same(_load(a / "best.pt"), _load(b / "best.pt"), "best.pt")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _max_diff(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> float:
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x if x[k].is_floating_point())


# --------------------------------------------------------------------------------------------- 1. exact resume


def test_stopped_and_resumed_run_is_bitwise_the_uninterrupted_run(tmp_path):
    """A run stopped at an epoch boundary (``max_steps``) and resumed from its last.pt ends bitwise where the
    uninterrupted run ends: raw and EMA weights, BN statistics, momentum buffers, EMA count, step, RNG state,
    best.pt and every metrics.csv row. Dropout (global RNG), per-epoch noise (``set_epoch``), the data order, the
    warm-up + cosine schedule and the EMA warm-up all depend on state that last.pt must carry."""
    run_training(_config(tmp_path, "straight"), ToyTask)
    first = run_training(_config(tmp_path, "cut", max_steps=4), ToyTask)  # 4 steps = epoch 1 of 3
    assert first["steps"] == 4 and first["epochs_done"] == 1
    last = tmp_path / "cut" / "last.pt"
    result = run_training(ToyConfig(**resume_settings(str(last), "toy", max_steps=None)), ToyTask)
    assert result["steps"] == 12 and result["epochs_done"] == 3
    _assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_kill_9_while_writing_last_pt_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    """A real SIGKILL, half-way through writing epoch 2's last.pt: last.pt is still epoch 1's, whole and loadable
    (the half-written bytes are only in a temporary file beside it), and resuming from it replays epoch 2 and ends
    bitwise equal to the uninterrupted run, in weights, optimiser state and metrics.csv rows."""
    run_training(_config(tmp_path, "straight"), ToyTask)
    out = tmp_path / "killed"
    marker = tmp_path / "hanging"
    fields = {"output": str(out), "hang_at_epoch": 2, "marker": str(marker)}
    log = tmp_path / "worker.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, __file__, "train", json.dumps(fields)], cwd=REPO, env=_env(),
                                stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), log.read_text()[-4000:]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = _load(out / "last.pt")["train_state"]
    assert state["epoch"] == 1 and state["step"] == 4
    others = [p for p in out.iterdir() if p.name not in ("last.pt", "best.pt", "metrics.csv")]
    assert len(others) == 1 and others[0].stat().st_size > 0, others  # the half-written temporary file
    result = run_training(ToyConfig(**resume_settings(str(out / "last.pt"), "toy")), ToyTask)
    assert result["steps"] == 12
    _assert_same_run(tmp_path / "straight", out)


# --------------------------------------------------------------------------------------------- 2. non-finite steps


def _snapshot(trainer: Trainer) -> dict[str, Any]:
    """What an optimiser step changes: parameters, BN statistics, momentum, the EMA (weights and count), the step."""
    return {
        "params": {k: p.detach().clone() for k, p in trainer.model.named_parameters()},
        "buffers": {k: b.clone() for k, b in trainer.model.named_buffers()},
        "momentum": [s["momentum_buffer"].clone() for s in trainer.optimizer.state.values()],
        "ema": {k: v.clone() for k, v in trainer.ema.module.state_dict().items()},
        "ema_updates": trainer.ema.updates,
        "step": trainer.step,
    }


def test_non_finite_steps_change_nothing_and_training_continues(tmp_path):
    """A NaN loss, an infinite loss, a finite loss with infinite gradients and a forward pass on NaN inputs each skip
    their step: parameters, BN running statistics, momentum, the EMA and the step count stay exactly as they were,
    the next step trains again, the skips are counted (result and metrics.csv), and no non-finite value reaches the
    saved weights. (Before BN statistics were restored, one NaN forward left every later evaluation NaN.)"""
    trainer = _trainer(_config(tmp_path, "run"))  # 3 epochs x 4 steps
    task = trainer.task
    # 5-6: two in a row, across no epoch boundary; 2: mid-epoch; 9: NaN activations in the forward pass
    task.poison = {2: "nan", 5: "inf", 6: "inf_grad", 9: "nan_forward"}
    snaps: list[dict[str, Any]] = []
    task.on_loss = lambda i: snaps.append(_snapshot(trainer))
    result = trainer.fit()
    snaps.append(_snapshot(trainer))
    assert task.calls == 12 and result["skipped_steps"] == 4 and result["steps"] == 8
    for i in range(12):
        before, after = snaps[i], snaps[i + 1]
        if i in task.poison:
            _assert_same(before, after, f"skipped step {i}")
        else:
            assert after["step"] == before["step"] + 1 and after["ema_updates"] == before["ema_updates"] + 1
            assert all(not torch.equal(before["params"][k], after["params"][k]) for k in before["params"]), i
    assert [int(r["skipped_steps"]) for r in _rows(tmp_path / "run")] == [1, 3, 4]  # cumulative, per epoch
    assert all(math.isfinite(float(r["score"])) for r in _rows(tmp_path / "run"))
    saved = _load(tmp_path / "run" / "last.pt")
    for weights in (saved["state_dict"], saved["train_state"]["model"]):
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_max_bad_steps_in_a_row_stop_training_with_the_engines_error(tmp_path):
    """MAX_BAD_STEPS - 1 non-finite steps in a row, across epoch boundaries, are survived (a good step resets the
    streak); MAX_BAD_STEPS in a row raise TrainingError naming the cause, the streak's length and the task's hint,
    at exactly the MAX_BAD_STEPS-th step, and the last.pt written meanwhile holds the untouched initial weights."""
    n = MAX_BAD_STEPS
    survivor = _trainer(_config(tmp_path, "survives", epochs=n // 4 + 2, max_steps=2))
    survivor.task.poison = dict.fromkeys(range(n - 1), "inf")
    result = survivor.fit()
    assert result["skipped_steps"] == n - 1 and result["steps"] == 2 and survivor.guard.streak == 0

    trainer = _trainer(_config(tmp_path, "diverges", epochs=n // 4 + 2))
    trainer.task.poison = dict.fromkeys(range(10 * n), "nan")
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingError, match=rf"NaN/inf for {n} consecutive steps \(epoch {n // 4}\)") as err:
        trainer.fit()
    assert trainer.task.divergence_hint in str(err.value)
    assert trainer.task.calls == n and trainer.step == 0
    saved = _load(tmp_path / "diverges" / "last.pt")["train_state"]
    assert saved["epoch"] == n // 4 - 1 and saved["skipped_steps"] == n - 4
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(saved["model"][k], start[k]) for k in params)


# --------------------------------------------------------------------------------------------- 3. N x b == 1 x N*b


def test_two_processes_train_like_one_process_with_twice_the_batch(tmp_path):
    """torchrun, 2 gloo processes x batch 2 with SyncBN, against 1 process x batch 4: the same raw and EMA weights
    (to the 2e-5 of the detection and segmentation tests), losses and metric. The engine's share of the global
    batch (GlobalBatchSampler), its world-size loss scaling under DDP's gradient average, the EMA and rank 0's
    files must all be right for the toy task too. No dropout: rank 1 draws its own masks by design."""
    from test_distributed import torchrun

    common = dict(dropout=0.0, epochs=2)
    run_training(_config(tmp_path, "single", batch_size=4, **common), ToyTask)
    ddp = {"output": str(tmp_path / "ddp"), "batch_size": 2, "sync_bn": True, **common}
    torchrun([__file__, "train", json.dumps(ddp)], timeout=120)
    a, b = _load(tmp_path / "single" / "last.pt"), _load(tmp_path / "ddp" / "last.pt")
    assert b["train_state"]["world_size"] == 2 and b["train_state"]["global_batch"] == 4
    assert a["train_state"]["step"] == b["train_state"]["step"] == 8
    raw = _max_diff(a["train_state"]["model"], b["train_state"]["model"])
    ema = _max_diff(a["state_dict"], b["state_dict"])
    torch.manual_seed(0)
    moved = _max_diff(ToyNet(0.0).state_dict(), a["train_state"]["model"])
    print(f"max abs diff: raw {raw:.3g}, EMA {ema:.3g}; largest change from the start {moved:.3g}")
    assert raw <= 2e-5 and ema <= 2e-5
    assert moved > 1e-2  # agreeing to 2e-5 is not agreeing on nothing
    for ra, rb in zip(_rows(tmp_path / "single"), _rows(tmp_path / "ddp"), strict=True):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-5)
        assert float(ra["score"]) == pytest.approx(float(rb["score"]), rel=1e-5)


# --------------------------------------------------------------------------------------------- 4. EMA


def test_ema_follows_the_documented_update_with_its_warm_up(tmp_path):
    """After every optimiser step n, EMA = d * EMA + (1 - d) * weights with d = min(decay, (1 + n) / (10 + n)),
    starting from the initial weights; BN statistics are averaged alike, integer buffers copied. Computed here in
    float64 from the raw weights after each step, independently of ModelEma. Decay 0.5 over 12 steps covers the
    warm-up (n < 8) and the cap; the result differs from the raw weights and from an EMA without warm-up by far
    more than the tolerance. last.pt's main weights are the EMA's, and the EMA is what was evaluated."""
    trainer = _trainer(_config(tmp_path, "run", ema_decay=0.5))
    states: list[dict[str, torch.Tensor]] = []  # the raw weights before step i = after step i - 1
    trainer.task.on_loss = lambda i: states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    result = trainer.fit()
    states.append(dict(trainer.model.state_dict()))
    assert len(states) == 13 and result["steps"] == 12

    def average(warm_up: bool) -> dict[str, torch.Tensor]:
        ema = {k: v.double() if v.is_floating_point() else v for k, v in states[0].items()}
        for n, weights in enumerate(states[1:], start=1):
            d = min(0.5, (1 + n) / (10 + n)) if warm_up else 0.5
            ema = {k: d * e + (1 - d) * weights[k].double() if e.is_floating_point() else weights[k]
                   for k, e in ema.items()}  # fmt: skip
        return ema

    expected, engine = average(warm_up=True), trainer.ema.module.state_dict()
    assert _max_diff(expected, engine) <= 1e-6
    assert all(torch.equal(engine[k], v) for k, v in expected.items() if not v.is_floating_point())
    assert _max_diff(expected, average(warm_up=False)) > 1e-4 and _max_diff(expected, states[-1]) > 1e-4
    assert trainer.ema.updates == 12 and isinstance(trainer.ema, ModelEma)
    _assert_same(_load(tmp_path / "run" / "last.pt")["state_dict"], dict(engine), "last.pt EMA")
    _, row = trainer.task.evaluate(trainer.ema.module)
    assert float(_rows(tmp_path / "run")[-1]["score"]) == row["score"]


# --------------------------------------------------------------------------------------------- 5. atomic files


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_checkpoint_write_failing_half_way_leaves_the_previous_file(tmp_path, monkeypatch, name):
    """torch.save writes half of epoch 2's ``name`` and fails (a full disk): the error reaches the caller, the
    previous file is byte for byte epoch 1's and loads, and no partial file is left at the final path or beside
    it. The run then resumes from that last.pt."""
    trainer = _trainer(_config(tmp_path, "run", epochs=2))
    out = tmp_path / "run"
    kept: dict[str, bytes] = {}
    trainer.task.on_epoch = lambda epoch: kept.setdefault(name, (out / name).read_bytes())
    real_save = torch.save
    torn: list[Any] = []

    def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        is_last = "train_state" in obj
        if (name == "last.pt") == is_last and len(kept) and not torn:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            torn.append(obj)
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    monkeypatch.undo()
    assert torn and (out / name).read_bytes() == kept[name]
    assert _load(out / name).keys() == torn[0].keys()  # loads, and is the file the failed write replaces
    assert _load(out / "last.pt")["train_state"]["epoch"] == (1 if name == "last.pt" else 2)
    assert sorted(os.listdir(out)) == ["best.pt", "last.pt", "metrics.csv"]  # no temporary file left
    result = run_training(ToyConfig(**resume_settings(str(out / "last.pt"), "toy")), ToyTask)
    assert result["epochs_done"] == 2 and result["steps"] == 8


# --------------------------------------------------------------------------------------------- worker


def _hang_in_checkpoint_write(epoch: int, marker: Path) -> None:
    """Make the write of epoch ``epoch``'s last.pt stop half-way, create ``marker`` and wait to be killed."""
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("train_state", {}).get("epoch") == epoch:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            marker.touch()
            time.sleep(600)
        real_save(obj, f, *args, **kwargs)

    torch.save = save


def _train_worker(config_json: str) -> None:
    """Train the toy task with these ToyConfig fields (plain, or one process of torchrun's job)."""
    fields = json.loads(config_json)
    if "epoch_seconds_by_rank" in fields:  # each rank's clock says its own epoch time (--time-limit's test)
        seconds = fields.pop("epoch_seconds_by_rank")[int(os.environ.get("RANK", "0"))]
        train_epoch = Trainer.train_epoch
        Trainer.train_epoch = lambda self, epoch: {**train_epoch(self, epoch), "epoch_time_s": seconds}  # type: ignore[method-assign]
    if "eval_seconds_by_rank" in fields:  # each rank's validation pass takes its own time (the cadence's test)
        pause = fields.pop("eval_seconds_by_rank")[int(os.environ.get("RANK", "0"))]
        evaluate = ToyTask.evaluate
        ToyTask.evaluate = lambda self, model: (time.sleep(pause), evaluate(self, model))[1]  # type: ignore[method-assign]
    if "hang_at_epoch" in fields:
        _hang_in_checkpoint_write(fields.pop("hang_at_epoch"), Path(fields.pop("marker")))
    run_training(ToyConfig(**fields), ToyTask)


if __name__ == "__main__":  # the subprocesses' entry: tests/test_engine_loop.py train <json>
    {"train": _train_worker}[sys.argv[1]](sys.argv[2])


# --------------------------------------------------------------------------------------------- early stopping


def test_patience_stops_after_n_evaluations_without_improvement_and_resumes_the_count(tmp_path):
    """Scripted metrics 0.1, 0.3, 0.2, 0.25, 0.5 with --patience 2: the run stops after epoch 4 (two evaluations
    without beating 0.3), best.pt holds epoch 2's weights, and a resume carries the count on."""
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.5, 0.6])

    def scripted(task: ToyTask) -> None:
        def evaluate(model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
            metrics = {"score": next(scores)}
            return metrics, dict(metrics)

        task.evaluate = evaluate  # type: ignore[method-assign]

    cfg = _config(tmp_path, "early", epochs=8, patience=2)
    trainer = _trainer(cfg)
    scripted(trainer.task)
    best_weights = {}
    trainer.task.on_epoch = lambda epoch: best_weights.setdefault(epoch, trainer.ema.module.head.weight.clone())
    result = trainer.fit()
    assert result["stopped_early"] and result["epochs_done"] == 4 and result["best_metric"] == 0.3
    with open(tmp_path / "early" / "metrics.csv") as f:
        assert [float(r["score"]) for r in csv.DictReader(f)] == [0.1, 0.3, 0.2, 0.25]
    best = torch.load(tmp_path / "early" / "best.pt", weights_only=True)
    assert best["metrics"]["score"] == 0.3 and torch.equal(best["state_dict"]["head.weight"], best_weights[2])
    last = torch.load(tmp_path / "early" / "last.pt", weights_only=True)["train_state"]
    assert last["epoch"] == 4 and last["evaluations_since_best"] == 2
    # resumed with more patience, the count goes on from 2: one more evaluation without improvement stops it
    resumed = ToyConfig(**{**resume_settings(str(tmp_path / "early" / "last.pt"), "toy"), "patience": 3})
    trainer = _trainer(resumed)
    scores = iter([0.29, 0.31])
    scripted(trainer.task)
    result = trainer.fit()
    assert result["stopped_early"] and result["epochs_done"] == 5 and result["best_metric"] == 0.3


def test_patience_without_validation_is_an_error(tmp_path):
    with pytest.raises(TrainingError, match="--patience stops on the validation metric"):
        _trainer(_config(tmp_path, "noval", validate=False, patience=3))


def test_without_patience_every_epoch_runs(tmp_path):
    cfg = _config(tmp_path, "all", epochs=4)
    trainer = _trainer(cfg)
    trainer.task.evaluate = lambda model: ({"score": 0.1}, {"score": 0.1})  # type: ignore[method-assign]
    result = trainer.fit()
    assert not result["stopped_early"] and result["epochs_done"] == 4


def test_evaluation_time_is_logged_for_evaluated_epochs_only(tmp_path, capsys):
    """What validation costs the run is in metrics.csv (``eval_time_s``) and in the epoch line, on the epochs that
    evaluate (``eval_interval`` 2 over 3 epochs: epochs 2 and 3, the last always)."""
    cfg = _config(tmp_path, "timed", epochs=3, eval_interval=2)
    trainer = _trainer(cfg)

    def slow_evaluate(model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        time.sleep(0.05)
        return {"score": 0.1}, {"score": 0.1}

    trainer.task.evaluate = slow_evaluate  # type: ignore[method-assign]
    trainer.fit()
    with open(tmp_path / "timed" / "metrics.csv") as f:
        times = [r["eval_time_s"] for r in csv.DictReader(f)]
    assert times[0] == "" and all(float(t) >= 0.05 for t in times[1:])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert ["| eval 0s" in line for line in lines] == [False, True, True]


# --------------------------------------------------------------------------------------------- time limit


def _scripted_epoch_times(trainer: Trainer, seconds: list[float]) -> None:
    """Each epoch's training reports the next of ``seconds`` as its ``epoch_time_s`` (a clock the test sets)."""
    times = iter(seconds)
    train_epoch = trainer.train_epoch

    def timed(epoch: int) -> dict[str, Any]:
        row = train_epoch(epoch)
        row["epoch_time_s"] = next(times)
        return row

    trainer.train_epoch = timed  # type: ignore[method-assign]


def test_time_limit_ends_the_run_after_the_last_epoch_that_fits(tmp_path, capsys):
    """45 s for 8 epochs of 10 s: after epoch 4 (40 s spent) a fifth would end at 50 s, so epoch 4 is the last:
    evaluated, saved, and said once; the schedule stays planned for 8 epochs (its rate at epoch 4 is step 15 of
    32). Resumed with the same limit the run does nothing; with 66 s it continues the same schedule to epoch 6."""
    cfg = _config(tmp_path, "limited", epochs=8, time_limit=0.75)
    trainer = _trainer(cfg)
    _scripted_epoch_times(trainer, [10.0] * 8)
    result = trainer.fit()
    assert result["epochs_done"] == 4 and result["steps"] == 16 and result["time_limit_reached"]
    rows = _rows(tmp_path / "limited")
    assert float(rows[-1]["lr"]) == pytest.approx(lr_at(15, 32, 2, 0.05))  # ToyConfig: lr 0.05, 2 warm-up steps
    assert rows[-1]["score"] != ""  # the last epoch is evaluated
    last = _load(tmp_path / "limited" / "last.pt")["train_state"]
    assert last["epoch"] == 4 and last["train_config"]["epochs"] == 8
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("time limit")]
    assert len(lines) == 1 and "ends after epoch 4 of 8" in lines[0]
    saved = resume_settings(str(tmp_path / "limited" / "last.pt"), "toy")
    trainer = _trainer(ToyConfig(**saved))
    assert trainer.fit()["epochs_done"] == 4 and trainer.step == 16  # its time is spent: nothing more
    trainer = _trainer(ToyConfig(**{**saved, "time_limit": 1.1}))
    _scripted_epoch_times(trainer, [10.0] * 4)
    result = trainer.fit()
    assert result["epochs_done"] == 6 and result["time_limit_reached"]
    assert float(_rows(tmp_path / "limited")[-1]["lr"]) == pytest.approx(lr_at(23, 32, 2, 0.05))


def test_an_ample_time_limit_changes_nothing(tmp_path):
    limited, plain = _config(tmp_path, "ample", epochs=3, time_limit=60.0), _config(tmp_path, "plain", epochs=3)
    for cfg in (limited, plain):
        trainer = _trainer(cfg)
        _scripted_epoch_times(trainer, [10.0] * 3)
        result = trainer.fit()
        assert result["epochs_done"] == 3 and not result["time_limit_reached"]
    _assert_same_run(tmp_path / "ample", tmp_path / "plain")


def test_a_resumed_run_spends_what_is_left_of_its_time_limit(tmp_path):
    """Stopped after epoch 1 (10 s of 45), resumed with 15 s epochs: 25 s after epoch 2 (12.5 s an epoch) leave
    room for a third, 40 s after it do not, so the run ends at epoch 3; a resume that forgot the first epoch's
    10 s would go on to epoch 4."""
    cfg = _config(tmp_path, "cut", epochs=8, time_limit=0.75, max_steps=4)
    trainer = _trainer(cfg)
    _scripted_epoch_times(trainer, [10.0])
    assert trainer.fit()["epochs_done"] == 1
    trainer = _trainer(ToyConfig(**resume_settings(str(tmp_path / "cut" / "last.pt"), "toy", max_steps=None)))
    _scripted_epoch_times(trainer, [15.0] * 7)
    result = trainer.fit()
    assert result["epochs_done"] == 3 and result["time_limit_reached"]


def test_under_torchrun_every_rank_stops_after_the_same_epoch(tmp_path):
    """Two ranks whose clocks say 10 s and 30 s an epoch, 45 s for 4 epochs: alone they would stop after epochs 4
    and 1, and the rank that stopped would leave the other waiting in its next step; on the mean (20 s) both stop
    after epoch 2."""
    from test_distributed import torchrun

    job = {"output": str(tmp_path / "ddp"), "batch_size": 2, "epochs": 4, "time_limit": 0.75,
           "epoch_seconds_by_rank": [10.0, 30.0]}  # fmt: skip
    torchrun([__file__, "train", json.dumps(job)], timeout=120)
    last = _load(tmp_path / "ddp" / "last.pt")["train_state"]
    assert last["world_size"] == 2 and last["epoch"] == 2 and last["train_config"]["epochs"] == 4


# --------------------------------------------------------------------------------------------- validation cadence


def test_auto_eval_interval_keeps_validation_near_a_tenth_of_the_training_time(tmp_path, capsys):
    """Left open, validation runs after epochs 1 and 2; then a pass of 0.25 s against 1 s of training an epoch
    gives every 3rd epoch (3 x 10% of 1 s covers 0.25 s), and always the last: epochs 1, 2, 3, 6, 8. The cadence is
    said once and saved with the run; the weights are those of a run that evaluates every epoch."""

    def slow_evaluate(model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        time.sleep(0.25)
        return {"score": 0.5}, {"score": 0.5}

    for name, interval in (("auto", None), ("every", 1)):
        trainer = _trainer(_config(tmp_path, name, epochs=8, eval_interval=interval))
        _scripted_epoch_times(trainer, [1.0] * 8)
        trainer.task.evaluate = slow_evaluate  # type: ignore[method-assign]
        trainer.fit()
    rows = _rows(tmp_path / "auto")
    assert [int(r["epoch"]) for r in rows if r["score"]] == [1, 2, 3, 6, 8]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation:")]
    assert len(lines) == 1 and "every 3 epochs" in lines[0]
    auto, every = _load(tmp_path / "auto" / "last.pt"), _load(tmp_path / "every" / "last.pt")
    assert auto["train_state"]["train_config"]["eval_interval"] == 3  # a resume keeps the cadence
    _assert_same(auto["state_dict"], every["state_dict"], "EMA weights")
    _assert_same(auto["train_state"]["model"], every["train_state"]["model"], "raw weights")


def test_under_torchrun_every_rank_evaluates_on_the_same_cadence(tmp_path):
    """Validation passes of 0 s and 0.3 s against 1 s epochs: alone the ranks would choose every epoch and every
    3rd; on the mean (0.15 s) both evaluate every 2nd epoch, which the saved run records."""
    from test_distributed import torchrun

    job = {"output": str(tmp_path / "ddp"), "batch_size": 2, "epochs": 4, "eval_interval": None,
           "epoch_seconds_by_rank": [1.0, 1.0], "eval_seconds_by_rank": [0.0, 0.3]}  # fmt: skip
    torchrun([__file__, "train", json.dumps(job)], timeout=120)
    assert _load(tmp_path / "ddp" / "last.pt")["train_state"]["train_config"]["eval_interval"] == 2
    assert [int(r["epoch"]) for r in _rows(tmp_path / "ddp") if r["score"]] == [1, 2, 4]


def test_time_limit_must_be_positive(tmp_path):
    with pytest.raises(OptionError, match="--time-limit must be a finite number > 0"):
        _config(tmp_path, "zero", time_limit=0.0)
