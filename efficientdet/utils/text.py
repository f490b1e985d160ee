"""Wording of the lines the commands print."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is one: "1 image", "1,818 images", "2,805 boxes" (a summary line
    that says "1 images" reads like a bug)."""
    if n == 1:
        return f"{n:,} {noun}"
    return f"{n:,} {noun}{'es' if noun.endswith(('s', 'x')) else 's'}"


__all__ = ["counted"]
