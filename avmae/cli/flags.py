"""Command-line flags declared once, by the dataclass fields they fill.

A field whose metadata has a ``help`` is a flag; everything else about the flag comes from the field as well:
- the name: ``shard_size`` -> ``--shard-size`` (a command may spell some differently, through ``spell``);
- the type: ``int``, ``float``, ``str``, ``Path``; ``X | None`` reads an X; a union of several types is read as text
  for the library to tell apart; ``Literal[...]`` (or ``Literal[...] | None``) gives the choices; ``bool`` (default
  False) is a switch; a ``parse`` function in the metadata reads the text instead;
- the default (a ``default_factory`` is called when the parser is built); a field without one is a required flag;
- the help, in which a parameter named in backquotes is spelled as its flag, the way ParameterError messages are.

``field_values`` and ``from_args`` go back from the parsed arguments to the dataclass, so a command's handler names
no field twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from avmae.shard.errors import spell_mentions


def dashed(name: str) -> str:
    """The usual flag of a field: ``task_index`` -> ``--task-index``."""
    return "--" + name.replace("_", "-")


def flag_fields(cls: type, only: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags: those with a help text (of them, those named in ``only``)."""
    found = [item for item in dataclasses.fields(cls) if "help" in item.metadata]
    if only is None:
        return found
    unknown = set(only) - {item.name for item in found}
    if unknown:
        raise TypeError(f"{cls.__name__} has no flag field {', '.join(sorted(unknown))}")
    return [item for item in found if item.name in only]


def add_fields(group: argparse._ActionsContainer, cls: type, *, only: Iterable[str] | None = None,
               spell: Callable[[str], str] = dashed, defaults_shown: Mapping[str, str] | None = None) -> None:
    """Add a flag to ``group`` (a parser or an argument group) for each of ``cls``'s flag fields, or those named in
    ``only``. ``defaults_shown`` names fields whose default the command works out later (from other flags): their
    flag defaults to None and the help shows the given text."""
    hints = typing.get_type_hints(cls)
    defaults_shown = defaults_shown or {}
    for item in flag_fields(cls, only):
        options = _parsing(item, hints[item.name])
        text = spell_mentions(item.metadata["help"], spell).replace("%", "%%")
        if item.name in defaults_shown:
            options["default"] = None
            text += f" (default: {defaults_shown[item.name]})".replace("%", "%%")
        elif options.get("default") is not None and options.get("default") is not False:
            text += " (default: %(default)s)"
        if "type" in options and "choices" not in options:  # FLAG TEXT, as argparse names a flag's value
            options["metavar"] = spell(item.name).lstrip("-").replace("-", "_").upper()
        group.add_argument(spell(item.name), dest=item.name, help=text, **options)


def field_values(cls: type, args: argparse.Namespace, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The parsed values of ``cls``'s flag fields (or those named in ``only``), by field name."""
    return {item.name: getattr(args, item.name) for item in flag_fields(cls, only)}


def from_args(cls: type, args: argparse.Namespace, only: Iterable[str] | None = None) -> Any:
    """``cls`` from the parsed arguments (fields that are no flag, or not in ``only``, keep their defaults)."""
    return cls(**field_values(cls, args, only))


def _parsing(item: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """How argparse reads a field: type or switch, choices, default or required."""
    options: dict[str, Any] = {}
    if item.default is not dataclasses.MISSING:
        options["default"] = item.default
    elif item.default_factory is not dataclasses.MISSING:
        options["default"] = item.default_factory()
    else:
        options["required"] = True
    if hint is bool:
        if options.get("default") is not False:
            raise TypeError(f"{item.name}: a switch must default to False")
        return {**options, "action": "store_true"}
    if "parse" in item.metadata:
        return {**options, "type": item.metadata["parse"]}
    choices = _choices(hint)
    if choices:
        return {**options, "type": type(choices[0]), "choices": list(choices)}
    return {**options, "type": _value_type(item.name, hint)}


def _without_none(hint: Any) -> Any:
    """``X`` of an ``X | None``; any other hint (a union of several types among them) as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        given = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return given[0] if len(given) == 1 else hint
    return hint


def _choices(hint: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]``, or of a ``Literal[...] | None`` (None: the flag not given)."""
    hint = _without_none(hint)
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return ()


def _value_type(name: str, hint: Any) -> type:
    """The type a flag's text becomes: ``X | None`` an X, a union of several types the text itself."""
    hint = _without_none(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = str
    if not isinstance(hint, type):
        raise TypeError(f"{name}: no flag reads a {hint!r}")
    return hint


class DefaultsInHelp(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each help text, except where the text already says its default or there is
    none worth saying (None, False, an empty list: a flag not given)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)
