"""``efficientdet train``: the options of the chosen task's config, one flag per field.

``--task detection`` (default) offers the fields of :class:`TrainConfig`, ``--task segmentation`` those of
:class:`SegTrainConfig`, each with its own defaults in the help. A flag of the other task is refused with a line
that says so, and on ``--resume`` a flag that would change what the saved run computes is refused rather than
dropped (only the fields marked ``resume`` in their metadata may differ: epochs, workers, device ...).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.recipe import RecipeConfig
from ..engine.tasks.detection import NECK_FIELDS, TrainConfig
from ..engine.tasks.segmentation import SegTrainConfig
from ..models.config import aspect_pairs
from ..utils.fields import flag_name, resume_changeable
from ..utils.folders import first_free_folder
from .common import setup_logging
from .options import add_config_options, add_task_parser, given_options, option_flags

LOG = logging.getLogger(__name__)

CONFIGS: dict[str, type[RecipeConfig]] = {"detection": TrainConfig, "segmentation": SegTrainConfig}
ANCHOR_FLAGS = ("--aspect-ratios", "--anchor-scale")  # detection only: they change the model's anchors
# detection only: they change the size of the BiFPN and heads (the official code's fpn_num_filters,
# fpn_cell_repeats and box_class_repeats), which a model name otherwise fixes by compound scaling
NECK_FLAGS = tuple(flag_name(name) for name in NECK_FIELDS)
MODEL_FLAGS = ANCHOR_FLAGS + NECK_FLAGS


def add_anchor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aspect-ratios", type=float, nargs="+", metavar="R",
                   help="anchor width/height ratios (default: the model's, 1.0 2.0 0.5); "
                        "`efficientdet check-data` proposes some for your data")  # fmt: skip
    p.add_argument("--anchor-scale", type=float, metavar="F",
                   help="anchor side in strides of its level (default: the model's; Lite0: 3, D0: 4)")  # fmt: skip


def anchor_overrides(aspect_ratios: Sequence[float] | None, anchor_scale: float | None) -> dict[str, Any]:
    """``--aspect-ratios`` (w/h) and ``--anchor-scale`` as model config overrides; a ValueError names a bad flag."""
    overrides: dict[str, Any] = {}
    if aspect_ratios is not None:
        try:
            overrides["aspect_ratios"] = aspect_pairs(aspect_ratios)
        except ValueError as e:
            raise ValueError(f"--aspect-ratios: {e}") from None
    if anchor_scale is not None:
        if not (math.isfinite(anchor_scale) and anchor_scale > 0):
            raise ValueError(f"--anchor-scale must be finite and > 0, got {anchor_scale}")
        overrides["anchor_scale"] = float(anchor_scale)
    return overrides


def add_neck_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fpn-channels", type=int, metavar="N",
                   help="BiFPN and head channels (default: the model's; Lite0 64, D1 88)")  # fmt: skip
    p.add_argument("--fpn-repeats", type=int, metavar="N",
                   help="BiFPN layers (default: the model's; Lite0 3, D1 4)")  # fmt: skip
    p.add_argument("--head-repeats", type=int, metavar="N",
                   help="conv layers of the class and box heads before their prediction (default: the model's; 3 up "
                        "to D2)")  # fmt: skip


def neck_overrides(args: argparse.Namespace) -> dict[str, int]:
    """``--fpn-channels``, ``--fpn-repeats`` and ``--head-repeats`` as model config overrides; a ValueError names a
    bad flag."""
    overrides = {}
    for name in NECK_FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if value < 1:
            raise ValueError(f"{flag_name(name)} must be at least 1, got {value}")
        overrides[name] = int(value)
    return overrides


def add_train_parser(sub: argparse._SubParsersAction, task: str) -> argparse.ArgumentParser:
    p = add_task_parser(
        sub, "train", task, "train on a COCO / VOC / YOLO dataset (--task segmentation: images and label masks)",
        "Train", "detection (default) or segmentation (efficientdet-seg-* models, mask PNGs)",
    )  # fmt: skip
    add_config_options(p, CONFIGS[task])
    if task == "detection":
        add_anchor_options(p)
        add_neck_options(p)
    p.set_defaults(func=cmd_train)
    return p


def task_flags(task: str) -> set[str]:
    """Every flag ``efficientdet train --task task`` accepts beyond the shared ones."""
    return option_flags(CONFIGS[task]) | (set(MODEL_FLAGS) if task == "detection" else set())


def _same(a: Any, b: Any) -> bool:
    normal = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
    return normal(a) == normal(b)


def resumed_config(task: str, path: str, given: dict[str, Any]) -> RecipeConfig:
    """The saved run's config with the options that may change on resume; any other option that differs from the
    saved run is an error naming it (silently training with other settings than the user typed would be worse)."""
    from ..engine.trainer import resume_settings

    config_class = CONFIGS[task]
    saved = resume_settings(path, task)
    changeable = resume_changeable(config_class)
    changes, refused = {}, []
    for name, value in given.items():
        if name == "resume":
            continue
        if name in changeable:
            changes[name] = value
        elif not _same(saved.get(name), value):
            refused.append(flag_name(name))
    if refused:
        allowed = ", ".join(flag_name(n) for n in changeable)
        raise ValueError(f"{', '.join(refused)} cannot change on --resume: the run keeps its settings (these may "
                         f"change: {allowed}); to train with other settings start a new run, e.g. with "
                         f"--checkpoint {path}")  # fmt: skip
    return config_class(**resume_settings(path, task, **changes))


def train_config(args: argparse.Namespace) -> RecipeConfig:
    """The run's config from parsed ``efficientdet train`` arguments (``--resume``: the saved run's)."""
    task = getattr(args, "task", "detection")
    given = given_options(CONFIGS[task], args)
    anchors: dict[str, Any] = {}
    neck: dict[str, int] = {}
    if task == "detection":
        anchors = anchor_overrides(getattr(args, "aspect_ratios", None), getattr(args, "anchor_scale", None))
        neck = neck_overrides(args)
    if given.get("resume"):
        if anchors:
            raise ValueError("--aspect-ratios / --anchor-scale cannot change on --resume: the run keeps its anchors")
        if neck:
            raise ValueError(f"{' / '.join(NECK_FLAGS)} cannot change on --resume: the run keeps its model")
        return resumed_config(task, given["resume"], given)
    if anchors or neck:
        given["model_overrides"] = {**anchors, **neck}
    if "output" not in given:
        default = CONFIGS[task].__dataclass_fields__["output"].default
        given["output"] = free_output(default)
        if given["output"] != default:
            LOG.info("output: %s (%s holds an earlier run; --output chooses the folder)", given["output"], default)
    return CONFIGS[task](**given)


def free_output(default: str) -> str:
    """``default`` (``runs/train``), or the first of ``runs/train2``, ``runs/train3`` ... that holds no run (no
    ``last.pt`` / ``best.pt``): typing the same command twice must not replace the model the first run trained."""
    from ..engine.components import run_file_in

    return first_free_folder(default, lambda folder: run_file_in(folder) is not None)


def _missing_data(task: str, args: argparse.Namespace) -> str | None:
    given = vars(args)
    if given.get("resume") or given.get("data"):
        return None
    if task == "detection":
        return ("--data is required (or --resume RUN/last.pt); `efficientdet demo` trains on a built-in synthetic "
                "dataset")  # fmt: skip
    if given.get("train_images") or given.get("train_masks"):
        return None
    return "give --train-images and --train-masks (and --val-images, --val-masks), or --data VOC_ROOT"


def interrupted_line(cfg: RecipeConfig | None, started: float) -> str:
    """What a Ctrl-C left: the ``last.pt`` this run wrote or resumed (each finished epoch rewrites it) and the
    command that continues the run, or that nothing was saved. A ``last.pt`` older than the run and not the one
    it resumed belongs to an earlier run in the same folder and is not offered (2 s of slack: FAT's mtimes)."""
    from ..engine.components import LAST_FILE
    from ..models.weights import CheckpointError, read_file

    last = Path(cfg.output) / LAST_FILE if cfg is not None else None
    ours = (
        last is not None
        and last.is_file()
        and (last.stat().st_mtime >= started - 2 or (cfg.resume and Path(cfg.resume).resolve() == last.resolve()))
    )
    if not ours:
        return "interrupted before the first epoch ended; nothing was saved"
    try:
        state = read_file(last)["train_state"]
        done = f"epoch {state['epoch']} of {state['train_config']['epochs']}"
    except (CheckpointError, KeyError, TypeError):
        done = "the last finished epoch"
    return f"interrupted; {last} holds {done}: `efficientdet train --resume {last}` continues the run"


def cmd_train(args: argparse.Namespace) -> int:
    from ..data.readers import DatasetError
    from ..engine.utils import TrainingError
    from ..models.segmenter import is_segmentation_model
    from ..models.weights import CheckpointError

    task = args.task
    setup_logging()
    problem = _missing_data(task, args)
    model = vars(args).get("model")
    if task == "segmentation":
        if vars(args).get("pretrained"):
            problem = "--pretrained: no segmentation weights are published; use --checkpoint or --pretrained-backbone"
        elif model is not None and not is_segmentation_model(model):
            problem = f"--task segmentation needs an efficientdet-seg-* model, not {model}"
    if problem:
        print(f"efficientdet train: {problem}", file=sys.stderr)
        return 2
    cfg = None
    started = time.time()
    try:
        cfg = train_config(args)
        if task == "segmentation":
            from ..engine.train_segmentation import train_segmentation

            result = train_segmentation(cfg)  # type: ignore[arg-type]
        else:
            from ..engine.train import train

            result = train(cfg)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets the signal; rank 0 speaks
            print(f"efficientdet train: {interrupted_line(cfg, started)}", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C stopped
    except (TrainingError, CheckpointError, DatasetError, ValueError, FileNotFoundError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"efficientdet train: {message}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 reports for the job
        return 0
    where = f"checkpoints: {result['best']} (best), {result['last']} (last)"
    best = result["best_metric"]  # -inf when the run evaluated nothing (no validation split)
    if not math.isfinite(best):
        print(where)
    elif task == "segmentation":
        print(f"best mIoU {100 * best:.2f}%; {where}")
    else:
        print(f"best AP {best:.4f}; {where}")
    return 0
