"""argparse ``type=`` converters shared by the subcommands: argparse names the option when one refuses a value."""

from __future__ import annotations

import argparse

from ..inference.tiling import overlap_problem, tile_problem


def fraction(text: str) -> float:
    """A number in [0, 1] (score and IoU thresholds)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, counts)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker counts)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def tile_arg(text: str) -> int:
    """argparse ``type=`` of ``--tile``: a tile side in pixels, 0 for off."""
    value = int(text)
    if problem := tile_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def overlap_arg(text: str) -> float:
    """argparse ``type=`` of ``--tile-overlap``: a fraction of the tile side in [0, 1)."""
    value = float(text)
    if problem := overlap_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value
