"""``lorastack enrich``: ask metadata sources about the registry's versions and fill what is missing.

For each source (every registered one, or those named), the versions to ask about are the ones named, or else every
version that has no value from that source yet. The source is asked in a worker thread with a deadline
(:data:`SOURCE_DEADLINE`, more than the built-ins' own budgets): a source that hangs is reported as timed out and
left behind, and nothing waits for it; no registry lock or transaction is held while it works. Each value it returns
is checked (:func:`lorastack.registry.metadata.validate_value`) and stored with the source's name as its source,
filling gaps and never replacing what the user wrote unless ``overwrite``; a wrong value is reported and skipped.
A version without previews gets up to :data:`MAX_PREVIEWS` of the source's images, each bounded in size and checked
to be an image before it is stored.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lorastack.plugins.manager import get_manager
from lorastack.registry.errors import InvalidValueError
from lorastack.registry.metadata import set_metadata, validate_value, versions_without
from lorastack.registry.previews import MAX_PREVIEW_BYTES, add_preview, list_previews

from .errors import LorastackError
from .interfaces import resolve_options
from .metadata_sources import LookupAnswer, LookupItem

SOURCE_DEADLINE = 300.0
MAX_PREVIEWS = 3


@dataclass
class SourceReport:
    source: str
    asked: int = 0
    found: int = 0
    unknown: int = 0
    skipped: int = 0
    failed: int = 0
    filled: int = 0  # values stored
    kept: int = 0  # values not stored because a more trusted source (the user) has the field
    previews: int = 0
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)  # one line each: "ref: reason"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EnrichReport:
    sources: list[SourceReport] = field(default_factory=list)
    versions: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # ref → source → fields filled

    def as_dict(self) -> dict[str, Any]:
        return {"sources": [s.as_dict() for s in self.sources], "versions": self.versions}


def _items(registry, refs: Sequence[str] | None, source: str) -> list[LookupItem]:
    if not refs:  # without names: only versions this source has told nothing yet, in one query
        return [
            LookupItem(r["ref"], r["sha256"], r["tensor_sha256"], r["provenance"])
            for r in versions_without(registry, source)
        ]
    seen, items = set(), []
    for version in (registry.resolve(ref) for ref in refs):
        if version.ref not in seen:
            seen.add(version.ref)
            record = version.adapter_file
            items.append(LookupItem(version.ref, record.sha256, record.tensor_sha256, dict(version.provenance)))
    return items


def _ask(source, items: list[LookupItem], options: dict, deadline: float) -> tuple[list[LookupAnswer], bool, str]:
    """The source's answers, asked in a worker thread; ``(answers so far, timed out, error)``."""
    answers: queue.Queue = queue.Queue()
    done = threading.Event()
    failure: list[str] = []

    def work() -> None:
        try:
            for answer in source.lookup(items, options):
                answers.put(answer)
        except Exception as e:  # a plugin's bug or failure: reported, local work goes on
            failure.append(f"{type(e).__name__}: {e}" if not isinstance(e, LorastackError) else str(e))
        finally:
            done.set()

    threading.Thread(target=work, name=f"enrich-{source.name}", daemon=True).start()
    finished = done.wait(max(0.0, deadline - time.monotonic()))
    got = []
    while not answers.empty():
        got.append(answers.get())
    return got, not finished, failure[0] if failure else ""


def enrich(
    registry,
    refs: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    overwrite: bool = False,
    previews: bool = True,
    deadline: float = SOURCE_DEADLINE,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EnrichReport:
    """Ask ``sources`` (default: every registered metadata source) about ``refs`` (default: see the module
    docstring) and store what they find. Never raises for what a source does; see the report.
    ``on_progress(source, done, total)`` is told as each answer is stored (previews are downloaded then)."""
    manager = get_manager()
    names = list(sources) if sources else manager.names("metadata_sources")
    chosen = [manager.get("metadata_sources", name) for name in names]  # an unknown name fails here, before any work
    for refs_checked in refs or ():
        registry.resolve(refs_checked)
    report = EnrichReport()
    for source in chosen:
        summary = SourceReport(source.name)
        report.sources.append(summary)
        items = _items(registry, refs, source.name)
        summary.asked = len(items)
        if not items:
            continue
        options = resolve_options(source.options, {}, f"metadata source {source.name!r}")
        answers, summary.timed_out, error = _ask(source, items, options, time.monotonic() + deadline)
        if error:
            summary.errors.append(f"{source.name}: {error}")
        answered = {a.ref for a in answers if isinstance(a, LookupAnswer)}
        if summary.timed_out:
            summary.errors.append(f"{source.name}: no answer within {deadline:g} s for {len(items) - len(answered)} "
                                  "version(s); try again later")  # fmt: skip
        wanted = {item.ref for item in items}
        for done, answer in enumerate(answers, 1):
            if not isinstance(answer, LookupAnswer) or answer.ref not in wanted:
                summary.errors.append(f"{source.name}: answered about something it was not asked; ignored")
            else:
                _store(registry, source, answer, summary, report, overwrite, previews)
            if on_progress is not None:
                on_progress(source.name, done, len(answers))
    return report


def _store(registry, source, answer: LookupAnswer, summary: SourceReport, report, overwrite, previews) -> None:
    status = answer.status if answer.status in ("found", "unknown", "skipped", "failed") else "failed"
    setattr(summary, status, getattr(summary, status) + 1)
    if status == "failed":
        summary.errors.append(f"{answer.ref}: {str(answer.error or 'the lookup failed')[:300]}")
        return
    if status != "found":
        return
    values = {}
    for name, value in (answer.values or {}).items():
        try:
            values[name] = validate_value(name, value)
        except InvalidValueError as e:
            summary.errors.append(f"{answer.ref}: {source.name} gave a wrong value, skipped: {e}")
    result = set_metadata(registry, answer.ref, values, source.name, overwrite=overwrite)
    summary.filled += len(result.changed)
    summary.kept += len(result.kept)
    if result.changed:
        report.versions.setdefault(answer.ref, {})[source.name] = result.changed
    if not previews or list_previews(registry, answer.ref):
        return
    for url in list(answer.preview_urls or [])[:MAX_PREVIEWS]:
        try:
            data = source.fetch_preview(url, MAX_PREVIEW_BYTES)
            if not isinstance(data, bytes) or len(data) > MAX_PREVIEW_BYTES:
                raise InvalidValueError(f"preview {url[:80]}: over {MAX_PREVIEW_BYTES:,} bytes or not bytes")
            add_preview(registry, answer.ref, data, source.name, url=url[:2000])
            summary.previews += 1
        except LorastackError as e:
            summary.errors.append(f"{answer.ref}: {e}")
        except Exception as e:  # a plugin's bug: reported, the rest goes on
            summary.errors.append(f"{answer.ref}: preview {url[:80]}: {type(e).__name__}: {e}")
