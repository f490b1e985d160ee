"""The ``efficientdet`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import EFFDET_PARAMS, get_config, list_models


def _pct(ours: float, ref: float | None) -> str:
    return f"{100.0 * (ours - ref) / ref:+.2f}%" if ref else ""


def cmd_info(args: argparse.Namespace) -> int:
    from .flops import model_stats

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
        "paper: SPEC section 1 (Lite params rounded to 0.1M); effdet: the effdet package's exact count."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="efficientdet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameters, FLOPs and structure of the model family")
    info.add_argument("names", nargs="*", metavar="NAME", help="models to show (default: all)")
    info.add_argument("--json", action="store_true", help="print a JSON list of {name, params, flops, image_size}")
    info.add_argument("--num-classes", type=int, default=90, help="class count (default 90, COCO)")
    info.add_argument("--img-size", type=int, default=None, help="count FLOPs at this input size instead")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
