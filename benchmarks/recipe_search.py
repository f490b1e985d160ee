"""Choose a training recipe honestly: on validation images carved from the training split, several seeds each.

Every candidate setting is trained with the plain command users run (``efficientdet train``), on the dataset's
``train`` split minus a held-out share (``--val-split auto --holdout-fraction F --holdout-seed H``: the same
held-out images for every setting and seed), once per training seed and held-out draw. The score of a run is
the AP of its *final* EMA weights on the held-out images with ``eval``'s default evaluation (soft-NMS), not the
best epoch's, which the same images chose. The ``test`` split is never read: evaluate the chosen setting on it
once, afterwards.

    python benchmarks/recipe_search.py --data ../shared/datasets/raccoon --seeds 0 1 2 --budget-minutes 600 \\
        --output runs/recipe-search

writes ``results.json`` and ``results.md`` (setting, val AP mean +- sample standard deviation over seeds, AP50,
AP of the same final weights with hard NMS, soft-NMS, flip TTA with each and box voting after each NMS, minutes
per run) in ``--output``.
``--only NAME ...`` runs some settings; ``--extra ARGS`` appends flags to every run (e.g. ``--extra "--amp bf16
--workers 1"``; later flags win, so ``--extra "--epochs 1"`` makes a smoke run).
``--holdout-seeds 0 1 2`` repeats everything on other draws of held-out images (32 images are few: one draw can
favour a setting that the next does not); each row then also gives the mean per draw, and ``results.md`` ends with
each setting's AP minus the first setting's, paired by draw and seed. Every setting runs on one (draw, seed)
before the next, so a search stopped early leaves complete pairs.
Runs already finished in ``--output`` are read back, not trained again, so a search can be stopped and continued.
Launch nothing else on the machine meanwhile: the minutes column is part of the result.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from efficientdet.evaluation.validate import EVAL_NMS

# Candidate recipes for small datasets (hundreds of images), as `efficientdet train` flags, each spelled out in
# full so that a row keeps its meaning when the defaults change. "unfrozen-320-bw50-60ep" was the command's default
# before the search; "frozen-448-bw200-60ep-giou8" is what it uses now (engine/tasks/detection_recipe.py), after
# "frozen-448-bw200-60ep", "frozen-448-bw200-130ep" and, for a few hours, "frozen-448-bw200-60ep-color"; the others
# are the levers earlier raccoon runs pointed at ("-color": photometric jitter, which the others switch off
# explicitly, as they did while the recipe had it on). "-giouW" adds the generalized-IoU box loss at weight W, which
# the small-data recipe has used since; every setting without it switches it off, as it was when they ran.
# "-giou16" (not adopted) doubles the default's weight; "frozen-512-" raises its input size.
NO_COLOR = ["--color-jitter", "0"]
NO_GIOU = ["--iou-loss-weight", "0"]
_SETTINGS: dict[str, list[str]] = {
    "unfrozen-320-bw50-60ep": ["--no-freeze-backbone", "--img-size", "320", "--box-loss-weight", "50",
                               "--epochs", "60", *NO_COLOR],
    "frozen-448-bw200-130ep": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                               "--epochs", "130", *NO_COLOR],
    "frozen-448-bw200-60ep": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                              "--epochs", "60", *NO_COLOR],
    "frozen-448-bw50-130ep": ["--freeze-backbone", "--img-size", "448", "--epochs", "130", *NO_COLOR],
    "frozen-384-bw100-160ep": ["--freeze-backbone", "--img-size", "384", "--box-loss-weight", "100",
                               "--epochs", "160", *NO_COLOR],
    "unfrozen-320-bw200-60ep": ["--no-freeze-backbone", "--img-size", "320", "--box-loss-weight", "200",
                                "--epochs", "60", *NO_COLOR],
    "frozen-448-bw200-130ep-color": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                                     "--epochs", "130", "--color-jitter", "0.3"],
    "frozen-448-bw200-60ep-color": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                                    "--epochs", "60", "--color-jitter", "0.3"],
    "frozen-448-bw200-130ep-stage1": ["--freeze-backbone", "--trainable-stages", "1", "--img-size", "448",
                                      "--box-loss-weight", "200", "--epochs", "130", *NO_COLOR],
    "frozen-448-bw200-60ep-mosaic": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                                     "--epochs", "60", "--mosaic", "0.5", *NO_COLOR],
    "frozen-448-bw200-60ep-mixup": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                                    "--epochs", "60", "--mixup", "0.5", *NO_COLOR],
    "frozen-448-bw200-60ep-erase": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                                    "--epochs", "60", "--erase", "0.5", *NO_COLOR],
    "frozen-448-bw200-60ep-giou8": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                                    "--epochs", "60", "--iou-loss-weight", "8", *NO_COLOR],
    "frozen-448-bw200-60ep-giou16": ["--freeze-backbone", "--img-size", "448", "--box-loss-weight", "200",
                                     "--epochs", "60", "--iou-loss-weight", "16", *NO_COLOR],
    "frozen-512-bw200-60ep-giou8": ["--freeze-backbone", "--img-size", "512", "--box-loss-weight", "200",
                                    "--epochs", "60", "--iou-loss-weight", "8", *NO_COLOR],
    "lite1-frozen-448-bw200-60ep": ["--model", "efficientdet-lite1", "--freeze-backbone", "--img-size", "448",
                                    "--box-loss-weight", "200", "--epochs", "60", *NO_COLOR],
    "lite2-frozen-448-bw200-60ep": ["--model", "efficientdet-lite2", "--freeze-backbone", "--img-size", "448",
                                    "--box-loss-weight", "200", "--epochs", "60", *NO_COLOR],
}  # fmt: skip
SETTINGS = {name: flags if "--iou-loss-weight" in flags else [*flags, *NO_GIOU] for name, flags in _SETTINGS.items()}
HOLDOUT_FRACTION = 0.2  # 32 of raccoon's 160 training images: enough boxes for AP to mean something
HOLDOUT_SEED = 0  # the default draw: the same held-out images for every setting and training seed


def finished(run: Path) -> bool:
    """The run saved its final weights and evaluated at least one epoch (its scores are
    :func:`evaluation_variants`', not the training's own evaluation)."""
    if not (run / "last.pt").is_file() or not (run / "metrics.csv").is_file():
        return False
    with open(run / "metrics.csv") as f:
        return any(r.get("AP") not in (None, "") for r in csv.DictReader(f))


# Each run's final EMA weights are scored on its held-out images under each of these evaluations: hard NMS, Gaussian
# soft-NMS (the paper's evaluation), horizontal-flip TTA with each, and each NMS followed by box voting (`eval
# --box-voting 0.8`). A run's "val AP" is the one `eval` uses by default (EVAL_NMS, no voting), whichever the
# training's own evaluation used when the run was trained.
VOTE_IOU = 0.8
# name: (column title, `validate` arguments)
EVALUATION_VARIANTS = {
    "hard_nms": ("hard NMS", {"nms": "hard", "vote_iou": None}),
    "soft_nms": ("soft-NMS", {"nms": "soft", "vote_iou": None}),
    "flip_tta_hard_nms": ("flip TTA, hard NMS", {"nms": "hard", "flip_tta": True, "vote_iou": None}),
    "flip_tta_soft_nms": ("flip TTA, soft-NMS", {"nms": "soft", "flip_tta": True, "vote_iou": None}),
    "hard_nms_vote": ("hard NMS, voting", {"nms": "hard", "vote_iou": VOTE_IOU}),
    "soft_nms_vote": ("soft-NMS, voting", {"nms": "soft", "vote_iou": VOTE_IOU}),
}
DEFAULT_VARIANT = f"{EVAL_NMS}_nms"


def evaluation_variants(data: str, run: Path, holdout_seed: int = HOLDOUT_SEED) -> dict[str, dict[str, float]]:
    """AP and AP50 of the run's final EMA weights on its held-out images under each of EVALUATION_VARIANTS
    (``{"AP": {variant: ap}, "AP50": {...}}``), cached in ``variants.json``."""
    cache = run / "variants.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if (set(cached["AP"]) == set(EVALUATION_VARIANTS) and "AP50" in cached
                and cached.get("holdout_seed", HOLDOUT_SEED) == holdout_seed):  # fmt: skip
            return {"AP": cached["AP"], "AP50": cached["AP50"]}
    from efficientdet.data.readers import read_dataset
    from efficientdet.engine.tasks.detection import hold_out
    from efficientdet.evaluation.validate import validate
    from efficientdet.models.factory import load_checkpoint

    model = load_checkpoint(str(run / "last.pt"))
    _, held_out = hold_out(read_dataset(data, None, "train"), HOLDOUT_FRACTION, holdout_seed)
    held_out = held_out.with_class_names(model.class_names)
    metrics = {name: validate(model, held_out, **kw) for name, (_, kw) in EVALUATION_VARIANTS.items()}
    scores = {key: {name: m[key] for name, m in metrics.items()} for key in ("AP", "AP50")}
    cache.write_text(json.dumps({**scores, "images": len(held_out), "holdout_seed": holdout_seed}))
    return scores


def train_once(
    data: str, setting: list[str], seed: int, run: Path, extra: list[str], holdout_seed: int = HOLDOUT_SEED
) -> float:
    """Train one run with the plain command, holding out draw ``holdout_seed``; return its wall minutes."""
    cmd = [sys.executable, "-m", "efficientdet", "train", "--data", data, "--val-split", "auto",
           "--holdout-fraction", str(HOLDOUT_FRACTION), "--holdout-seed", str(holdout_seed), "--seed", str(seed),
           "--output", str(run), "--exist-ok", *setting, *extra]  # fmt: skip
    start = time.perf_counter()
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "train.log", "w") as log:
        log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    minutes = (time.perf_counter() - start) / 60
    (run / "minutes.txt").write_text(f"{minutes:.2f}\n")
    return minutes


def run_folder(out: Path, setting: str, holdout_seed: int, seed: int) -> Path:
    """``SETTING/seedS`` on the default draw of held-out images (where earlier searches left their runs),
    ``SETTING/holdoutH/seedS`` on another."""
    folder = out / setting if holdout_seed == HOLDOUT_SEED else out / setting / f"holdout{holdout_seed}"
    return folder / f"seed{seed}"


def paired_difference(runs: list[dict], reference: list[dict]) -> dict:
    """AP of ``runs`` minus ``reference``'s on the same held-out draw and training seed: settings this close differ
    by less than one draw's or one seed's spread, and pairing takes both out."""
    ref = {(r["holdout_seed"], r["seed"]): r["AP"] for r in reference}
    diffs = [r["AP"] - ref[key] for r in runs if (key := (r["holdout_seed"], r["seed"])) in ref]
    return {"pairs": len(diffs), "differences": diffs, "mean": statistics.fmean(diffs) if diffs else None,
            "sd": statistics.stdev(diffs) if len(diffs) > 1 else None}  # fmt: skip


def summarise(name: str, runs: list[dict]) -> dict:
    aps = [r["AP"] for r in runs]
    return {
        "setting": name,
        "flags": " ".join(SETTINGS[name]),
        "runs": len(runs),
        "val_AP_mean": statistics.fmean(aps) if aps else None,
        "val_AP_std": statistics.stdev(aps) if len(aps) > 1 else None,
        "val_AP50_mean": statistics.fmean(r["AP50"] for r in runs) if runs else None,
        **{
            f"val_AP_{name}_mean": statistics.fmean(r[name] for r in runs) if runs else None
            for name in EVALUATION_VARIANTS
        },
        "minutes_per_run": statistics.fmean(r["minutes"] for r in runs) if runs else None,
        "seeds": [r["seed"] for r in runs],
        "holdout_seeds": [r["holdout_seed"] for r in runs],
        "val_AP_by_holdout": {
            str(h): statistics.fmean(r["AP"] for r in runs if r["holdout_seed"] == h)
            for h in sorted({r["holdout_seed"] for r in runs})
        },
    }


def table(rows: list[dict]) -> str:
    lines = [
        f"| setting | flags | runs | val AP (mean +- sd; {DEFAULT_VARIANT}) | per held-out draw | val AP50 "
        f"| val AP: {' | '.join(title for title, _ in EVALUATION_VARIANTS.values())} | min/run |",
        "|---|---|---|---|---|---|" + "---|" * len(EVALUATION_VARIANTS) + "---|",
    ]
    for r in sorted(rows, key=lambda r: -(r["val_AP_mean"] if r["val_AP_mean"] is not None else -1)):
        ap = "not run" if r["val_AP_mean"] is None else f"{r['val_AP_mean']:.3f}"
        if r["val_AP_std"] is not None:
            ap += f" +- {r['val_AP_std']:.3f}"
        ap50 = "" if r["val_AP50_mean"] is None else f"{r['val_AP50_mean']:.3f}"
        variants = " | ".join("" if r.get(f"val_AP_{n}_mean") is None else f"{r[f'val_AP_{n}_mean']:.3f}"
                              for n in EVALUATION_VARIANTS)  # fmt: skip
        minutes = "" if r["minutes_per_run"] is None else f"{r['minutes_per_run']:.1f}"
        draws = ", ".join(f"{h}: {v:.3f}" for h, v in r.get("val_AP_by_holdout", {}).items())
        lines.append(f"| {r['setting']} | `{r['flags'] or '(defaults)'}` | {r['runs']} | {ap} | {draws} | {ap50} | "
                     f"{variants} | {minutes} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder; its train split is searched, never its test")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per setting")
    p.add_argument(
        "--holdout-seeds",
        type=int,
        nargs="+",
        default=[HOLDOUT_SEED],
        help=f"draws of held-out images, each a separate validation set (default {HOLDOUT_SEED})",
    )
    p.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run these settings only")
    p.add_argument("--extra", default="", help='flags appended to every run, e.g. "--amp bf16 --workers 1"')
    p.add_argument("--budget-minutes", type=float, default=float("inf"), help="start no run after this many")
    p.add_argument("--output", default="runs/recipe-search")
    args = p.parse_args()
    out, extra = Path(args.output), shlex.split(args.extra)
    start = time.perf_counter()
    names = args.only or list(SETTINGS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    # every setting on one (draw, seed) before the next: a search stopped early leaves complete pairs
    for holdout_seed, seed in itertools.product(args.holdout_seeds, args.seeds):
        for name in names:
            run = run_folder(out, name, holdout_seed, seed)
            label = f"{name} seed {seed}" + (f" (held-out draw {holdout_seed})" if holdout_seed != HOLDOUT_SEED else "")
            if not finished(run):
                if (time.perf_counter() - start) / 60 > args.budget_minutes:
                    print(f"{label}: not run (budget spent)", flush=True)
                    continue
                train_once(args.data, SETTINGS[name], seed, run, extra, holdout_seed)
            if not finished(run):
                print(f"{label}: no evaluated epoch (see {run / 'train.log'})", flush=True)
                continue
            minutes = float((run / "minutes.txt").read_text()) if (run / "minutes.txt").is_file() else float("nan")
            scores = evaluation_variants(args.data, run, holdout_seed)
            ap, ap50 = scores["AP"][DEFAULT_VARIANT], scores["AP50"][DEFAULT_VARIANT]
            runs[name].append({"AP": ap, "AP50": ap50, **scores["AP"], "seed": seed, "holdout_seed": holdout_seed,
                               "minutes": minutes})  # fmt: skip
            print(f"{label}: val AP {ap:.3f}, AP50 {ap50:.3f} ({DEFAULT_VARIANT}), {minutes:.1f} min; "
                  + ", ".join(f"{k} {v:.3f}" for k, v in scores["AP"].items()), flush=True)  # fmt: skip
    rows = [summarise(name, runs[name]) for name in names]
    paired = {name: paired_difference(runs[name], runs[names[0]]) for name in names[1:]}
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rows": rows, "holdout_fraction": HOLDOUT_FRACTION, "holdout_seeds": args.holdout_seeds,
               "paired_with": names[0], "paired": paired, "command": " ".join(sys.argv)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    text = table(rows)
    for name, diff in paired.items():
        if diff["pairs"]:
            spread = f" +- {diff['sd']:.3f}" if diff["sd"] is not None else ""
            each = ", ".join(f"{d:+.3f}" for d in diff["differences"])
            text += (f"\n\n{name} minus {names[0]}, paired by held-out draw and seed ({diff['pairs']} pairs): "
                     f"{diff['mean']:+.3f}{spread} AP ({each})")  # fmt: skip
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
