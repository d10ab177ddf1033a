"""Typed errors of the registry. Each message is one line meant for the user."""

from __future__ import annotations

from lorastack.errors import LorastackError


class RegistryError(LorastackError):
    """Base class of the registry's user-facing errors."""


class InvalidNameError(RegistryError, ValueError):
    """A name, tag or reference that breaks a naming rule (the message says which)."""


class InvalidValueError(RegistryError, ValueError):
    """A detail of a version (trigger words, base model, description) that lorastack cannot keep."""


class NotFoundError(RegistryError, KeyError):
    """A reference to an adapter, version or tag that does not exist; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConflictError(RegistryError):
    """An operation that would lose something unless forced (removing a tagged version, say)."""


class IntegrityError(RegistryError):
    """A stored blob whose bytes no longer match its hash, or that is missing."""


class ReadOnlyError(RegistryError):
    """The registry folder cannot be written."""


class CorruptIndexError(IntegrityError):
    """The index file itself (``index.sqlite``) is damaged: not a database, truncated, or malformed inside."""


class NoSpaceError(RegistryError):
    """The disk (or quota) is full; the operation changed nothing."""


class BusyError(RegistryError):
    """Another lorastack process held the registry for longer than the busy timeout."""
