"""Wording of the lines the commands print."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is one: "1 image", "1,818 images", "2,805 boxes" (a summary line
    that says "1 images" reads like a bug)."""
    if n == 1:
        return f"{n:,} {noun}"
    return f"{n:,} {noun}{'es' if noun.endswith(('s', 'x')) else 's'}"


def first_few(names: list[str], shown: int = 5) -> str:
    """``names`` joined, the first ``shown`` of them and how many more: "a.jpg, b.jpg and 3 more"."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


__all__ = ["counted", "first_few"]
