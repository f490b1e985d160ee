"""Model families by name: ``create_model("efficientdet-seg-d0")`` finds the family that builds that name here.

Each family (detection in :mod:`efficientdet.factory`, segmentation in :mod:`efficientdet.segmentation.model`)
registers itself when its module is imported; the registry imports the built-in ones by module name on the
first lookup, so it depends on neither and neither depends on the other. A new family (another task or
another backbone) is one :func:`register_family` call, not a new branch in ``create_model``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# modules whose import registers the families this package ships
BUILTIN_FAMILY_MODULES = ("efficientdet.models.factory", "efficientdet.models.segmenter")


class UnknownModelError(KeyError):
    """No registered family builds a model of this name (a ``KeyError``, as ``get_config`` raises)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelFamily:
    """One family of networks: the names it builds and how.

    ``create(name, num_classes, checkpoint, pretrained_backbone, **overrides)`` builds a model; ``checkpoint`` is
    a local file (URLs are resolved before). ``config_type`` is the family's config class.
    """

    name: str
    task: str
    names: Callable[[], Iterable[str]]
    create: Callable[..., Any]
    config_type: type


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add (or replace, on a module reload) the family called ``family.name``."""
    _FAMILIES[family.name] = family
    return family


def _load_builtin() -> None:
    for module in BUILTIN_FAMILY_MODULES:
        importlib.import_module(module)


def families() -> list[ModelFamily]:
    _load_builtin()
    return list(_FAMILIES.values())


def model_names(task: str | None = None) -> list[str]:
    """Every name ``create_model`` accepts (of one task: ``"detection"``, ``"segmentation"``)."""
    return [n for f in families() if task is None or f.task == task for n in f.names()]


def family_for(name: str) -> ModelFamily:
    """The family that builds ``name`` (case-insensitive); :class:`UnknownModelError` lists the known names."""
    key = name.lower()
    for family in families():
        if key in (n.lower() for n in family.names()):
            return family
    raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(model_names())}")


__all__ = ["ModelFamily", "UnknownModelError", "family_for", "families", "model_names", "register_family"]
