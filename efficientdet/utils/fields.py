"""Constraints declared on config dataclass fields, checked in one place.

A config field states what values it accepts next to its default (``field(default=8, metadata=positive_int())``);
:func:`check_fields` enforces every such declaration, so a bad value fails at once, before any data is read or any
file is written, with one message naming the option (as its command-line flag) and what it must be. The command
line and the Python API go through the same check: there is no per-flag validation to forget.

A field also carries what the command line needs to offer it (:func:`option`): its help text, whether it may change
when a run is resumed, and how to read it from text. ``efficientdet.cli`` builds each command's flags from these,
so a default is written once, where the field is, and the help cannot advertise another.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from typing import Any

Check = Callable[[Any], str | None]  # returns what the value must be when it is wrong, else None


class OptionError(ValueError):
    """An option whose value cannot work; the message names the option and what it must be."""


def flag_name(field_name: str) -> str:
    """The command-line spelling of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low: int, optional: bool = False) -> dict[str, Check]:
    """Metadata: an integer >= ``low`` (``optional``: None is allowed too, meaning "the default")."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        return None if _is_int(value) and value >= low else f"an integer >= {low}"

    return {"check": check}


def number_in(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> dict[str, Check]:
    """Metadata: a finite number within the bounds given (open bounds exclude the end point)."""
    left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    wanted = "a finite number " + " and ".join(part for part in (left, right) if part)

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not _is_number(value):
            return wanted.strip()
        if low is not None and (value < low or (low_open and value == low)):
            return wanted
        if high is not None and (value > high or (high_open and value == high)):
            return wanted
        return None

    return {"check": check}


def one_of(choices: Collection[str], optional: bool = False) -> dict[str, Any]:
    """Metadata: one of ``choices`` (compared case-insensitively)."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        ok = isinstance(value, str) and value.lower() in {c.lower() for c in choices}
        return None if ok else f"one of {', '.join(choices)}"

    return {"check": check, "choices": tuple(choices)}


def increasing_pair(low: float = 0.0) -> dict[str, Check]:
    """Metadata: two finite numbers ``a <= b``, both > ``low`` (a range such as the scale jitter)."""

    def check(value: Any) -> str | None:
        pair = list(value) if isinstance(value, (list, tuple)) else []
        ok = len(pair) == 2 and all(_is_number(v) and v > low for v in pair) and pair[0] <= pair[1]
        return None if ok else f"two numbers MIN MAX with {low:g} < MIN <= MAX"

    return {"check": check}


def check_fields(config: Any) -> None:
    """Raise :class:`OptionError` for the first field of the dataclass ``config`` whose value breaks its check."""
    for f in dataclasses.fields(config):
        check = f.metadata.get("check")
        if check is None:
            continue
        value = getattr(config, f.name)
        wanted = check(value)
        if wanted is not None:
            raise OptionError(f"{flag_name(f.name)} must be {wanted}, got {value!r}")


def optional_text(text: str) -> str | None:
    """``parse`` of an optional name: ``none`` (any case) means None."""
    return None if text.lower() == "none" else text


def optional_int(text: str) -> int | None:
    """``parse`` of an optional integer (``--ignore-index``): ``none`` (any case) means None."""
    return None if text.lower() == "none" else int(text)


def optional_float(text: str) -> float | None:
    """``parse`` of an optional number (``--box-voting``): ``none`` (any case) means None."""
    return None if text.lower() == "none" else float(text)


def option(
    help: str,
    constraint: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    default_text: str | None = None,
    cli: bool = True,
) -> dict[str, Any]:
    """Metadata of a config field that is also a command-line option.

    ``help``: what the option does; the flag's help adds "(default: ...)" from the field's *own* default, so a
    task that overrides a default shows its own. ``default_text`` words a default that is not a literal (None
    meaning "the model's own"). ``constraint``: a check from this module. ``resume``: the option may differ from
    the saved run on ``--resume`` (where and how fast it runs, not what it computes). ``parse``: text -> value
    when the field's type does not say it (e.g. ``none`` -> None). ``cli=False``: Python API only.
    """
    meta: dict[str, Any] = dict(constraint or {})
    meta.update(help=help, resume=resume, metavar=metavar, parse=parse, default_text=default_text, cli=cli)
    return meta


def field_metadata(config_class: type, name: str) -> dict[str, Any]:
    """The metadata of field ``name``, merged over the class hierarchy: a subclass that only changes a default (or
    a check) keeps the help text its base class wrote."""
    merged: dict[str, Any] = {}
    for klass in reversed(config_class.__mro__):
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None:
            merged.update(f.metadata)
    return merged


def resume_changeable(config_class: type) -> tuple[str, ...]:
    """Fields of ``config_class`` that may differ from the saved run on ``--resume``."""
    return tuple(f.name for f in dataclasses.fields(config_class) if field_metadata(config_class, f.name).get("resume"))
