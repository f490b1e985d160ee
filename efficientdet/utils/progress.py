"""Progress reporting that suits a terminal and a log file alike.

On a terminal, tqdm's bar redraws itself in place with carriage returns. Redirected to a file (``nohup``, CI,
``2> train.log``) every redraw stays in the file: a long run's log grows by megabytes of half-drawn bars. There
:func:`progress_bar` writes a plain line at most every ``interval_s`` seconds instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Protocol

from tqdm import tqdm

DEFAULT_INTERVAL_S = 30.0  # a line every 30 s: a few hundred lines for a day-long epoch, and never silent for long
TTY_REFRESH_S = 1.0  # a terminal bar redraws at most once a second: enough to watch, little overhead


class Progress(Protocol):
    """What callers of :func:`progress_bar` may use; a ``tqdm`` bar and :class:`LogProgress` both have it."""

    def __iter__(self) -> Iterator[Any]: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **values: Any) -> Any: ...
    def write(self, message: str, file: IO[str] | None = None) -> Any: ...
    def close(self) -> None: ...


class LogProgress:
    """Progress as plain lines, at most one per ``interval_s`` seconds: ``desc: n/total unit  elapsed  postfix``.

    No carriage returns, no line at start or close (callers print their own summary); ``enabled=False`` writes
    no progress line at all. :meth:`write` prints a message right away, as ``tqdm.write`` does beside a bar.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str = "",
        total: int | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        unit: str = "it",
        file: IO[str] | None = None,
        enabled: bool = True,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.interval_s, self.enabled = interval_s, enabled
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last_line = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LogProgress was made without an iterable: call update() instead")
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; write a line when ``interval_s`` has passed since the last one."""
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self._last_line >= self.interval_s:
            self._last_line = now
            print(self.line(now), file=self.file, flush=True)

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line (e.g. the running loss); replaces the previous ones."""
        self.postfix = values

    def write(self, message: str, file: IO[str] | None = None) -> None:
        print(message, file=file if file is not None else self.file, flush=True)

    def close(self) -> None:
        """Nothing to clear or finish: no line is left half-written."""

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be written now."""
        elapsed = (now if now is not None else time.monotonic()) - self._start
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        parts = [f"{self.desc}: {count} {self.unit}" if self.desc else f"{count} {self.unit}", f"{elapsed:.0f}s"]
        if self.postfix:
            parts.append(" ".join(f"{k}={_format(v)}" for k, v in self.postfix.items()))
        return "  ".join(parts)


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_bar(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    total: int | None = None,
    enabled: bool = True,
    interval_s: float = DEFAULT_INTERVAL_S,
    *,
    unit: str = "it",
    leave: bool = True,
    file: IO[str] | None = None,
) -> Progress:
    """A tqdm bar when ``file`` (default: ``sys.stderr``) is a terminal, else a :class:`LogProgress`.

    Either one iterates over ``iterable`` (or counts :meth:`update` calls up to ``total``) and takes
    ``set_postfix(**values)``, ``update(n)``, ``write(message, file)``, ``close()`` and ``with``. ``enabled=False``
    shows nothing (e.g. on every rank but the first). ``leave`` keeps the finished bar on the terminal.
    """
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if enabled and isatty is not None and isatty():
        return tqdm(iterable, desc=desc or None, total=total, unit=unit, leave=leave, file=stream,
                    mininterval=TTY_REFRESH_S)  # fmt: skip
    return LogProgress(iterable, desc, total, interval_s, unit, stream, enabled)


__all__ = ["LogProgress", "Progress", "progress_bar"]
