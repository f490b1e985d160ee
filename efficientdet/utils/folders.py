"""Default output folders that never mix two runs: ``runs/train``, then ``runs/train2``, ``runs/train3`` ..."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def first_free_folder(default: str, taken: Callable[[Path], bool]) -> str:
    """``default``, or the first of ``default + "2"``, ``default + "3"`` ... for which ``taken`` is false: the
    folder a command uses when the user gave no ``--output``, so that typing the same command twice neither
    replaces nor mixes with what the first one wrote (other detectors' commands number their runs the same way)."""
    candidate, n = default, 1
    while taken(Path(candidate)):
        n += 1
        candidate = f"{default}{n}"
    return candidate


def holds_files(folder: Path) -> bool:
    """Whether ``folder`` exists with anything in it."""
    return folder.is_dir() and any(folder.iterdir())
