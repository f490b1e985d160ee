"""Output folders: defaults that never mix two runs (``runs/train``, then ``runs/train2`` ...), and paths that
cannot be written because the other kind of thing is there."""

from __future__ import annotations

import os
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


def output_clash(*places: tuple[str, str | os.PathLike | None, str]) -> str | None:
    """The first ``(option, path, kind)`` whose path is taken by the other kind (``kind``: "file" or "folder"),
    as one line; None when each can be written. Checked before a command's work, so that a wrong path is said at
    once, not as a traceback after minutes of evaluation or export."""
    for option, path, kind in places:
        if not path:
            continue
        if kind == "file" and os.path.isdir(path):
            return f"{option} {path}: a folder, not a file"
        if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
            return f"{option} {path}: a file, not a folder"
    return None
