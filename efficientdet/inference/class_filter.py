"""Which classes to keep: ``"person,car"`` or ``[0, "car"]`` -> class indices, checked against the model's names.

Shared by ``Detector(classes=...)`` and ``efficientdet predict --classes`` so both accept the same spellings and
refuse the same mistakes, before any image is processed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence


class UnknownClassError(ValueError):
    """A requested class is neither one of the model's class names nor a valid class index."""


def resolve_classes(classes: str | Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """0-based class indices for ``classes``: names (case-insensitive) or indices, a list or one comma-separated text.

    A name is matched before an index, so a class literally named ``"3"`` is found by its name. Duplicates are
    kept once, in the order given. Raises ``UnknownClassError`` naming every entry that matches nothing and listing
    the model's class names (an empty selection is refused too: it would silently detect nothing).
    """
    entries = [p.strip() for p in classes.split(",") if p.strip()] if isinstance(classes, str) else list(classes)
    by_name = {}
    for index, name in enumerate(class_names):
        by_name.setdefault(str(name).casefold(), index)  # two names equal but for case: the first one wins
    indices: list[int] = []
    unknown: list[str] = []
    for entry in entries:
        index = _index_of(entry, by_name, len(class_names))
        if index is None:
            unknown.append(repr(entry))
        elif index not in indices:
            indices.append(index)
    if unknown or not indices:
        what = f"unknown class{'es' if len(unknown) > 1 else ''} {', '.join(unknown)}" if unknown else "no classes"
        raise UnknownClassError(
            f"{what} in the class selection; give names or 0-based indices of the model's "
            f"{len(class_names)} classes: {', '.join(map(str, class_names))}"
        )
    return indices


def _index_of(entry: int | str, by_name: dict[str, int], num_classes: int) -> int | None:
    if isinstance(entry, str):
        text = entry.strip()
        if text.casefold() in by_name:
            return by_name[text.casefold()]
        if not (text.isascii() and text.isdigit()):  # "-1" and "1.0" are not indices
            return None
        entry = int(text)
    if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
        return None
    entry = int(entry)
    return entry if 0 <= entry < num_classes else None
