"""Output folders: defaults that never mix two runs (``runs/train``, then ``runs/train2`` ...), and paths that
cannot be written because the other kind of thing is there."""

from __future__ import annotations

import os
import tempfile
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


# A name ending in one of these is a folder's (``out/``): as a file it would be written as ``out`` or not at all
FOLDER_ENDINGS = tuple(sep for sep in (os.sep, os.altsep) if sep)


def output_clash(*places: tuple[str, str | os.PathLike | None, str]) -> str | None:
    """The first ``(option, path, kind)`` that cannot be written, as one line; None when each can. ``kind``: "file"
    or "folder"; a path taken by the other kind, below a file, or in a folder that refuses new files (no write
    permission, a read-only mount, /proc) cannot. Checked before a command's work, so that a wrong path is said at
    once, not as a traceback after minutes of evaluation or export."""
    for option, path, kind in places:
        if not path:
            continue
        if kind == "file" and str(path).endswith(FOLDER_ENDINGS):
            return f"{option} {path}: a folder's name (it ends in {str(path)[-1]}), not a file's"
        if kind == "file" and os.path.isdir(path):
            return f"{option} {path}: a folder, not a file"
        if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
            return f"{option} {path}: a file, not a folder"
        problem = _unwritable(Path(path) if kind == "folder" else Path(path).parent)
        if problem:
            return f"{option} {path}: {problem}"
    return None


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (or the folders it needs made), or None. The nearest part of it
    that exists must be a folder that takes a file: tried with an anonymous temporary file (on Linux never seen in
    the folder), because permission bits say nothing for root or for read-only mounts."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None
