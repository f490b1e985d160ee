"""Command-line options generated from a config dataclass: one flag per field, help and default from the field.

A field's metadata (:func:`efficientdet.utils.fields.option`) holds its help text; the default shown is the
field's own default in the class at hand, so ``efficientdet train --task segmentation --help`` shows the
segmentation defaults (50 epochs) and the detection help the detection ones (60). Every generated flag defaults to
"not given" (``argparse.SUPPRESS``): :func:`given_options` returns what the user typed and nothing else, which is
what ``--resume`` needs to tell a change from a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from ..utils.fields import field_metadata, flag_name

MAX_LISTED_CHOICES = 8  # a longer list (e.g. every model name) is checked by the config, not printed in the help


def _strip_optional(annotation: Any) -> Any:
    """``int | None`` -> ``int``; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _default_text(f: dataclasses.Field, meta: dict[str, Any]) -> str | None:
    if meta.get("default_text"):
        return meta["default_text"]
    if f.default is dataclasses.MISSING or f.default is None:
        return None
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in f.default)
    return f"{f.default:g}" if isinstance(f.default, float) else str(f.default)


def cli_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that are command-line options."""
    return [f for f in dataclasses.fields(config_class) if field_metadata(config_class, f.name).get("cli", True)]


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_class: type, skip: tuple[str, ...] = ()
) -> None:
    """One flag per command-line field of ``config_class`` (``batch_size`` -> ``--batch-size``)."""
    hints = typing.get_type_hints(config_class)
    for f in cli_fields(config_class):
        if f.name in skip:
            continue
        meta = field_metadata(config_class, f.name)
        help_text = meta.get("help", "")
        default = _default_text(f, meta)
        if default is not None:
            help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        kind = _strip_optional(hints[f.name])
        if meta.get("parse") is not None:
            kwargs["type"] = meta["parse"]
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            items = typing.get_args(kind)
            kwargs.update(nargs=len(items), type=items[0])
        elif kind in (int, float, str):
            kwargs["type"] = kind
        else:
            kwargs["type"] = str
        choices = meta.get("choices")
        if choices and len(choices) <= MAX_LISTED_CHOICES:
            kwargs["choices"] = choices
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag_name(f.name), **kwargs)


def given_options(config_class: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``config_class`` the user gave on the command line, as config values."""
    given = {}
    for f in cli_fields(config_class):
        if f.name in vars(args):
            value = getattr(args, f.name)
            given[f.name] = tuple(value) if isinstance(value, list) else value
    return given


def option_flags(config_class: type) -> set[str]:
    """Every flag that :func:`add_config_options` makes for ``config_class`` (with the ``--no-`` forms)."""
    flags = set()
    for f in cli_fields(config_class):
        flags.add(flag_name(f.name))
        flags.add("--no-" + flag_name(f.name)[2:])
    return flags


TASKS = ("detection", "segmentation")


def other_task(task: str) -> str:
    return TASKS[1 - TASKS.index(task)]


def add_task_parser(
    sub: argparse._SubParsersAction, command: str, task: str, help_text: str, verb: str, task_help: str
) -> argparse.ArgumentParser:
    """The parser of a command whose options depend on ``--task`` (train, eval): its help says whose they are."""
    p = sub.add_parser(
        command,
        help=help_text,
        description=f"{verb} a {task} model. The options and defaults below are those of --task {task}.",
        epilog=f"The options of the other task: efficientdet {command} --task {other_task(task)} --help",
    )
    p.add_argument("--task", choices=TASKS, default="detection", help=task_help)
    return p
