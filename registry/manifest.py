"""``lorastack.json`` and the model card read from a pulled repo: someone else's files, checked field by field."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from .errors import InvalidNameError
from .hub_client import HubError
from .names import MAX_VERSION, validate_tag
from .records import MAX_BASE_MODEL, MAX_DESCRIPTION, MAX_TRIGGER_WORDS, MAX_WORD

logger = logging.getLogger("lorastack.registry.hub")

MANIFEST = "lorastack.json"

#: Small files read from a repo (the manifest, the model card): larger ones are not what lorastack wrote.
MAX_TEXT_FILE = 1 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_manifest(path: Path, where: str, lenient: bool = False) -> dict[str, Any]:
    """The repo's ``lorastack.json``, validated field by field (it comes from someone else's repo).

    A malformed manifest is a :class:`HubError` naming the field; with ``lenient`` (a ``--file`` was chosen, so
    the manifest is not needed) it is ignored with a warning.
    """
    try:
        return _validate_manifest(_small_text(path, where, MANIFEST), where)
    except HubError as e:
        if not lenient:
            raise
        logger.warning("%s; ignored", e)
        return {}


def _small_text(path: Path, where: str, what: str) -> str:
    size = path.stat().st_size
    if size > MAX_TEXT_FILE:
        raise HubError(f"{where}: its {what} is {size} bytes, over the {MAX_TEXT_FILE} lorastack reads")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HubError(f"{where}: its {what} is not UTF-8 text") from None


def _validate_manifest(text: str, where: str) -> dict[str, Any]:
    def bad(field_name: str, problem: str) -> HubError:
        return HubError(
            f"{where}: its {MANIFEST} is malformed: {field_name} {problem}; pull a weight file with --file instead"
        )

    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise bad("the file", "is not JSON") from None
    if not isinstance(data, dict):
        raise bad("the file", f"holds a {type(data).__name__}, not an object")

    def optional_text(key: str, limit: int) -> str | None:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise bad(key, f"must be text of at most {limit} characters")
        return value

    adapter = data.get("adapter")
    if not isinstance(adapter, dict):
        raise bad("adapter", "must be an object with path, sha256 and tensor_sha256")
    path = adapter.get("path")
    if not isinstance(path, str) or not path or len(path) > 1000 or ".." in path.split("/") or path.startswith("/"):
        raise bad("adapter.path", "must be a relative file path in the repo")
    for key in ("sha256", "tensor_sha256"):
        value = adapter.get(key)
        if (value is not None or key == "sha256") and not (isinstance(value, str) and _SHA256.fullmatch(value)):
            raise bad(f"adapter.{key}", "must be 64 lowercase hex digits")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or
                                not 1 <= version <= MAX_VERSION):  # fmt: skip
        raise bad("version", f"must be a number from 1 to {MAX_VERSION}")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or len(tags) > 1000:
        raise bad("tags", "must be a list of tags")
    for tag in tags:
        try:
            validate_tag(tag)
        except InvalidNameError as e:
            raise bad("tags", f"holds an invalid one ({e})") from None
    words = data.get("trigger_words")
    if words is not None and (
        not isinstance(words, list)
        or len(words) > MAX_TRIGGER_WORDS
        or not all(isinstance(w, str) and len(w) <= MAX_WORD for w in words)
    ):
        raise bad("trigger_words", "must be a list of texts")
    return {
        "version": version,
        "tags": list(tags),
        "adapter": {"path": path, "sha256": adapter["sha256"], "tensor_sha256": adapter.get("tensor_sha256")},
        "trigger_words": list(words) if words is not None else None,
        "base_model": optional_text("base_model", MAX_BASE_MODEL),
        "description": optional_text("description", MAX_DESCRIPTION),
        "format": optional_text("format", 100),
        "family": optional_text("family", 100),
    }


def _card_data(path: Path, where: str) -> dict[str, Any]:
    """``trigger_words`` and ``base_model`` from a model card's YAML, when they are well-formed (else none)."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(_small_text(path, where, "README.md")).data.to_dict()
    except Exception:  # a card the Hub accepted but lorastack cannot parse: no details from it
        return {}
    prompt = data.get("instance_prompt")
    base = data.get("base_model")
    return {
        "trigger_words": [w.strip() for w in prompt.split(",") if w.strip()][:MAX_TRIGGER_WORDS]
        if isinstance(prompt, str) and len(prompt) <= MAX_DESCRIPTION
        else None,
        "base_model": base if isinstance(base, str) and len(base) <= MAX_BASE_MODEL else None,
    }
