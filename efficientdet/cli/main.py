"""The ``efficientdet`` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..engine.tasks.detection_recipe import SMALL_DATA_MIN_SIZE
from ..models.config import EFFDET_PARAMS, get_config, list_models
from ..ops.labeler import MATCH_IOU
from ..utils.folders import output_clash
from ..utils.text import counted
from .argtypes import non_negative_int, positive_int
from .common import setup_logging
from .options import TASKS, other_task
from .train import add_anchor_options, anchor_overrides


def _pct(ours: float, ref: float | None) -> str:
    return f"{100.0 * (ours - ref) / ref:+.2f}%" if ref else ""


def cmd_info(args: argparse.Namespace) -> int:
    from ..models.flops import model_stats

    names = args.names or list_models()
    unknown = [n for n in names if n.lower() not in list_models()]
    if unknown:
        print(f"efficientdet info: unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}",
              file=sys.stderr)  # fmt: skip
        return 2
    overrides = {"num_classes": args.num_classes}
    rows = [model_stats(get_config(name, **overrides), args.img_size) for name in names]
    if args.json:
        keep = ("name", "params", "flops", "image_size")
        print(json.dumps([{k: r[k] for k in keep} for r in rows], indent=2))
        return 0
    header = (
        f"{'model':20s} {'backbone':19s} {'input':>5s} {'BiFPN WxD':>9s} {'head':>4s} {'fusion':>7s} {'levels':>6s} "
        f"{'params':>12s} {'paper':>7s} {'diff':>7s} {'effdet':>7s} {'FLOPs':>9s} {'paper':>7s} {'diff':>7s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        paper_p = r["paper_params"] if args.num_classes == 90 else None
        effdet_p = EFFDET_PARAMS.get(r["name"]) if args.num_classes == 90 else None
        same_size = args.img_size is None
        paper_f = r["paper_flops"] if (same_size and args.num_classes == 90) else None
        effdet_col = ("exact" if effdet_p == r["params"] else _pct(r["params"], effdet_p)) if effdet_p else ""
        size = r["image_size"] if isinstance(r["image_size"], int) else "x".join(map(str, r["image_size"]))
        bifpn = f"{r['fpn_channels']}x{r['fpn_repeats']}"
        paper_p_text = f"{paper_p / 1e6:.1f}M" if paper_p else ""
        paper_f_text = f"{paper_f / 1e9:.2f}B" if paper_f else ""
        print(
            f"{r['name']:20s} {r['backbone']:19s} {size!s:>5s} {bifpn:>9s} "
            f"{r['head_repeats']:>4d} {r['fusion']:>7s} {r['levels']:>6s} {r['params']:>12,d} "
            f"{paper_p_text:>7s} {_pct(r['params'], paper_p):>7s} {effdet_col:>7s} "
            f"{r['flops'] / 1e9:>8.2f}B {paper_f_text:>7s} {_pct(r['flops'], paper_f):>7s}"
        )
    print(
        "\nFLOPs: multiply-adds of convs/linears at the input size shown (the paper's convention); "
        "paper: published figures (official README; Lite params rounded to 0.1M); "
        "effdet: the effdet package's exact count."
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``efficientdet demo``: into ``runs/demo`` (``runs/demo2`` ... once that holds a run) or ``--output``, whose
    problems (a file, no write access, an earlier run) are said before the synthetic data is made."""
    from ..data.readers import DatasetError
    from ..engine.components import run_file_in
    from ..engine.utils import TrainingError
    from ..tools.demo import DEMO_OUTPUT, run_demo
    from .train import free_output

    setup_logging()
    output = args.output or free_output(DEMO_OUTPUT)
    problem = output_clash(("--output", output, "folder"))
    held = None if problem else run_file_in(Path(output))
    if held is not None:
        problem = (f"--output {output}: holds an earlier run ({held.name}); choose another folder, or leave --output "
                   f"out ({free_output(DEMO_OUTPUT)} is free)")  # fmt: skip
    if problem:
        print(f"efficientdet demo: {problem}", file=sys.stderr)
        return 2
    if output != DEMO_OUTPUT and not args.output:
        print(f"output: {output} ({DEMO_OUTPUT} holds an earlier demo; --output chooses the folder)")
    try:
        run_demo(output, epochs=args.epochs, seed=args.seed, workers=args.workers)
    except (TrainingError, DatasetError, ValueError, OSError) as e:
        print(f"efficientdet demo: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..evaluation.data_check import check_dataset, format_report, read_splits, save_plots, write_json

    problem = output_clash(("--json", args.json, "file"), ("--plots", args.plots, "folder"))
    if problem:
        print(f"efficientdet check-data: {problem}", file=sys.stderr)
        return 2
    try:
        default = get_config(args.model)
        config = default.replace(**anchor_overrides(args.aspect_ratios, args.anchor_scale))
        size, read = args.img_size, None
        if size is None and isinstance(default.image_size, int):  # sized from the training split: read once here
            read = read_splits(args.data, args.format, args.splits)
            size, why = _training_size(read[0], args.data, args.format, default.image_size)
            if why:
                print(f"input size: {size} px, what `train` picks for {why}; --img-size checks another")
        check = check_dataset(args.data, args.format, args.splits, config, size, default,
                              match_iou=args.match_iou, read=read)  # fmt: skip
    except KeyError as e:  # an unknown model name
        print(f"efficientdet check-data: {e.args[0]}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"efficientdet check-data: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(format_report(check))
    if args.json:
        write_json(check, args.json)
        print(f"wrote {args.json}")
    if args.plots:
        print("wrote " + ", ".join(str(p) for p in save_plots(check, args.plots)))
    return 0


def _training_size(found: list[tuple[str, Any]], data: str, fmt: str | None, model_size: int) -> tuple[int, str | None]:
    """The input size ``train`` would pick for ``data``'s ``train`` split, and why (None when there is no such
    split: the model's own size). ``found``: the splits read already (``read_splits``); a set without named splits
    is its own training split, and ``train`` is read here only when ``--splits`` left it out."""
    from ..data.readers import read_dataset, single_set
    from ..engine.tasks.detection_recipe import recipe_for, training_size

    train = next((d for name, d in found if name == "train"), None)
    if train is None and single_set(data, fmt):  # one COCO file, one folder of XML files: the set is `train`'s
        train = found[0][1]
    if train is None:
        try:
            train = read_dataset(data, fmt, "train")
        except (ValueError, OSError):
            return model_size, None
    count = len(train.records)
    return training_size(count, model_size), f"{counted(count, 'training image')} ({recipe_for(count).kind})"


def _add_check_data_parser(sub: Any) -> None:
    p = sub.add_parser("check-data", help="labels, box sizes and anchor coverage of a dataset, and better anchors")
    p.add_argument("--data", required=True, help="dataset: VOC root, YOLO root (data.yaml) or COCO json / folder")
    p.add_argument("--format", choices=["voc", "coco", "yolo"], help="dataset format (default: detected)")
    p.add_argument("--splits", nargs="+", metavar="SPLIT",
                   help="splits to check (default: those of train, val, test, trainval that exist)")  # fmt: skip
    p.add_argument("--model", default="efficientdet-lite0", help="whose anchors (default efficientdet-lite0)")
    p.add_argument("--img-size", type=positive_int,
                   help="input size (default: what `train` picks for this data: the model's own, at least "
                   f"{SMALL_DATA_MIN_SIZE} for small data)")  # fmt: skip
    add_anchor_options(p)
    p.add_argument("--match-iou", type=float, default=MATCH_IOU,
                   help=f"count a box as covered from this anchor IoU, the training run's --match-iou "
                        f"(default {MATCH_IOU:g}, the official matcher's)")  # fmt: skip
    p.add_argument("--json", help="write the whole report here, every box without a matching anchor included")
    p.add_argument("--plots", metavar="DIR", help="write <split>_boxes.png histograms into this folder")
    p.set_defaults(func=cmd_check_data)


def build_parser(task: str = "detection") -> argparse.ArgumentParser:
    """The whole command; ``train`` and ``eval`` offer the options of ``task`` (their ``--task``)."""
    import torch

    from .. import __version__
    from .bench import add_parser as add_bench_parser
    from .eval import add_eval_parser
    from .export import add_parser as add_export_parser
    from .predict import add_parser as add_predict_parser
    from .train import add_train_parser

    parser = argparse.ArgumentParser(prog="efficientdet", description=__doc__)
    version = f"efficientdet {__version__} (torch {torch.__version__})"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameters, FLOPs and structure of the model family")
    info.add_argument("names", nargs="*", metavar="NAME", help="models to show (default: all)")
    info.add_argument("--json", action="store_true", help="print a JSON list of {name, params, flops, image_size}")
    info.add_argument("--num-classes", type=positive_int, default=90, help="class count (default 90, COCO)")
    info.add_argument("--img-size", type=positive_int, default=None, help="count FLOPs at this input size instead")
    info.set_defaults(func=cmd_info)
    add_train_parser(sub, task)
    add_eval_parser(sub, task)
    demo = sub.add_parser("demo", help="generate a synthetic dataset, train a few minutes on CPU, evaluate, draw")
    demo.add_argument("--output", help="output folder (default runs/demo)")
    demo.add_argument("--epochs", type=positive_int, default=25)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--workers", type=non_negative_int, default=None, help="data-loading processes (default: as train's)"
    )
    demo.set_defaults(func=cmd_demo)
    _add_check_data_parser(sub)
    add_predict_parser(sub)
    add_export_parser(sub)
    add_bench_parser(sub)
    return parser


def requested_task(argv: Sequence[str]) -> str:
    """The ``--task`` of a ``train`` / ``eval`` command line (``detection`` when absent or misspelt: then argparse,
    which knows the choices, reports it)."""
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--task="):
            value = arg.split("=", 1)[1]
        else:
            continue
        return value if value in TASKS else "detection"
    return "detection"


def _unsupported(command: str, task: str, unknown: list[str]) -> str | None:
    """A line for flags that belong to the other task's ``command`` (None when they belong to neither)."""
    from . import eval as eval_command
    from . import train as train_command

    other = other_task(task)
    known = (train_command if command == "train" else eval_command).task_flags(other)
    theirs = [flag for flag in (u.split("=", 1)[0] for u in unknown) if flag in known]
    if not theirs:
        return None
    return f"{', '.join(theirs)}: {other} only, not an option of `efficientdet {command} --task {task}`"


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """The library's own warnings (e.g. an int8 file on a CPU where it may saturate) printed as one line, as errors
    are: ``efficientdet predict: warning: ...``, not Python's file, line number and source line of the library.
    Other packages' warnings keep Python's format."""
    python_format = warnings.formatwarning

    def format_warning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if category.__module__.split(".")[0] == "efficientdet":
            return f"efficientdet {command}: warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = python_format


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task = requested_task(argv)
    parser = build_parser(task)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        line = _unsupported(args.command, task, unknown) if args.command in ("train", "eval") else None
        if line:
            print(f"efficientdet {args.command}: {line}", file=sys.stderr)
            return 2
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with one_line_warnings(args.command):
            return args.func(args)
    except KeyboardInterrupt:  # train and predict say more themselves; every output is written atomically
        print(f"efficientdet {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C stopped


if __name__ == "__main__":
    sys.exit(main())
