"""The ``--checkpoint`` / ``--pretrained`` options that ``predict``, ``eval``, ``export`` and ``bench`` share.

One spelling and one meaning everywhere: ``--checkpoint FILE`` (or URL) loads a model file, ``--pretrained`` the
published COCO weights of ``--model`` (downloaded once into the cache of :mod:`efficientdet.hub`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from ..export.runtimes import RUNTIME_BACKENDS
from ..models.config import list_models
from ..models.weights import CheckpointError


def add_weights_options(p: argparse.ArgumentParser, required: bool = True, checkpoint_help: str | None = None) -> None:
    """``--checkpoint`` and ``--pretrained``, of which one is given (``required``) or at most one."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--checkpoint",
        help=checkpoint_help or "model file or URL (ours, or effdet's with --model)",
    )
    group.add_argument(
        "--pretrained",
        action="store_true",
        help="the published COCO weights of --model (effdet's release; downloaded once, then read from the cache)",
    )


def load_model_from_options(
    checkpoint: str | None,
    model: str | None,
    pretrained: bool = False,
    backend: str | None = None,
    task: str = "detection",
    other_task_hint: str = "add --task segmentation",
) -> Any:
    """The model that ``--checkpoint`` / ``--model`` / ``--pretrained`` name (a CheckpointError says what is amiss).

    An exported file (``.onnx``, OpenVINO ``.xml``) as ``--checkpoint`` comes back as a network that runs in
    ``backend`` (:func:`efficientdet.runtimes.load_exported`; default by suffix), with the same interface. A model
    of the other task than ``task`` is refused in one line (``other_task_hint`` says what to do about a
    segmentation model where detection is wanted): it would otherwise fail deep inside the command.
    """
    loaded = _load_model(checkpoint, model, pretrained, backend)
    if isinstance(loaded, torch.nn.Module):
        from ..models.segmenter import task_mismatch

        problem = task_mismatch(loaded, task, other_task_hint)
        if problem:
            raise CheckpointError(f"{checkpoint if checkpoint is not None else model}: {problem}")
    return loaded


def _load_model(checkpoint: str | None, model: str | None, pretrained: bool, backend: str | None) -> Any:
    from ..export.runtimes import is_exported_file, load_exported
    from ..models.factory import create_model, load_checkpoint

    if is_exported_file(checkpoint):
        return load_exported(checkpoint, backend)
    if backend is not None:
        raise CheckpointError(f"--backend {backend} runs an exported file (.onnx, .xml), not {checkpoint}")

    if pretrained:
        if not model:
            raise CheckpointError(f"--pretrained needs --model NAME, one of: {', '.join(list_models())}")
        return create_model(model, pretrained=True)
    if checkpoint is None:
        raise CheckpointError("give --checkpoint FILE, or --pretrained with --model NAME")
    return load_checkpoint(checkpoint, model)


def add_backend_option(p: Any, choices: Sequence[str] = RUNTIME_BACKENDS) -> None:
    """``--backend`` for commands that take an exported file as ``--checkpoint`` (predict, eval)."""
    p.add_argument(
        "--backend",
        choices=list(choices),
        help="runtime of an exported --checkpoint file (model.onnx, model.xml): onnxruntime or openvino "
        "(default: by suffix, .onnx onnxruntime, .xml openvino)",
    )
