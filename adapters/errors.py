"""Typed errors for adapter files. Each message is one line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path

from lorastack.errors import LorastackError


class AdapterError(LorastackError):
    """Base class: something is wrong with an adapter file or its contents. The message is shown to the user."""

    def __init__(self, problem: str, path: str | Path | None = None):
        self.problem = problem
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)

    def with_path(self, path: str | Path) -> AdapterError:
        """The same error, naming ``path`` (used when a parser without a path raised it)."""
        if self.path is not None:
            return self
        return type(self)(self.problem, path)


class AdapterFileError(AdapterError):
    """The file cannot be read as a weights file: missing, a directory, empty, truncated, a corrupt header."""


class NotAnAdapterError(AdapterError):
    """The file is a valid weights file but holds no adapter (a full checkpoint, an embedding, nothing known)."""


class InvalidAdapterError(AdapterError):
    """The file holds adapter keys whose tensors are inconsistent: wrong shapes, dtypes, missing halves."""


class UnsupportedAdapterError(AdapterError):
    """A valid adapter that this operation cannot handle (pickle refused, a layer kind a format cannot express)."""


class UnknownFormatError(AdapterError, ValueError):
    """A format name that is not one of lorastack's adapter formats; the message lists them."""


class OutputError(AdapterError):
    """A path lorastack cannot write its result to: a folder, a FIFO or device, an existing file without --force,
    a missing or read-only folder. Raised before the work that would produce the result starts."""


def shown(value: object, limit: int = 60) -> str:
    """``value`` as it may appear in a one-line message: a short printable string as it is, anything else as a
    bounded ``repr`` (nesting, containers and long text cut short with "…"), never longer than about ``limit``."""
    if isinstance(value, str) and value.isprintable() and len(value) <= limit:
        return value
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quoted(value: object, limit: int = 60) -> str:
    """``value``'s ``repr`` for a one-line message, cut short like :func:`shown`."""
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _brief_repr():
    import reprlib

    class Brief(reprlib.Repr):
        def repr_int(self, x, level):  # a huge int is shown by its size (repr of one may even be refused)
            return repr(x) if abs(x) < 10**30 else f"{'-' if x < 0 else ''}2**{abs(x).bit_length() - 1}+"

    brief = Brief()
    brief.maxlevel, brief.maxstring, brief.maxother, brief.maxlist, brief.maxdict = 3, 50, 40, 6, 4
    return brief


_BRIEF = _brief_repr()
