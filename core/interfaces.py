"""What a plugin implements: a dataset source, a captioner or a trainer, each with the options it accepts.

These are small protocols: any object with the attributes and methods below will do (a class instance, a module
object). A plugin hands its objects to lorastack through the ``register`` callback of a hook (see
``lorastack.plugins.hookspecs``). Options are declared, not parsed by the plugin, so the CLI can list them and check
what the user typed before any image is opened or any model is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import LorastackError

if TYPE_CHECKING:
    from PIL import Image

OPTION_TYPES = ("str", "int", "float", "bool", "path", "choice")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class PluginOptionError(LorastackError, ValueError):
    """An option value a plugin does not accept; the message names the option, the value and what is valid."""


@dataclass(frozen=True)
class Option:
    """One option a plugin object accepts.

    :param name: the option's name, ``snake_case`` (the CLI shows it as ``--name-with-dashes`` or ``name=value``)
    :param type: one of ``str``, ``int``, ``float``, ``bool``, ``path``, ``choice``
    :param default: the value when the user gives none (``None``: no value)
    :param help: one line for ``--help`` and ``lorastack plugins``
    :param choices: the valid values of a ``choice`` option
    :param required: the user must give a value
    :param minimum: the smallest valid value of an ``int``/``float`` option
    :param exclusive_minimum: ``minimum`` itself is not valid (``lr > 0``)
    :param maximum: the largest valid value of an ``int``/``float`` option. Give every number a maximum: a huge
        value typed by mistake (``--rank 100000``) then fails at once, naming the valid range, instead of
        exhausting memory or time after the models load.
    :param exclusive_maximum: ``maximum`` itself is not valid (``dropout < 1``)

    ``int`` and ``float`` options refuse ``true``/``false`` (a TOML ``steps = true`` is no step count), NaN and
    infinities; text options (``str``, ``choice``) refuse lists, tables, booleans and text that is no valid
    Unicode. Error messages name the option, echo the value (cut when long) and state the valid range.
    """

    name: str
    type: str = "str"
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    required: bool = False
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    exclusive_maximum: bool = False

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise PluginOptionError(
                f"option {self.name!r}: type {self.type!r} is not one of {', '.join(OPTION_TYPES)}"
            )
        if self.type == "choice" and not self.choices:
            raise PluginOptionError(f"option {self.name!r}: a choice option needs choices")
        if self.minimum is not None and self.maximum is not None and self.maximum < self.minimum:
            raise PluginOptionError(f"option {self.name!r}: maximum {self.maximum} is below minimum {self.minimum}")

    def parse(self, value: Any, owner: str = "") -> Any:
        """``value`` (a string from the command line, or already typed) converted and checked."""
        where = f"{owner}: " if owner else ""
        if value is None:
            return None
        try:
            if self.type == "bool":
                if isinstance(value, bool):
                    return value
                text = str(value).strip().lower()
                if text in _TRUE | _FALSE:
                    return text in _TRUE
                raise ValueError
            if self.type in ("int", "float") and isinstance(value, bool):
                raise ValueError  # a bool is an int in Python, not a number to a user
            if self.type == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                parsed: Any = int(str(value).strip()) if not isinstance(value, int | float) else int(value)
            elif self.type == "float":
                parsed = float(value)  # OverflowError for an int beyond float's range
                if parsed != parsed or parsed in (float("inf"), float("-inf")):
                    raise ValueError
            elif self.type == "path":
                parsed = Path(value).expanduser()
            else:
                if self.type == "str" and isinstance(value, bool | list | tuple | dict | set | bytes | bytearray):
                    raise PluginOptionError(f"{where}--{self.flag} {shown_value(value)} is not text")
                parsed = str(value)
                try:
                    parsed.encode("utf-8")
                except UnicodeEncodeError:  # bytes a terminal passed on undecoded (surrogate escapes)
                    why = "is not text (it holds bytes that are not UTF-8)"
                    raise PluginOptionError(f"{where}--{self.flag} {shown_value(value)} {why}") from None
                if self.type == "choice" and parsed not in self.choices:
                    choices = ", ".join(self.choices)
                    raise PluginOptionError(f"{where}--{self.flag} {shown_value(value)} is not one of: {choices}")
                return parsed
        except PluginOptionError:
            raise
        except (TypeError, ValueError, OverflowError):
            kind = {"bool": "true or false", "int": "an integer", "float": "a number", "path": "a path"}.get(
                self.type, self.type
            )
            raise PluginOptionError(f"{where}--{self.flag} {shown_value(value)} is not {kind}") from None
        if self.type in ("int", "float"):
            self._check_range(parsed, value, where)
        return parsed

    def _check_range(self, parsed: float, value: Any, where: str) -> None:
        low, high = self.minimum, self.maximum
        given = f"{where}--{self.flag} {shown_value(value)}"
        if low is not None and (parsed <= low if self.exclusive_minimum else parsed < low):
            also = f" (the range is {self.range_text()})" if high is not None else ""
            sign = ">" if self.exclusive_minimum else "≥"
            raise PluginOptionError(f"{given} must be {sign} {_number(low)}{also}")
        if high is not None and (parsed >= high if self.exclusive_maximum else parsed > high):
            raise PluginOptionError(f"{given} must be {'in ' if low is not None else ''}{self.range_text()}")

    def range_text(self) -> str | None:
        """The valid range for people: ``1–1024``, ``[0, 1)``, ``(0, 1]``, ``≥ 1``, ``> 0``, ``≤ 10``; or ``None``."""
        low, high = self.minimum, self.maximum
        if low is None and high is None:
            return None
        if high is None:
            return f"{'>' if self.exclusive_minimum else '≥'} {_number(low)}"
        if low is None:
            return f"{'<' if self.exclusive_maximum else '≤'} {_number(high)}"
        if not self.exclusive_minimum and not self.exclusive_maximum:
            return f"{_number(low)}–{_number(high)}"
        opening, closing = "(" if self.exclusive_minimum else "[", ")" if self.exclusive_maximum else "]"
        return f"{opening}{_number(low)}, {_number(high)}{closing}"

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")

    def describe(self) -> dict[str, Any]:
        """The option as plain data (for ``lorastack plugins --json``)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "help": self.help}
        if self.default is not None:
            out["default"] = str(self.default) if isinstance(self.default, Path) else self.default
        if self.choices is not None:
            out["choices"] = list(self.choices)
        for bound in ("minimum", "maximum"):
            if getattr(self, bound) is not None:
                out[bound] = getattr(self, bound)
                if getattr(self, f"exclusive_{bound}"):
                    out[f"exclusive_{bound}"] = True
        if self.required:
            out["required"] = True
        return out


