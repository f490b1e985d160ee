"""Atomic file writes: a crash or kill -9 at any moment leaves either the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# what open(path, "w") passes: the umask then decides, as for any file a user's tools create
_NEW_FILE_MODE = 0o666
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)


def create_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, empty file with a unique hidden name beside ``path`` (same folder: renaming it over ``path`` is
    atomic), opened for writing: ``(descriptor, its path)``.

    Unlike ``tempfile.mkstemp``, whose files are owner-only (0o600), the file gets the permissions ``open(path,
    "w")`` would give (0o666 less the umask), so that what is renamed into place is readable as any other output.
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, _NEW_FILE_FLAGS, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name beside {path.name}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``; on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_beside(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
