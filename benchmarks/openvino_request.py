"""OpenVINO's synchronous ``infer`` against ``start_async`` + ``wait`` on the same compiled int8 network.

``OpenVinoNetwork`` (what ``predict``, ``eval`` and ``bench`` run for an OpenVINO file) hands every inference to
the compiled model's own worker threads with ``start_async`` and sleeps in ``wait``, rather than calling ``infer``,
which runs the graph on the calling thread. This script measures that choice on the CPU at hand: each model is
exported to an int8 IR (random weights, calibrated on synthetic images, as ``benchmarks/speed.py`` does) and loaded
as the project loads it (anchor maxima in the graph, NHWC input, output arrays bound once); then the two calls on
that one request, interleaved round by round in one process, each timed call after an untimed one of the same
kind. Both calls write the same outputs (checked).

    python benchmarks/openvino_request.py --threads 2 --rounds 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import efficientdet
from efficientdet.inference import Detector
from efficientdet.tools.bench import exported_network, interleaved, synthetic_images


def measure(name: str, size: int, threads: int, rounds: int, folder: Path) -> dict[str, float]:
    torch.manual_seed(0)
    model = efficientdet.create_model(name).eval()
    detector = Detector(model, image_size=size, score_threshold=0.0)
    calibration = [detector.preprocess([im])[0].numpy() for im in synthetic_images(8, (480, 640), seed=1)]
    net = exported_network(model, "openvino", folder, size, 1, threads, calibration)
    images = np.ascontiguousarray(detector.preprocess(synthetic_images(1, (480, 640)))[0].permute(0, 2, 3, 1).numpy())
    outputs = net.run(images)  # binds one output set to the request, reused by both calls below
    request = net.request

    def sync() -> None:
        request.infer({0: images}, share_inputs=True)

    def asynchronous() -> None:
        request.start_async({0: images}, share_inputs=True)
        request.wait()

    sync()
    reference = [a.copy() for a in outputs]
    asynchronous()
    if not all(np.array_equal(a, b) for a, b in zip(reference, outputs)):
        raise SystemExit(f"{name}: infer and start_async + wait wrote different outputs")
    seconds, _ = interleaved({"infer": sync, "start_async + wait": asynchronous}, rounds)
    return {call: 1000 * statistics.median(values) for call, values in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="OpenVINO inference threads (default 2)")
    p.add_argument("--rounds", type=int, default=100, help="interleaved rounds per model (default 100)")
    p.add_argument("--models", nargs="+", default=["efficientdet-lite0:320", "efficientdet-d0:512"],
                   help="NAME:SIZE pairs (default: Lite0 at 320 px, D0 at 512 px)")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as a Detector runs torch around an exported network
    print(f"OpenVINO int8, batch 1, {args.threads} threads, {args.rounds} interleaved rounds; medians in ms")
    print(f"{'model':28s} {'infer':>8s} {'start_async + wait':>20s} {'ratio':>7s}")
    with tempfile.TemporaryDirectory(prefix="efficientdet-request-") as tmp:
        for spec in args.models:
            name, size = spec.rsplit(":", 1)
            ms = measure(name, int(size), args.threads, args.rounds, Path(tmp))
            ratio = ms["start_async + wait"] / ms["infer"]
            print(f"{name + ' ' + size:28s} {ms['infer']:8.2f} {ms['start_async + wait']:20.2f} {ratio:6.2f}x")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
