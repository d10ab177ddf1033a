"""Declared plugin options (``lorastack.core.interfaces.Option``) as click options.

One declaration gives both the engine's typed attributes and the command line's click options: ``int``/``float``
become ``click.IntRange``/``click.FloatRange`` with the declared bounds, ``choice`` a ``click.Choice``, ``path`` a
``click.Path`` (file completion), ``bool`` an on/off flag pair (``--random-flip/--no-random-flip``). Values from a
recipe (TOML, through click's ``default_map``) arrive typed; they are checked by ``Option.parse``, which refuses
what TOML allows but an option does not (``steps = true``, ``steps = 2.5``, a list for text).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from lorastack.core.interfaces import Option, PluginOptionError, shown_value

#: more flags for an option, by option name (the spelling users know from earlier releases and other tools)
ALIASES = {"class_name": ("--class",)}
_KIND = {"int": "an integer", "float": "a number", "path": "a path", "str": "text", "choice": "a choice"}


class _Checked:
    """Mixed into a click type: typed values (from a recipe) are checked by the option itself; long text cut short."""

    option: Option

    def convert(self, value: Any, param, ctx):
        if not isinstance(value, str):
            try:
                return self.option.parse(value)
            except PluginOptionError as e:
                self.fail(str(e).removeprefix(f"--{self.option.flag} "), param, ctx)
        if self.option.type == "float":
            try:
                number = float(value)
            except ValueError:
                number = 0.0  # click names the value below
            if not math.isfinite(number):
                self.fail(f"{shown_value(value)} is not a finite number", param, ctx)
        try:
            return super().convert(value, param, ctx)  # type: ignore[misc]
        except click.BadParameter:
            if len(value) <= 40:
                raise
            self.fail(f"{shown_value(value)} is not {_KIND.get(self.option.type, 'valid')}", param, ctx)


def _checked(base: type, option: Option, *args, **kwargs) -> click.ParamType:
    cls = type(f"Checked{base.__name__}", (_Checked, base), {"option": option})
    return cls(*args, **kwargs)


def click_type(option: Option) -> click.ParamType:
    """The click type of a (non-bool) option."""
    if option.type in ("int", "float"):
        base = click.IntRange if option.type == "int" else click.FloatRange
        return _checked(base, option, min=option.minimum, max=option.maximum,
                        min_open=option.exclusive_minimum, max_open=option.exclusive_maximum)  # fmt: skip
    if option.type == "choice":
        return _checked(click.Choice, option, list(option.choices or ()))
    if option.type == "path":
        return _checked(click.Path, option, path_type=Path)
    return _checked(click.types.StringParamType, option)


def click_option(option: Option) -> click.Option:
    """``option`` as a click option whose parameter name is the option's name."""
    flags = [f"--{option.flag}", *ALIASES.get(option.name, ())]
    if option.type == "bool":
        return click.Option(
            [f"--{option.flag}/--no-{option.flag}", option.name], default=bool(option.default),
            show_default=True, help=option.help,
        )  # fmt: skip
    default = option.default
    return click.Option(
        [*flags, option.name], type=click_type(option), default=default, show_default=default not in (None, ""),
        required=option.required and default is None, help=option.help,
        metavar=None if option.type == "choice" else option.type.upper(),
    )  # fmt: skip
