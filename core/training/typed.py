"""Resolved options as a frozen dataclass: the engine and the trainers read ``options.learning_rate``.

The class is built from the ``Option`` list (the engine's plus the trainer's), so options are declared once: the same
list gives the command line its click options and the engine its typed attributes. Each field carries its option in
``metadata`` (help, range, choices), as peft's config dataclasses carry ``metadata={"help": ...}``.

Trainers written against the older mapping interface keep working: ``options["rank"]``, ``options.get("token")``,
``"rank" in options`` and ``dict(options)`` read the same values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..interfaces import Option

_PYTHON_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "path": Path, "choice": str}


class TrainingOptions:
    """The base of every resolved-options class: attributes, plus read-only mapping access for older trainers."""

    def __getitem__(self, name: str) -> Any:
        if name not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in self else default

    def __contains__(self, name: object) -> bool:
        return name in self.__dataclass_fields__  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)  # type: ignore[attr-defined]

    def keys(self):
        return self.__dataclass_fields__.keys()  # type: ignore[attr-defined]

    def items(self):
        return self.as_dict().items()

    def as_dict(self) -> dict[str, Any]:
        """Every option by name (a new dict)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}  # type: ignore[attr-defined]

    def replace(self, **changes: Any) -> TrainingOptions:
        """A copy with ``changes`` (the object itself is frozen)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def options_class(options: Sequence[Option], owner: str = "trainer") -> type[TrainingOptions]:
    """The frozen dataclass of ``options`` (one field per option, in order; the option in ``metadata``)."""
    return _options_class(tuple(options), owner)


@lru_cache(maxsize=64)
def _options_class(options: tuple[Option, ...], owner: str) -> type[TrainingOptions]:
    fields = [
        (o.name, _PYTHON_TYPES[o.type] | None, dataclasses.field(metadata={"help": o.help, "option": o}))
        for o in options
    ]
    stem = "".join(part.title() for part in owner.replace("-", "_").split("_") if part.isidentifier()) or "Trainer"
    return dataclasses.make_dataclass(f"{stem}Options", fields, bases=(TrainingOptions,), frozen=True)


def typed_options(options: Sequence[Option], values: Mapping[str, Any], owner: str = "trainer") -> TrainingOptions:
    """``values`` (already checked, every option present) as an instance of :func:`options_class`."""
    cls = options_class(options, owner)
    return cls(**{o.name: values[o.name] for o in options})
