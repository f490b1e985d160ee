"""``efficientdet bench``: latency and memory of a model, its pre- and post-processing, on this machine."""

from __future__ import annotations

import argparse
import json
import sys

from ..tools.bench import BACKENDS, DEFAULT_MODEL, DTYPES, BenchConfig, format_result, run_benchmark
from .argtypes import non_negative_int, positive_int
from .common import retain_memory_for_batches


def cmd_bench(args: argparse.Namespace) -> int:
    """Entry point of ``efficientdet bench``."""
    from ..models.config import list_models

    if args.model is not None and args.model.lower() not in list_models():
        print(f"efficientdet bench: unknown model {args.model}; known: {', '.join(list_models())}", file=sys.stderr)
        return 2
    if args.num_classes is not None and (args.checkpoint or args.pretrained):
        weights = "--checkpoint" if args.checkpoint else "--pretrained"
        print(f"efficientdet bench: --num-classes is for random weights; {weights}'s model has its own classes",
              file=sys.stderr)  # fmt: skip
        return 2
    retain_memory_for_batches(args.batch_size)  # as predict and eval do: bench times what they run
    cfg = BenchConfig(
        model=args.model.lower() if args.model else None,
        img_size=args.img_size,
        batch_size=args.batch_size,
        backend=args.backend,
        threads=args.threads,
        device=args.device,
        iterations=args.iterations,
        warmup=args.warmup,
        dtype=args.dtype,
        fold=args.fold,
        channels_last=args.channels_last,
        num_classes=args.num_classes or BenchConfig.num_classes,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
    )
    try:
        result = run_benchmark(cfg)
    except (ImportError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"efficientdet bench: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``efficientdet bench`` on the CLI's subparsers."""
    from .weights_options import add_weights_options

    p = sub.add_parser("bench", help="latency, throughput and peak memory: network alone and end to end")
    p.add_argument("--model", help=f"model name (default: the --checkpoint's model, else {DEFAULT_MODEL})")
    p.add_argument("--img-size", type=positive_int, help="square input size (default: the model's own)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="eager",
        help="eager (default), compile (torch.compile, inductor), onnxruntime or openvino (CPU); with an exported "
        "--checkpoint file (.onnx, .xml; int8 too) the file runs as it is (default runtime by suffix)",
    )
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    p.add_argument("--iterations", type=positive_int, default=20, help="timed calls per measurement (default 20)")
    p.add_argument(
        "--warmup", type=non_negative_int, default=3, help="untimed calls first (default 3; compilation happens here)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="fp32 (default) or bf16: autocast for eager/compile, bf16 float layers for openvino (opt-in: results "
        "change beyond float rounding)",
    )
    p.add_argument(
        "--fold",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold batch norms into the convs and TF-SAME pads into conv/pool padding (default: on)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory layout (default: on for eager and compile on CPU)",
    )
    p.add_argument("--num-classes", type=positive_int,
                   help=f"class count of the random-weight model (default {BenchConfig.num_classes})")  # fmt: skip
    add_weights_options(
        p, required=False, checkpoint_help="time these weights instead of random ones (speed does not depend on them)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_bench)
    return p
