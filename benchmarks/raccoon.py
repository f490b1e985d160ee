"""Accuracy benchmark: the plain `efficientdet train` command on the raccoon dataset, then its test figures (CPU).

For each seed this runs exactly what a user types, with nothing tuned by hand:

    efficientdet train --data RACCOON --seed S --output OUT/seedS
    efficientdet eval --checkpoint OUT/seedS/last.pt --data RACCOON --split test --json OUT/seedS/test.json

`train` chooses its settings from the data (small data: frozen ImageNet backbone, 448 px, 60 epochs, box weight
200, GIoU loss 8; the "recipe:" line of its log) and, raccoon having no `val` split, holds out 10% of `train` to
evaluate on.
The final EMA weights (`last.pt`) are evaluated once on `test` (40 images) with `eval`'s default NMS; the test
split chooses nothing. Prints AP, AP50 and training minutes per seed and their mean; seeds already evaluated in
OUT are read back, and a seed that did not finish trains again from the start (``--exist-ok``). Run from the
repository root, with nothing else running:

    python benchmarks/raccoon.py --seeds 0 1 2 --json raccoon.json
    python benchmarks/raccoon.py --seeds 0 --extra "--epochs 1" --output runs/raccoon-smoke     # a smoke run

``--data DIR`` runs the same on another dataset (e.g. ``../shared/datasets/bccd``, whose own ``val`` split is then
the one evaluated during training); per-class AP is printed when there is more than one class, and the raccoon
targets are checked only on raccoon. ``benchmarks/effdet_peer.py`` trains the effdet peer for the same minutes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
TARGET_AP, TARGET_AP50, TARGET_MINUTES = 0.62, 0.95, 30


def run_logged(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        f.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)


def one_seed(data: str, seed: int, run: Path, extra: list[str]) -> dict:
    """Train with the plain command and evaluate ``last.pt`` on test; the figures (read back when already done)."""
    figures_path = run / "figures.json"
    if figures_path.is_file():
        return json.loads(figures_path.read_text())
    run.mkdir(parents=True, exist_ok=True)
    train = [sys.executable, "-m", "efficientdet", "train", "--data", data, "--seed", str(seed), "--output",
             str(run), "--exist-ok", *extra]  # fmt: skip
    start = time.perf_counter()
    run_logged(train, run / "train.log")
    minutes = (time.perf_counter() - start) / 60
    evaluate = [sys.executable, "-m", "efficientdet", "eval", "--checkpoint", str(run / "last.pt"), "--data", data,
                "--split", "test", "--json", str(run / "test.json")]  # fmt: skip
    run_logged(evaluate, run / "eval.log")
    metrics = json.loads((run / "test.json").read_text())
    recipe = next((line.split("recipe: ", 1)[1].strip() for line in (run / "train.log").read_text().splitlines()
                   if "recipe: " in line), None)  # fmt: skip
    figures = {"seed": seed, "AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"],
               "train_minutes": round(minutes, 2), "recipe": recipe,
               "commands": [shlex.join(train), shlex.join(evaluate)]}  # fmt: skip
    figures_path.write_text(json.dumps(figures, indent=2))
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(RACCOON))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--extra", default="", help='flags appended to `train`, e.g. "--amp bf16" (then not the default)')
    p.add_argument("--output", default="runs/raccoon-benchmark")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    runs = [one_seed(args.data, s, Path(args.output) / f"seed{s}", shlex.split(args.extra)) for s in args.seeds]
    name = Path(args.data).name
    for r in runs:
        test = json.loads((Path(args.output) / f"seed{r['seed']}" / "test.json").read_text())
        print(f"seed {r['seed']}: {name} test ({test['images']} images): AP {r['AP']:.3f}  AP50 {r['AP50']:.3f}  "
              f"AP75 {r['AP75']:.3f}  training {r['train_minutes']:.1f} min")  # fmt: skip
        if len(test["per_class"]) > 1:
            print("  per class AP / AP50: " + ", ".join(f"{c['class']} {c['AP']:.3f} / {c['AP50']:.3f}"
                                                       for c in test["per_class"]))  # fmt: skip
    mean = {k: statistics.fmean(r[k] for r in runs) for k in ("AP", "AP50", "AP75", "train_minutes")}
    spread = statistics.stdev(r["AP"] for r in runs) if len(runs) > 1 else 0.0
    print(f"mean of {len(runs)}: AP {mean['AP']:.3f} +- {spread:.3f}  AP50 {mean['AP50']:.3f}  "
          f"training {mean['train_minutes']:.1f} min")  # fmt: skip
    if Path(args.data).resolve() == RACCOON.resolve():  # the targets are raccoon's
        slowest = max(r["train_minutes"] for r in runs)
        met = mean["AP"] >= TARGET_AP and mean["AP50"] >= TARGET_AP50 and slowest <= TARGET_MINUTES
        print(f"target mean AP >= {TARGET_AP}, AP50 >= {TARGET_AP50}, each run <= {TARGET_MINUTES} min: "
              f"{'met' if met else 'NOT met'}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "mean": mean, "AP_sd": spread, "extra": args.extra,
                                               "command": shlex.join(sys.argv)}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
