"""What a metadata source plugin implements, and the data it gets and returns.

A metadata source looks adapter files up by hash somewhere outside (Civitai, the Hub repo a version was pulled from)
and answers with metadata values: trigger-word groups, base model and lineage, description, license, links and the
URLs of preview images. ``lorastack enrich`` (``lorastack.core.enrich``) asks it, checks every value it returns
(:func:`lorastack.registry.metadata.validate_value`), stores the ones that fill a gap with the source's name as their
source, and downloads previews through :meth:`MetadataSource.fetch_preview`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .interfaces import Option


@dataclass(frozen=True)
class LookupItem:
    """One version to look up."""

    ref: str  # the registry reference (``me/style@2``), echoed in the answer
    sha256: str  # the whole file's sha256 (Civitai's SHA256, whose first 10 hex digits are A1111's AutoV2)
    tensor_sha256: str | None  # the tensor data's sha256 (AutoV3 / sshs_model_hash), survives header edits
    provenance: Mapping[str, Any] = field(default_factory=dict)  # where it came from (``hub``: repo, commit, file)


@dataclass
class LookupAnswer:
    """What a source knows about one item. ``status``: ``found`` (``values`` and ``preview_urls`` filled),
    ``unknown`` (the source has never heard of the file), ``skipped`` (the source does not apply to it: a Hub card
    for a file not pulled from the Hub) or ``failed`` (``error`` says why, one line, never a secret)."""

    ref: str
    status: Literal["found", "unknown", "skipped", "failed"]
    values: dict[str, Any] = field(default_factory=dict)
    preview_urls: list[str] = field(default_factory=list)
    error: str | None = None


@runtime_checkable
class MetadataSource(Protocol):
    """Where metadata about adapter files comes from, looked up by hash: Civitai, a Hub model card, …"""

    name: str
    """What users type (``lorastack enrich --source NAME``) and the source recorded with each value it gives."""
    description: str
    """One line for ``lorastack plugins``."""
    options: Sequence[Option]
    """The options it accepts (none for the built-ins)."""

    def lookup(self, items: Sequence[LookupItem], options: Mapping[str, Any]) -> Iterable[LookupAnswer]:
        """One :class:`LookupAnswer` per item, in any order; batch requests as the service allows.

        Bound every request in size and time: the host gives up on a source that does not finish in time, and local
        work never waits for it. A source that cannot be reached answers ``failed`` for the items, it does not raise.
        """

    def fetch_preview(self, url: str, limit: int) -> bytes:
        """The bytes of a preview URL this source returned, at most ``limit`` bytes (more: raise ``PluginError``);
        the host checks that they are an image."""
