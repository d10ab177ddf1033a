"""The local registry: versioned, tagged, content-addressed adapters with a SQLite index.

>>> from lorastack.registry import Registry
>>> registry = Registry()                          # $LORASTACK_HOME/registry
>>> registry.import_file("style.safetensors", "me/style", tag="v1")
>>> version, path = registry.adapter_path("me/style:v1")   # re-hashed before use
"""

from .errors import (
    BusyError,
    ConflictError,
    IntegrityError,
    InvalidNameError,
    InvalidValueError,
    NotFoundError,
    ReadOnlyError,
    RegistryError,
)
from .names import LATEST, Ref, parse_name_tag, parse_ref, validate_name, validate_tag
from .store import GcReport, ImportResult, Registry, VerifyReport, Version, default_root

__all__ = [
    "LATEST",
    "BusyError",
    "ConflictError",
    "GcReport",
    "ImportResult",
    "IntegrityError",
    "InvalidNameError",
    "InvalidValueError",
    "NotFoundError",
    "ReadOnlyError",
    "Ref",
    "Registry",
    "RegistryError",
    "VerifyReport",
    "Version",
    "default_root",
    "parse_name_tag",
    "parse_ref",
    "validate_name",
    "validate_tag",
]
