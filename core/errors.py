"""Typed errors of the runtime. Each message is one line meant for the user (the CLI shows it as is)."""

from __future__ import annotations

from lorastack.errors import LorastackError

__all__ = [
    "BaseModelError",
    "ConfigError",
    "GenerationError",
    "IncompatibleAdapterError",
    "LorastackError",
    "RecipeError",
    "ReproduceError",
    "ScaleError",
    "UnknownAdapterError",
]


class ConfigError(LorastackError):
    """The user config file cannot be read or holds a bad value."""


class BaseModelError(LorastackError):
    """A base model cannot be resolved or loaded: a bad path, an unknown alias, a repo not in the cache."""


class UnknownAdapterError(LorastackError, KeyError):
    """An adapter name that is not loaded. The message lists the loaded ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IncompatibleAdapterError(LorastackError):
    """An adapter that does not fit the base: another family, or no module in common."""


class ScaleError(LorastackError, ValueError):
    """A scale or block-weight specification that cannot be applied."""


class GenerationError(LorastackError, ValueError):
    """Generation options that cannot work together: a bad size, a missing init image, a mismatched mask."""


class ReproduceError(LorastackError):
    """An image whose recipe cannot be replayed."""


class RecipeError(ReproduceError, ValueError):
    """A recipe (read from an image, so untrusted) that is not what lorastack writes: the message names the image,
    the field, the bad value and what is valid."""
