"""Wording of the lines the commands print."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is one: "1 image", "1,818 images" (a summary line that says
    "1 images" reads like a bug)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


__all__ = ["counted"]