def _number(value: float) -> str:
    """A bound for people: ``1024``, ``0.5``, ``10000000`` (never ``1e+07``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def shown_value(value: Any, limit: int = 40) -> str:
    """``value`` as an error message echoes it: ``repr``, with ``true``/``false`` for bools, long text cut (saying how
    long it was) and a huge integer described, not written out (Python refuses to print one of over 4,300 digits)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and abs(value) >= 10**30:
        try:
            digits = len(str(abs(value)))
        except ValueError:
            digits = int(abs(value).bit_length() * 0.30103) + 1
        return f"a {digits:,}-digit integer"
    if isinstance(value, str) and len(value) > limit:
        cut = repr(value[: limit // 2])
        return f"{cut[:-1]}…{cut[-1]} ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolve_options(options: Sequence[Option], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``given`` checked against the declared ``options``: unknown names and bad values are errors, defaults filled.

    Keys may be written with dashes or underscores. The error names the bad option and lists the valid ones.
    """
    declared = {o.name: o for o in options}
    out: dict[str, Any] = {}
    for key, value in given.items():
        name = key.replace("-", "_")
        if name not in declared:
            valid = ", ".join(o.flag for o in options) or "none"
            raise PluginOptionError(f"{owner} has no option {key!r}; its options: {valid}")
        out[name] = declared[name].parse(value, owner)
    for option in options:
        if option.name not in out or out[option.name] is None:
            if option.required and option.default is None:
                raise PluginOptionError(f"{owner} needs --{option.flag} ({option.help})")
            out[option.name] = option.parse(option.default, owner)
    return out


def parse_option_pairs(pairs: Iterable[str], owner: str) -> dict[str, str]:
    """``["prefix=a photo of", "max-length=20"]`` → a dict, for ``--option KEY=VALUE`` command-line flags."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PluginOptionError(f"{owner}: option {pair!r} is not KEY=VALUE")
        out[key.strip()] = value
    return out


# --- data ---------------------------------------------------------------------------------------------------------


@dataclass
class DatasetItem:
    """One training example, whatever source it came from.

    :param image: the image, RGB, EXIF orientation applied
    :param caption: its caption, or ``None`` when the source has none
    :param source: where it came from, for messages and caption files (a path relative to the dataset, a zip member,
        a dataset row ``train[12]``)
    :param mask: an optional mask (mode ``L``, same size), white where the loss counts
    :param concept: an optional class or concept name (``figurine``)
    :param key: the bytes' identity for caches (sha256 of the image file), or ``None``
    :param path: the image file on disk when there is one (captioners write sidecars next to it)
    """

    image: Image.Image
    caption: str | None
    source: str
    mask: Image.Image | None = None
    concept: str | None = None
    key: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class Skipped:
    """A file a source could not use: which one and why. Sources yield these instead of raising."""

    source: str
    reason: str


# --- the protocols a plugin object implements -----------------------------------------------------------------------
#
# A plugin object is checked with ``isinstance(obj, <protocol>)`` when it registers: it must have every member declared
# in the class body. Optional members are not declared there (``isinstance`` would then require them): each protocol's
# docstring lists them, and ``OPTIONAL_MEMBERS`` holds the value the host uses when an object has none.


@runtime_checkable
class DatasetSource(Protocol):
    """Where training images come from: a folder, a zip file, a Hugging Face dataset, …

    Optional member (the host uses the default when a source has none):

    * ``priority: int = 0``: the order in which sources are asked to ``detect`` a location, higher first. A source
      for a specific kind of file (``.list``, ``.zip``) keeps 0 or more; a generic one (the ``folder`` source: -10)
      goes last.
    """

    name: str
    """What users type (``--source NAME``): lower-case letters, digits, ``-`` and ``_``, starting with a letter."""
    description: str
    """One line for ``lorastack plugins``."""
    options: Sequence[Option]
    """The options ``open`` accepts; the host checks the user's values against them before ``open`` is called."""

    def detect(self, location: str) -> bool:
        """Whether ``location`` looks like this source's kind (used when the user names no source); cheap: look at
        the name, a few bytes at most, decode nothing."""
        ...

    def open(self, location: str, options: Mapping[str, Any]) -> Iterator[DatasetItem | Skipped]:
        """One ``DatasetItem`` per usable image and one ``Skipped`` per file it could not use (a corrupt image, a
        caption naming a missing file), in a stable order. ``options`` holds every declared option, typed, defaults
        filled. A location that cannot be used at all raises a ``LorastackError`` with a one-line message."""
        ...


@runtime_checkable
class Captioner(Protocol):
    """Writes a caption for each image.

    Optional member (the host uses the default when a captioner has none):

    * ``reads_captions: bool = False``: ``caption`` gets every item, those with a caption too (the ``sidecar``
      captioner keeps them); by default it gets only the items to caption.
    """

    name: str
    """What users type (``lorastack caption --captioner NAME``)."""
    description: str
    """One line for ``lorastack plugins``."""
    options: Sequence[Option]
    """The options ``caption`` accepts, checked before any image is opened or any model is loaded."""

    def caption(self, items: Sequence[DatasetItem], options: Mapping[str, Any]) -> Iterator[str | None]:
        """One caption (a string, or ``None`` when it has nothing to say) per item, in the same order, yielded as
        they are made so callers can show progress. Load models here, not at import or registration, so listing
        plugins stays cheap."""
        ...


@runtime_checkable
class Trainer(Protocol):
    """Trains an adapter.

    Optional member (the host skips it when a trainer has none):

    * ``check(options) -> None``: trainer-specific rules on the resolved options (a class without a token, …),
      called before the data is read or the base loads; raises a ``LorastackError`` naming the bad value.
    """

    name: str
    """What users type (``lorastack train --trainer NAME``)."""
    description: str
    """One line for ``lorastack plugins`` and ``lorastack train --help``."""
    options: Sequence[Option]
    """The trainer's own options; the engine's shared options (steps, learning rate, resolution, …) are added to
    them, and a trainer option of the same name replaces the engine's."""

    def train(self, context: Any, options: Mapping[str, Any]) -> Any:
        """Run the training: ``context`` is a ``TrainingContext`` (base pipeline, dataset, run folder, and
        ``context.engine(items)`` to start the shared training loop), ``options`` the resolved options. Returns the
        engine's ``TrainResult``."""
        ...


#: The members a plugin object may leave out, per protocol, and the value the host uses then.
OPTIONAL_MEMBERS: dict[type, dict[str, Any]] = {
    DatasetSource: {"priority": 0},
    Captioner: {"reads_captions": False},
    Trainer: {"check": None},
}


def optional_member(obj: Any, protocol: type, name: str) -> Any:
    """``obj``'s optional member ``name`` of ``protocol``, or the default the host uses when ``obj`` has none.

    Only members listed in ``OPTIONAL_MEMBERS`` can be read this way (a ``KeyError`` otherwise), so everything the
    host reads from a plugin object is declared here.
    """
    return getattr(obj, name, OPTIONAL_MEMBERS[protocol][name])


def protocol_members(protocol: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The attributes and the methods that ``protocol``'s class body declares (what ``isinstance`` requires)."""
    methods = tuple(n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_"))
    attributes = tuple(n for n in vars(protocol).get("__annotations__", {}) if n not in methods)
    return attributes, methods
